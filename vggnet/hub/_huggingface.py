"""The Hugging Face Hub as a weights source: "hf-hub:timm/vgg16.tv_in1k" -> a verified file in the Hub's cache.

The transfer is vggnet's own, under the hub's rules, into huggingface_hub's cache layout (issue 24):
huggingface_hub 2.4.0 names a blob by the server's ETag without checking it (an ETag of "../../x"
wrote outside the cache, and a planted target was loaded), checks only the size of what it
receives, and cannot be bounded by a deadline. Here:

- A HEAD on `{endpoint}/{repo}/resolve/{revision}/{file}`, as huggingface_hub makes it, gives the commit
  (`X-Repo-Commit`, 40 hex digits), the file's SHA-256 (`X-Linked-Etag`, else `ETag`: 64 hex digits in
  either case, stored in lower case) and its size; a redirect to another origin (a CDN) says where the
  bytes are. Nothing the Hub says names a path before it is checked, and every path built from it
  must resolve inside the cache.
- `download_file` streams the bytes into a private partial file in `blobs/`, hashing as they arrive,
  and renames the verified file to `blobs/<sha256>`; `snapshots/<commit>/<file>` links to it
  (relative) and `refs/<revision>` names the commit, so huggingface_hub reads what vggnet wrote, and
  vggnet reads what huggingface_hub wrote, after checking it against its blob's name.
- One deadline ($VGGNET_DOWNLOAD_DEADLINE, as every vggnet download) bounds the whole call, HEAD,
  redirects, retries and body: at that time every connection is shut.
- A token (`HF_TOKEN`, or the one `hf auth login` saved) goes to the endpoint's origin only, never to
  a CDN. Offline (`HF_HUB_OFFLINE`, `VGGNET_OFFLINE`), only the verified cache is used.

huggingface_hub itself is not needed; the settings are its own (see `vggnet.settings`). Only
safetensors files are read from the Hub, from the open file checked against the digest.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urljoin, urlsplit

import torch

from vggnet import settings
from vggnet.errors import (
    BadCheckpointError,
    ChecksumError,
    DownloadError,
    HubResponseError,
    NotCachedError,
    OutsideCacheError,
    UsageError,
)
from vggnet.hub._cache import file_digest, normalize_digest, stamp_of
from vggnet.hub._deadline import Watch, watched_adapter
from vggnet.hub._download import (
    DEADLINE,
    MAX_REDIRECTS,
    RETRIES,
    TIMEOUT,
    Timeout,
    download_file,
    origin_of,
    unfixable,
)
from vggnet.hub._files import open_read
from vggnet.hub._loading import MapLocation, open_checked, read_tensors
from vggnet.settings import ENV_DEADLINE

if TYPE_CHECKING:
    import requests

__all__ = ["DEFAULT_FILE", "HF_PREFIX", "HubFetched", "HubName", "hf_hub_file", "is_hf_hub", "load_hf_hub",
           "parse_hf_hub"]  # fmt: skip

logger = logging.getLogger(__name__)

HF_PREFIX = "hf-hub:"
DEFAULT_FILE = "model.safetensors"  # what timm publishes for every `*.tv_in1k` repository
_COMMIT = re.compile(r"[0-9a-fA-F]{40}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", re.ASCII)
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_REFETCH = "Delete the file (or the repository, with `hf cache rm`) and download it again."


@dataclass(frozen=True)
class HubName:
    """A parsed "hf-hub:owner/name[@revision]".

    Attributes:
        repo_id: "owner/name", e.g. "timm/vgg16.tv_in1k".
        revision: a branch, tag or commit; None for the repository's main branch.
    """

    repo_id: str
    revision: str | None


@dataclass(frozen=True)
class _HubFile:
    """What the Hub says about one file at one revision, checked: safe to name paths and to verify the bytes by."""

    commit: str  # 40 lower-case hex digits
    sha256: str  # 64 lower-case hex digits
    size: int | None
    url: str  # where the bytes are: the resolve URL, or the other origin (a CDN) it redirects to


@dataclass(frozen=True)
class HubFetched:
    """A verified file in the Hub cache.

    Attributes:
        path: `snapshots/<commit>/<file>`, the name Hugging Face's own tools read (a link to its blob, as
            huggingface_hub lays it out).
        blob: the regular file `blobs/<sha256>` that `path` names.
        sha256: the file's SHA-256, checked against the one the Hub announced (or the one asked for).
        commit: the commit the revision resolved to.
    """

    path: Path
    blob: Path
    sha256: str
    commit: str


def is_hf_hub(name: str) -> bool:
    """Tell whether a weights argument names a Hugging Face Hub repository.

    Args:
        name: a weights argument.

    Returns:
        True when it starts with "hf-hub:" (whether the rest is valid is `parse_hf_hub`'s to say).
    """
    return name.startswith(HF_PREFIX)


def parse_hf_hub(name: str) -> HubName:
    """Parse "hf-hub:timm/vgg16_bn.tv_in1k" (or "...@revision") into a repository and a revision.

    Args:
        name: "hf-hub:owner/repository", optionally followed by "@revision".

    Returns:
        The repository and revision (None: main).

    Raises:
        UsageError: `name` does not start with "hf-hub:", the repository is not "owner/name" (".." and "--"
            are refused too), or the revision is not a plain name.
    """
    if not is_hf_hub(name):
        raise UsageError(
            f"{name!r} is not a Hub name; write it as 'hf-hub:owner/repository', e.g. hf-hub:timm/vgg16.tv_in1k"
        )
    repo_id, _, revision = name[len(HF_PREFIX) :].partition("@")
    if not _REPO.fullmatch(repo_id) or ".." in repo_id or "--" in repo_id:
        raise UsageError(f"{name!r}: the repository must be 'owner/name', e.g. hf-hub:timm/vgg16.tv_in1k")
    return HubName(repo_id, _check_name("revision", revision) if revision else None)


def hf_hub_file(name: str, *, filename: str = DEFAULT_FILE, sha256: str | None = None, progress: bool = True) -> Path:
    """The verified local copy of `filename` in a Hub repository: `snapshots/<commit>/<file>` in the Hub's cache.

    Args:
        name: "hf-hub:owner/repository[@revision]".
        filename: the file in the repository.
        sha256: the digest (or 8+ hex digits) it must have; None: the SHA-256 the Hub announces is checked.
        progress: show a progress bar while downloading.

    Returns:
        The snapshot path (a link to its blob, as huggingface_hub lays it out).

    Raises:
        ChecksumError: the bytes do not match the Hub's SHA-256, or that does not match `sha256`.
        HubResponseError: the Hub's answer is unusable (no such file, no commit, an ETag that is not a SHA-256).
        OutsideCacheError: a cached path resolves outside the cache.
        DownloadError: the transfer failed, or did not finish within $VGGNET_DOWNLOAD_DEADLINE.
        NotCachedError: offline, and no copy cached.
    """
    hub = parse_hf_hub(name)
    return hf_hub_fetch(hub.repo_id, filename, revision=hub.revision, sha256=sha256, progress=progress).path


def load_hf_hub(
    name: str,
    *,
    filename: str = DEFAULT_FILE,
    sha256: str | None = None,
    map_location: MapLocation = "cpu",
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """The tensors of a Hub repository's safetensors file, as stored, from the open file checked against its digest.

    Args:
        name: "hf-hub:owner/repository[@revision]".
        filename: the file in the repository (a safetensors file).
        sha256: the digest (or 8+ hex digits) it must have; None: the SHA-256 the Hub announces is checked.
        map_location: where the tensors go.
        progress: show a progress bar while downloading.

    Returns:
        The state dict, keys as stored (timm's layout for timm's repositories).

    Raises:
        BadCheckpointError: the file is not safetensors (a pickle is never loaded from the Hub), or is damaged.
        ChecksumError: the bytes do not match the Hub's SHA-256, or that does not match `sha256`.
        HubResponseError: the Hub's answer is unusable (no such file, no commit, an ETag that is not a SHA-256).
        OutsideCacheError: a cached path resolves outside the cache.
        DownloadError: the transfer failed, or did not finish within $VGGNET_DOWNLOAD_DEADLINE.
        NotCachedError: offline, and no copy cached.
    """
    hub = parse_hf_hub(name)
    got = hf_hub_fetch(hub.repo_id, filename, revision=hub.revision, sha256=sha256, progress=progress)
    with open_checked(got.blob, got.sha256, where=got.blob.parent) as verified:
        if verified.format != "safetensors":
            raise BadCheckpointError(
                f"{name}/{filename} ({got.blob}) is {verified.format or 'none of the weight formats'}, not "
                "safetensors: vggnet reads only safetensors files from the Hub (no pickle); nothing was loaded"
            )
        return read_tensors(verified, map_location)


# --- names checked before they name paths ---------------------------------------------------------


def _check_repo(repo_id: str) -> str:
    if not _REPO.fullmatch(repo_id) or ".." in repo_id or "--" in repo_id:
        raise UsageError(f"{repo_id!r} is not a Hub repository: write it as 'owner/name' (no '..' or '--')")
    return repo_id


def _check_name(what: str, name: str) -> str:
    """`name` as a relative path of "/"-separated parts, none of them empty, "." or ".."; UsageError otherwise."""
    if not name or "\\" in name or "\0" in name or any(p in ("", ".", "..") for p in name.split("/")):
        raise UsageError(f"{what} {name!r} must be a relative name without '.', '..', empty parts or backslashes")
    return name


def _inside(path: Path, cache: Path) -> Path:
    """`path`, once every link on the way is followed, is in `cache`; OutsideCacheError otherwise."""
    real, top = os.path.realpath(path), os.path.realpath(cache)
    if os.path.commonpath([real, top]) != top:
        raise OutsideCacheError(path, real, cache)
    return path


def _repo_folder(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def _etag_digest(value: str | None) -> str | None:
    """The SHA-256 an ETag ("<hex>", W/"<hex>") carries, in lower case; None unless it is one."""
    tag = (value or "").strip()
    tag = tag[2:] if tag.startswith("W/") else tag
    tag = tag[1:-1] if len(tag) >= 2 and tag[0] == tag[-1] == '"' else tag
    return tag.lower() if _SHA256.fullmatch(tag) else None


def _said(value: str | None, width: int = 80) -> str:
    """A server's header value for a message: repr'd (no control characters) and cut short."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _token() -> str | None:
    """$HF_TOKEN, else the token `hf auth login` saved; None if neither (or HF_HUB_DISABLE_IMPLICIT_TOKEN)."""
    token = settings.hf_token()
    path = settings.hf_token_path()
    if token is not None or path is None:
        return token
    try:
        with open_read(path, follow=True) as f:  # a regular file: never a FIFO to hang on
            return f.read(4096).decode("utf-8").strip() or None
    except (OSError, UnicodeDecodeError):  # none saved, or NotARegularFileError
        return None


# --- the HEAD -----------------------------------------------------------------------------------------


def _deadline(url: str, watch: Watch) -> DownloadError:
    return DownloadError(
        f"giving up on {url}: the Hub did not answer within {watch.seconds:g} s (the whole download's deadline); "
        f"set {ENV_DEADLINE} to allow more time",
        url=url,
    )


def _head(
    session: requests.Session, url: str, headers: dict[str, str], timeout: Timeout, watch: Watch, retries: int
) -> requests.Response:
    """One HEAD (no redirect followed), retried on connection errors, 408/429/5xx, within the deadline."""
    import requests

    connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
    for attempt in range(retries + 1):
        left = watch.ends - time.monotonic()
        if left <= 0:
            raise _deadline(url, watch)
        try:
            resp = session.head(url, headers=headers, timeout=(min(connect, left), read), allow_redirects=False)
            resp.close()
        except (requests.ConnectionError, requests.Timeout) as err:
            if watch.expired.is_set():
                raise _deadline(url, watch) from err
            why = unfixable(err)  # no network, no such host: retrying will not help
            if attempt == retries or why is not None:
                raise DownloadError(f"cannot reach the Hub at {url}: {why or err}", url=url) from err
        else:
            if watch.expired.is_set():  # the headers may have been cut short: nothing in them can be trusted
                raise _deadline(url, watch)
            if resp.status_code not in _RETRY_STATUS or attempt == retries:
                return resp
        wait = min(2.0**attempt, 8.0)
        if time.monotonic() + wait >= watch.ends:
            raise _deadline(url, watch)
        time.sleep(wait)
    raise AssertionError("unreachable")


def _resolve(
    session: requests.Session, url: str, headers: dict[str, str], timeout: Timeout, watch: Watch, retries: int
) -> tuple[requests.Response, str]:
    """The HEAD that describes the file, and where its bytes are: redirects within the endpoint's origin are
    followed (with `headers`); one to another origin (a CDN) ends the search, its target holding the bytes."""
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        resp = _head(session, current, headers if origin_of(current) == origin_of(url) else {}, timeout, watch, retries)
        location = resp.headers.get("Location")
        if not (resp.is_redirect and location):
            return resp, current
        target = urljoin(current, location)
        scheme = urlsplit(target).scheme.lower()
        if scheme not in ("http", "https") or (
            urlsplit(current).scheme.lower() == "https" and scheme == "http" and not settings.allow_http_redirect()
        ):
            raise HubResponseError(f"{url} redirects to {_said(target)}: not an https URL; refused", url=url)
        if origin_of(target) != origin_of(current):
            return resp, target  # a CDN: this response describes the file
        current = target
    raise HubResponseError(f"{url} redirects more than {MAX_REDIRECTS} times", url=url)


def _described(resp: requests.Response, url: str, where: str, what: str) -> _HubFile:
    """The file a HEAD's response describes, checked: a status of 200 (or a redirect), a commit, a SHA-256."""
    status = resp.status_code
    if status != 200 and not resp.is_redirect:
        said = f"HTTP {status} {_said(resp.headers.get('X-Error-Code') or resp.reason, 60)} for {url}"
        if status in _RETRY_STATUS or status >= 500:  # the Hub is down: a cached copy may do (see hf_hub_fetch)
            raise DownloadError(f"the Hub cannot answer for now: {said}", url=url, status=status)
        hint = " (a private or gated repository needs HF_TOKEN)" if status in (401, 403) else ""
        raise HubResponseError(f"the Hub has no {what}: {said}{hint}", url=url, status=status)
    commit = resp.headers.get("X-Repo-Commit", "")
    if not _COMMIT.fullmatch(commit):
        raise HubResponseError(
            f"{url} answered without a commit hash (X-Repo-Commit: {_said(commit or None)}): HF_ENDPOINT does not "
            "look like a Hugging Face Hub; nothing was downloaded",
            url=url,
        )
    raw = resp.headers.get("X-Linked-Etag") or resp.headers.get("ETag")
    sha256 = _etag_digest(raw)
    if sha256 is None:
        raise HubResponseError(
            f"{url}: the Hub's ETag {_said(raw)} is not a SHA-256 (64 hex digits), so the file cannot be named "
            "or verified by it (vggnet downloads only LFS files from the Hub); nothing was downloaded",
            url=url,
        )
    size = resp.headers.get("X-Linked-Size") or (None if resp.is_redirect else resp.headers.get("Content-Length"))
    count = int(size) if size and size.strip().isdigit() and int(size) > 0 else None
    return _HubFile(commit.lower(), sha256, count, where)


# --- the cache ----------------------------------------------------------------------------------------


def _read_ref(storage: Path, cache: Path, revision: str) -> str | None:
    ref = _inside(storage / "refs" / revision, cache)
    try:
        with open_read(ref) as f:  # a regular file, never a FIFO to hang on
            text = f.read(100).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):  # none, or NotARegularFileError
        return None
    if not _COMMIT.fullmatch(text):
        logger.warning("%s does not hold a commit hash (%s); ignored", ref, _said(text))
        return None
    return text.lower()


