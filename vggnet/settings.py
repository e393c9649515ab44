"""Every environment variable vggnet reads, read here and only when asked (never at import).

vggnet's own:

- `VGGNET_HOME`: the cache directory (default torch.hub's checkpoint directory).
- `VGGNET_MIRROR`: a base URL or a local directory that replaces the official download URL.
- `VGGNET_OFFLINE`: never download; use what is cached or mirrored.
- `VGGNET_DOWNLOAD_DEADLINE`: seconds a whole download may take, retries included (default 3600).
- `VGGNET_DOWNLOAD_MAX_BYTES`: the most a file of unknown size may have (default 2 GiB).
- `VGGNET_ALLOW_HTTP_REDIRECT`: follow a redirect from https to plain http.
- `VGGNET_MAX_IMAGE_PIXELS`: the pixel budget of one image (default Pillow's).

Read as they are set by others: torchrun's `WORLD_SIZE`, `RANK`, `LOCAL_RANK`; oneDNN's instruction-set
cap `ONEDNN_MAX_CPU_ISA` (or `DNNL_MAX_CPU_ISA`); and huggingface_hub's, for `hf-hub:` names, with the
meaning huggingface_hub gives them: `HF_ENDPOINT`, `HF_HUB_CACHE` (`HUGGINGFACE_HUB_CACHE`, `HF_HOME`,
`XDG_CACHE_HOME`), `HF_HUB_OFFLINE` (`TRANSFORMERS_OFFLINE`), `HF_TOKEN` (`HF_TOKEN_PATH`,
`HF_HUB_DISABLE_IMPLICIT_TOKEN`). A malformed value is a `UsageError` naming the variable,
what it holds and what it must hold. This module imports only the standard library.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from vggnet.errors import UsageError

__all__ = [
    "ENV_ALLOW_HTTP",
    "ENV_DEADLINE",
    "ENV_HOME",
    "ENV_MAX_BYTES",
    "ENV_MAX_PIXELS",
    "ENV_MIRROR",
    "ENV_OFFLINE",
    "KERNEL_SETTINGS",
    "Torchrun",
    "allow_http_redirect",
    "hf_endpoint",
    "hf_hub_cache",
    "hf_offline",
    "hf_token",
    "hf_token_path",
    "home",
    "kernel_settings",
    "max_image_pixels",
    "mirror",
    "offline",
    "onednn_isa_cap",
    "positive_number",
    "torchrun",
]

ENV_HOME: Final = "VGGNET_HOME"
ENV_MIRROR: Final = "VGGNET_MIRROR"
ENV_OFFLINE: Final = "VGGNET_OFFLINE"
ENV_DEADLINE: Final = "VGGNET_DOWNLOAD_DEADLINE"
ENV_MAX_BYTES: Final = "VGGNET_DOWNLOAD_MAX_BYTES"
ENV_ALLOW_HTTP: Final = "VGGNET_ALLOW_HTTP_REDIRECT"
ENV_MAX_PIXELS: Final = "VGGNET_MAX_IMAGE_PIXELS"

# The variables that change which kernels run (oneDNN's ISA cap, threads): benchmarks record them.
KERNEL_SETTINGS: Final = (
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "ATEN_CPU_CAPABILITY",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)

_TRUE = frozenset({"1", "true", "yes", "on"})


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def home() -> Path | None:
    """`VGGNET_HOME` as a path (`~` expanded), or None when unset or empty.

    Returns:
        The cache directory the user chose, or None for the default (torch.hub's).
    """
    value = os.environ.get(ENV_HOME)
    return Path(value).expanduser() if value else None


def mirror() -> str | None:
    """`VGGNET_MIRROR` (a base URL or a local directory), or None when unset or empty.

    Returns:
        The mirror as given (checked where it is used), or None.
    """
    return os.environ.get(ENV_MIRROR) or None


def offline() -> bool:
    """Whether `VGGNET_OFFLINE` is set to 1, true, yes or on.

    Returns:
        True when nothing may be downloaded.
    """
    return _flag(ENV_OFFLINE)


def allow_http_redirect() -> bool:
    """Whether `VGGNET_ALLOW_HTTP_REDIRECT` allows a redirect from https to plain http.

    Returns:
        True when it is set to 1, true, yes or on.
    """
    return _flag(ENV_ALLOW_HTTP)


HF_DEFAULT_ENDPOINT: Final = "https://huggingface.co"


def _hf_home() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.path.expandvars(os.path.expanduser(os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface"))))


def hf_hub_cache() -> Path:
    """huggingface_hub's cache: `HF_HUB_CACHE`, else `HUGGINGFACE_HUB_CACHE`, else `HF_HOME`/hub.

    `HF_HOME` defaults to `XDG_CACHE_HOME`/huggingface, else ~/.cache/huggingface.

    Returns:
        The folder (which may not exist yet).
    """
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    return Path(os.path.expandvars(os.path.expanduser(env))) if env else _hf_home() / "hub"


def hf_endpoint() -> str:
    """`HF_ENDPOINT` without a trailing slash, else https://huggingface.co.

    Returns:
        The endpoint's base URL.

    Raises:
        UsageError: it is not an http(s) URL with a host.
    """
    url = (os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise UsageError(f"HF_ENDPOINT={url!r} must be an http(s) URL such as {HF_DEFAULT_ENDPOINT}; fix or unset it")
    return url


def hf_offline() -> bool:
    """Whether `HF_HUB_OFFLINE`, `TRANSFORMERS_OFFLINE` or `VGGNET_OFFLINE` is set to 1, true, yes or on.

    Returns:
        True when any of them is set so.
    """
    return _flag("HF_HUB_OFFLINE") or _flag("TRANSFORMERS_OFFLINE") or offline()


def hf_token() -> str | None:
    """`HF_TOKEN`, or None (unset, empty, or `HF_HUB_DISABLE_IMPLICIT_TOKEN` set: no token at all).

    Returns:
        The token, stripped, or None.
    """
    if _flag("HF_HUB_DISABLE_IMPLICIT_TOKEN"):
        return None
    return os.environ.get("HF_TOKEN", "").strip() or None


def hf_token_path() -> Path | None:
    """Where `hf auth login` saved a token: `HF_TOKEN_PATH`, else `HF_HOME`/token; None if tokens are disabled.

    Returns:
        The token file's path (which may not exist), or None.
    """
    if _flag("HF_HUB_DISABLE_IMPLICIT_TOKEN"):
        return None
    return Path(os.path.expanduser(os.environ.get("HF_TOKEN_PATH") or _hf_home() / "token"))


def positive_number(name: str, default: float) -> float:
    """A positive number from the environment variable `name`, else `default`.

    Args:
        name: the variable, e.g. `ENV_DEADLINE`.
        default: what an unset or empty variable means.

    Returns:
        The number.

    Raises:
        UsageError: the variable holds something else than a positive finite number.
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise UsageError(f"{name}={text!r} must be a positive number; set it to one, or unset it for {default:g}")
    return value


def max_image_pixels(default: int) -> int:
    """`VGGNET_MAX_IMAGE_PIXELS` (underscores allowed: 50_000_000), else `default`.

    Args:
        default: the budget when the variable is unset or empty.

    Returns:
        The most pixels an image may have.

    Raises:
        UsageError: the variable is not a positive whole number.
    """
    raw = os.environ.get(ENV_MAX_PIXELS, "")
    text = raw.strip().replace("_", "")
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise UsageError(
            f"{ENV_MAX_PIXELS}={raw!r} is not a positive whole number of pixels; "
            f"set it to e.g. 50000000, or unset it for {default:,}"
        )
    return int(text)


def onednn_isa_cap() -> str:
    """oneDNN's instruction-set cap in lower case (`ONEDNN_MAX_CPU_ISA`, else `DNNL_MAX_CPU_ISA`), or "".

    Returns:
        The cap, e.g. "avx2" or "avx512_core_vnni"; "" when none is set.
    """
    return (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().lower()


def kernel_settings() -> dict[str, str]:
    """The `KERNEL_SETTINGS` variables set here, with their values.

    Returns:
        Variable name -> value, for those set in this process's environment.
    """
    return {k: os.environ[k] for k in KERNEL_SETTINGS if k in os.environ}


@dataclass(frozen=True)
class Torchrun:
    """This process's place among the ones torchrun started: 1 process of rank 0 outside torchrun.

    Attributes:
        world: the number of processes (`WORLD_SIZE`).
        rank: this process's rank among them (`RANK`).
        local_rank: its rank on this machine (`LOCAL_RANK`), the GPU it takes.
    """

    world: int = 1
    rank: int = 0
    local_rank: int = 0


def torchrun() -> Torchrun:
    """`WORLD_SIZE`, `RANK` and `LOCAL_RANK` as torchrun sets them (world 1, rank 0 when unset).

    Returns:
        This process's place; `Torchrun()` (one process) outside torchrun.

    Raises:
        UsageError: a variable is not a whole number, or the rank is not below the world size.
    """
    world = _whole("WORLD_SIZE", 1, least=1)
    if world == 1:
        return Torchrun()
    rank, local = _whole("RANK", 0, least=0), _whole("LOCAL_RANK", 0, least=0)
    if rank >= world:
        raise UsageError(f"RANK={rank} is not below WORLD_SIZE={world}; start the processes with torchrun")
    return Torchrun(world, rank, local)


def _whole(name: str, default: int, *, least: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < least:
        raise UsageError(f"{name}={text!r} must be a whole number of at least {least}, as torchrun sets it")
    return int(text)
