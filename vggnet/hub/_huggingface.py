"""The Hugging Face Hub as a weights source: "hf-hub:timm/vgg16.tv_in1k" -> a verified local file.

Downloading is delegated to `huggingface_hub.hf_hub_download` (`pip install 'vggnet[hub]'`), so its
cache (`HF_HOME`, `HF_HUB_CACHE`), `HF_ENDPOINT`, `HF_HUB_OFFLINE` and token settings apply unchanged.

What the Hub's own checks give: the file is named in its cache by the server's ETag (for LFS files,
the file's SHA-256, sent as `X-Linked-Etag`), and the byte count must equal the announced size; the
content itself is not hashed by huggingface_hub. What vggnet adds: the file's SHA-256 is computed and
compared with the digest pinned by the caller (`sha256=`), or, with none pinned, with the SHA-256 the
Hub announced (an LFS blob's name); a blob that does not match its own name is removed from the cache
so the next call downloads it again. The safetensors file is then read without pickle.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vggnet.errors import ChecksumError, MissingDependency, UsageError
from vggnet.hub._cache import normalize_digest
from vggnet.hub._formats import file_sha256

__all__ = ["HF_PREFIX", "HubName", "hf_hub_file", "is_hf_hub", "parse_hf_hub"]

logger = logging.getLogger(__name__)

HF_PREFIX = "hf-hub:"
DEFAULT_FILE = "model.safetensors"  # what timm publishes for every `*.tv_in1k` repository
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class HubName:
    """A parsed "hf-hub:owner/name[@revision]": the repository and the revision (None: main)."""

    repo_id: str
    revision: str | None


def is_hf_hub(name: str) -> bool:
    """Whether a weights argument names a Hugging Face Hub repository ("hf-hub:...")."""
    return name.startswith(HF_PREFIX)


def parse_hf_hub(name: str) -> HubName:
    """ "hf-hub:timm/vgg16_bn.tv_in1k" (or "...@revision") -> HubName; ValueError for anything else."""
    if not is_hf_hub(name):
        raise UsageError(
            f"{name!r} is not a Hub name; write it as 'hf-hub:owner/repository', e.g. hf-hub:timm/vgg16.tv_in1k"
        )
    repo_id, _, revision = name[len(HF_PREFIX) :].partition("@")
    if not _REPO.fullmatch(repo_id):
        raise UsageError(f"{name!r}: the repository must be 'owner/name', e.g. hf-hub:timm/vgg16.tv_in1k")
    return HubName(repo_id, revision or None)


def _hf_hub_download() -> Any:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:
        raise MissingDependency("hf-hub: weights need huggingface_hub: pip install 'vggnet[hub]'") from err
    return hf_hub_download


def hf_hub_file(name: str, *, filename: str = DEFAULT_FILE, sha256: str | None = None) -> Path:
    """The local path of `filename` in a Hub repository, downloaded by huggingface_hub and verified by vggnet.

    Raises `ChecksumError` if the file's SHA-256 is not `sha256` (a full digest or a prefix of at least 8
    hex digits) or, with no digest pinned, not the one the Hub announced for it.
    """
    hub = parse_hf_hub(name)
    expected = normalize_digest(sha256) if sha256 is not None else None
    path = Path(_hf_hub_download()(hub.repo_id, filename, revision=hub.revision))
    blob = path.resolve()
    announced = blob.name if _SHA256.fullmatch(blob.name) else None  # an LFS blob is named by its SHA-256
    if expected is None and announced is None:
        logger.warning("%s/%s: no SHA-256 pinned or announced by the Hub; the file is not verified", name, filename)
        return path
    digest = file_sha256(blob)
    url = f"{name}/{filename}"
    if announced is not None and digest != announced:
        _drop(blob, path)
        raise ChecksumError(
            url, blob, announced, digest,
            detail="the file in the Hugging Face cache does not match the SHA-256 the Hub announced; it was removed",
            hint="Call again to download it afresh; if it persists, check HF_ENDPOINT and the proxy in between.",
        )  # fmt: skip
    if expected is not None and not digest.startswith(expected):
        raise ChecksumError(
            url, blob, expected, digest,
            detail="the Hub serves another file than the pinned digest names; the cached copy was left in place",
            hint="Pin the revision (hf-hub:owner/name@<commit>) the digest was taken from, or update the digest.",
        )  # fmt: skip
    return path


def _drop(blob: Path, pointer: Path) -> None:
    for p in (pointer, blob):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