def _verified(
    pointer: Path, storage: Path, cache: Path, commit: str, *, announced: str | None, pinned: str | None
) -> HubFetched:
    """The file `pointer` names, checked: inside the cache, and matching its blob's name, the Hub's ETag, `pinned`."""
    _inside(pointer, cache)
    blob = Path(os.path.realpath(pointer))
    first = Path(os.path.abspath(pointer.parent / os.readlink(pointer))) if pointer.is_symlink() else pointer
    blobs = Path(os.path.abspath(storage / "blobs"))
    named = first.name.lower() if first.parent == blobs and _SHA256.fullmatch(first.name) else None
    digest = file_digest(blob, stamp_of(blob), pinned or announced or named)
    for want, what in ((named, "the name of its blob"), (announced, "the Hub's ETag"), (pinned, "the pinned sha256")):
        if want is not None and not digest.startswith(want):
            raise ChecksumError(
                str(pointer), blob, want, digest, detail=f"the cached file does not match {what}; it was not loaded",
                hint=_REFETCH,
            )  # fmt: skip
    if named is None and announced is None and pinned is None:
        logger.warning("%s: a copy with no digest in its name and none pinned; loaded unverified", pointer)
    return HubFetched(pointer, blob, digest, commit)


def _cached_file(repo_id: str, filename: str, revision: str, cache: Path, pinned: str | None) -> HubFetched | None:
    """The cached, verified copy of `filename` at `revision` (a commit, or a branch or tag through refs/), or None.

    A copy that does not match its blob's name or `pinned` is a ChecksumError, one that resolves outside
    the cache an OutsideCacheError: neither is ever returned.
    """
    storage = _repo_folder(cache, repo_id)
    commit = revision.lower() if _COMMIT.fullmatch(revision) else _read_ref(storage, cache, revision)
    if commit is None:
        return None
    pointer = storage / "snapshots" / commit / filename
    if not os.path.lexists(pointer):
        return None
    return _verified(pointer, storage, cache, commit, announced=None, pinned=pinned)


def _blob_ok(blob: Path, cache: Path, sha256: str) -> bool:
    """`blob` is there and holds what its name says; one that does not is removed (it can be nothing else)."""
    if not os.path.lexists(blob):
        return False
    real = Path(os.path.realpath(_inside(blob, cache)))  # huggingface_hub's shared store links blobs within the cache
    if file_digest(real, stamp_of(real), sha256) == sha256:
        return True
    logger.warning("%s does not hold what its name says; removed, downloading it again", blob)
    blob.unlink()
    return False


def _link(pointer: Path, blob: Path) -> None:
    """`pointer` -> `blob` as huggingface_hub links it (relative), replaced atomically; a copy where links fail."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(blob, pointer.parent)
    if pointer.is_symlink() and os.readlink(pointer) == target:
        return
    tmp = pointer.with_name(f".{pointer.name}.{secrets.token_hex(4)}.tmp")
    try:
        try:
            os.symlink(target, tmp)
        except OSError:  # no symbolic links here (Windows without developer mode): huggingface_hub copies too
            shutil.copyfile(blob, tmp)
        os.replace(tmp, pointer)  # a link planted at `pointer` is replaced, never followed
    finally:
        tmp.unlink(missing_ok=True)


def _write_ref(storage: Path, cache: Path, revision: str, commit: str) -> None:
    if revision == commit:
        return
    ref = _inside(storage / "refs" / revision, cache)
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(f".{ref.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(commit, encoding="ascii")
        os.replace(tmp, ref)
    finally:
        tmp.unlink(missing_ok=True)


# --- the fetch ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    """One fetch's terms: the file, where it goes, how long it may take."""

    repo_id: str
    filename: str
    revision: str
    pinned: str | None
    cache: Path
    timeout: Timeout
    retries: int
    progress: bool

    @property
    def storage(self) -> Path:
        return _repo_folder(self.cache, self.repo_id)


def hf_hub_fetch(
    repo_id: str,
    filename: str = DEFAULT_FILE,
    *,
    revision: str | None = None,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
    timeout: Timeout = TIMEOUT,
    retries: int = RETRIES,
) -> HubFetched:
    """`filename` of a Hub repository, verified, in huggingface_hub's cache: found there, or downloaded into it.

    Args:
        repo_id: "owner/name".
        filename: the file in the repository.
        revision: a branch, tag or 40-hex commit (None: "main"). A commit's cached copy is used without a request.
        sha256: a full digest or a prefix of at least 8 hex digits; checked against the Hub's before downloading.
        cache_dir: the cache (None: $HF_HUB_CACHE and the rest, see `settings.hf_hub_cache`).
        progress: show a progress bar.
        timeout: (connect, read) seconds, or one number for both.
        retries: after the first attempt, for the HEAD and for the body each.

    Returns:
        The snapshot path, the verified blob it names, its SHA-256 and the commit.

    Raises:
        ChecksumError: the bytes do not match the Hub's SHA-256, or that does not match `sha256`.
        HubResponseError: the Hub's answer is unusable (no such file, no commit, an ETag that is not a SHA-256).
        OutsideCacheError: a cached path resolves outside the cache.
        DownloadError: the transfer failed, or did not finish within $VGGNET_DOWNLOAD_DEADLINE.
        NotCachedError: offline, and no copy cached.
    """
    job = _Request(
        _check_repo(repo_id), _check_name("filename", filename), _check_name("revision", revision or "main"),
        normalize_digest(sha256) if sha256 is not None else None,
        Path(cache_dir).expanduser() if cache_dir is not None else settings.hf_hub_cache(), timeout, retries, progress,
    )  # fmt: skip
    offline = settings.hf_offline()
    if offline or _COMMIT.fullmatch(job.revision):  # a commit's files never change: its cached copy needs no request
        found = _cached_file(job.repo_id, job.filename, job.revision, job.cache, job.pinned)
        if found is not None:
            return found
        if offline:
            raise NotCachedError(
                f"{job.repo_id}/{job.filename}@{job.revision} is not in the Hugging Face cache {job.cache}, and "
                "offline mode is on (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE or VGGNET_OFFLINE): download it once online"
            )
    return _fetch_online(job)


def _fetch_online(job: _Request) -> HubFetched:
    """The HEAD, then the body if the blob is not cached yet, all within one deadline; then the snapshot's link."""
    import requests

    base = settings.hf_endpoint()
    secret = _token()
    auth = {"Authorization": f"Bearer {secret}"} if secret else {}
    headers = {"Accept-Encoding": "identity", "User-Agent": "vggnet; hf_hub-compatible", **auth}
    url = f"{base}/{job.repo_id}/resolve/{quote(job.revision, safe='')}/{quote(job.filename)}"
    seconds = settings.positive_number(ENV_DEADLINE, DEADLINE)
    with Watch(time.monotonic() + seconds, seconds) as watch, requests.Session() as session:
        adapter = watched_adapter()(watch)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        try:
            resp, where = _resolve(session, url, headers, job.timeout, watch, job.retries)
            meta = _described(resp, url, where, f"{job.filename} at {job.repo_id}@{job.revision}")
        except DownloadError as err:  # no answer: huggingface_hub's fallback, the last copy of this revision
            found = None if isinstance(err, HubResponseError) else _cached_file(
                job.repo_id, job.filename, job.revision, job.cache, job.pinned)  # fmt: skip
            if found is None:
                raise
            logger.warning("%s; using the cached copy of %s@%s", err, job.repo_id, job.revision)
            return found
        blob = _blob(job, meta)
        if not _blob_ok(blob, job.cache, meta.sha256):
            blob.parent.mkdir(parents=True, exist_ok=True)
            own = origin_of(meta.url) == origin_of(base)  # the token goes to the Hub, never to a CDN
            download_file(
                meta.url, blob, expected=meta.sha256, size=meta.size, max_size=None, progress=job.progress,
                timeout=job.timeout, retries=job.retries, watch=watch, headers=auth if own else None,
            )  # fmt: skip
    pointer = job.storage / "snapshots" / meta.commit / job.filename
    _link(pointer, blob)
    _write_ref(job.storage, job.cache, job.revision, meta.commit)
    return _verified(pointer, job.storage, job.cache, meta.commit, announced=meta.sha256, pinned=job.pinned)


def _blob(job: _Request, meta: _HubFile) -> Path:
    """Where the file goes, checked against the pinned digest first: `blobs/<sha256>`, inside the cache."""
    if job.pinned is not None and not meta.sha256.startswith(job.pinned):
        raise ChecksumError(
            meta.url, job.storage, job.pinned, meta.sha256,
            detail="the Hub serves another file than the pinned digest names; nothing was downloaded",
            hint="Pin the revision (hf-hub:owner/name@<commit>) the digest was taken from, or update the digest.",
        )  # fmt: skip
    blob = _inside(job.storage / "blobs" / meta.sha256, job.cache)
    _inside(job.storage / "snapshots" / meta.commit, job.cache)  # where the link goes: replaced, never written through
    return blob
