"""Every error vggnet raises on purpose: one base, `VggnetError`, and one subclass per kind of problem.

Each subclass keeps the builtin exception that callers caught before, so code written for torchvision
or torch.hub still catches it: a bad argument is a `ValueError`, a missing file a `FileNotFoundError`,
a checksum mismatch a `RuntimeError` (as torch.hub's "invalid hash value"), a download failure an
`OSError`. `EXIT_CODES` is the one table the command line exits by: 2 for what the user fixes in the
command (a bad argument, a missing path, a bad folder layout), 1 for a failure at run time (a download,
a corrupt or unsafe file, a run that diverged). This module imports only the standard library, so the
command line maps an error to its exit status without importing torch.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "EXIT_CODES",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "ArchMismatch",
    "BadCheckpointError",
    "BadFileError",
    "BadImageError",
    "BadKerasFileError",
    "CheckpointMismatchError",
    "ChecksumError",
    "CorruptCheckpointError",
    "DeviceError",
    "DiskError",
    "Diverged",
    "DownloadError",
    "HubResponseError",
    "InUseError",
    "MissingDependency",
    "MissingPathError",
    "NoImages",
    "NotARegularFileError",
    "NotAStateDict",
    "NotCachedError",
    "OutputExistsError",
    "OutputPathError",
    "OutsideCacheError",
    "UnknownWeightsError",
    "UnsafeCheckpointError",
    "UnsupportedError",
    "UsageError",
    "UsageTypeError",
    "VggnetError",
    "WeightsFileNotFound",
    "exit_code",
    "listing",
]

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2


class VggnetError(Exception):
    """Base of every error vggnet raises on purpose; `except vggnet.VggnetError` catches them all."""


# --- what the caller fixes in the call or the command (exit 2) ------------------------------------


class UsageError(VggnetError, ValueError):
    """A bad argument, name or combination of them: the message says what is valid and what to change."""


class UsageTypeError(UsageError, TypeError):
    """An argument of the wrong type (a `TypeError`, as Python's own, and a usage error)."""


class UnknownWeightsError(UsageError, KeyError):
    """A weights name that no record has: a `KeyError` as torchvision's `verify` raises, and a `ValueError`."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""  # KeyError would quote the message


class DeviceError(UsageError, RuntimeError):
    """A device this machine does not have (a `RuntimeError`, as torch's own, and a bad argument)."""


class ArchMismatch(UsageError):
    """The weights are for another architecture than the one asked for.

    Args:
        source: the weights as the caller named them (a file, a record name).
        found: the architecture the weights are for ("vgg16_bn").
        wanted: the architecture asked for.
    """

    def __init__(self, source: str, found: str, wanted: str) -> None:
        self.source, self.found, self.wanted = source, found, wanted
        super().__init__(self.explain("arch="))

    def explain(self, option: str) -> str:
        """The message, with the argument spelled as the caller takes it.

        Args:
            option: "arch=" for the library, "--arch " for the command line.

        Returns:
            One line naming the source, both architectures and the fix.
        """
        quote = repr if option.endswith("=") else str
        return (
            f"{self.source} holds {self.found} weights, not {self.wanted}; they are not for "
            f"{option}{quote(self.wanted)}: leave {option.strip(' =')} out or pass {option}{quote(self.found)}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.source, self.found, self.wanted)


class MissingPathError(UsageError, FileNotFoundError):
    """A file or folder the caller named is not there (or is the other kind)."""


class WeightsFileNotFound(MissingPathError):
    """`weights` names a local file that is not there (or a folder)."""


class NoImages(MissingPathError):
    """A named source (file, folder, pattern, list) holds no image, or a folder is not laid out as needed."""


class OutputExistsError(UsageError, FileExistsError):
    """What would be written is there already: resume it, overwrite it or write elsewhere, as the message says."""


class OutputPathError(UsageError, OSError):
    """A destination vggnet will not write: a folder, a symbolic link, a FIFO or a device, or below a file.

    A file is written as a temporary file beside it, then renamed over the name: never through a link.
    """


# --- what failed at run time (exit 1) -----------------------------------------------------------


class MissingDependency(VggnetError, ImportError):
    """An optional package a feature needs is not installed; the message names the extra to install."""


class UnsupportedError(VggnetError, RuntimeError):
    """What was asked cannot be done here or with this object (int8 on a CPU without it, training an int8 model)."""


class InUseError(VggnetError, BlockingIOError):
    """Another process is writing the same output or run folder (its lock is held); the message names it."""


class NotCachedError(VggnetError, FileNotFoundError):
    """A file is neither cached nor mirrored, and may not be downloaded (VGGNET_OFFLINE)."""


class DiskError(VggnetError, OSError):
    """A file could not be written whole (no space left, or it does not read back as written); nothing was kept."""


class ChecksumError(VggnetError, RuntimeError):
    """A file's SHA-256 is not the expected one: it was not kept under its final name, nor loaded.

    A `RuntimeError`, as torch.hub's "invalid hash value" is, so code written for torch.hub still catches it.

    Args:
        url: where the file came from (a URL or a local path).
        path: the file that was hashed.
        expected: the digest it should have had: 64 hex digits, or a prefix of at least 8.
        actual: the digest it had (as long as `expected`).
        detail: what became of the file (default: "no file was kept").
        hint: what to do next (default: retry, or check the digest).
    """

    def __init__(
        self, url: str, path: str | os.PathLike[str], expected: str, actual: str, detail: str = "", hint: str = ""
    ) -> None:
        self.url = url
        self.path = Path(path)
        self.expected = expected
        self.actual = actual
        self.detail = detail or "no file was kept"
        self.hint = hint or RETRY_HINT
        what = "SHA-256" if len(expected) == 64 else f"SHA-256 prefix ({len(expected)} hex digits)"
        super().__init__(
            f"checksum mismatch for {url} ({self.path}): expected {what} {expected}, got {actual}; {self.detail}. "
            f"{self.hint}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.url, str(self.path), self.expected, self.actual, self.detail, self.hint)


# What a ChecksumError advises when the caller gives no hint: a transfer or a mirror went wrong.
RETRY_HINT: Final = (
    "The transfer was corrupted or the file is not the one the record describes: retry, "
    "and check the URL, the mirror (VGGNET_MIRROR) and the digest."
)


class DownloadError(VggnetError, OSError):
    """A download failed for good: an HTTP status retrying cannot fix, too many failures, or too many bytes.

    Args:
        message: the one line shown to the user.
        url: the URL that failed.
        status: the HTTP status, when a response was received.
    """

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_download_error, (str(self), self.url, self.status)


def _rebuild_download_error(message: str, url: str, status: int | None) -> DownloadError:
    return DownloadError(message, url=url, status=status)


class HubResponseError(DownloadError):
    """The Hugging Face Hub's answer about a file cannot be used: nothing was downloaded or written.

    No such file, no commit, or an ETag that is not a SHA-256.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_hub_error, (str(self), self.url, self.status)


def _rebuild_hub_error(message: str, url: str, status: int | None) -> HubResponseError:
    return HubResponseError(message, url=url, status=status)


class OutsideCacheError(VggnetError, ValueError):
    """A name in the Hugging Face cache resolves outside it (a link planted there): nothing is read through it.

    Nothing is written through it either. Remove it (or the repository's folder) and download again.

    Args:
        path: the name in the cache.
        real: where it resolves.
        cache: the cache's folder.
    """

    def __init__(self, path: str | os.PathLike[str], real: str, cache: str | os.PathLike[str]) -> None:
        self.path, self.real, self.cache = Path(path), real, Path(cache)
        super().__init__(
            f"refusing {path}: it resolves to {real}, outside the Hugging Face cache {cache}; nothing was read "
            "through it. Remove it (or the repository's folder there) and download again"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self.path), self.real, str(self.cache))


class NotARegularFileError(VggnetError, OSError):
    """A name is a symbolic link, FIFO, device or directory: vggnet neither reads nor writes through it.

    Someone who can write to a shared cache could otherwise make vggnet write to, or hang on, any
    file they point at; the fix is to remove the name (`vggnet cache --remove NAME`) and look at who made it.

    Args:
        path: the name that is not a regular file.
        what: what it is instead ("a symbolic link", "a FIFO", ...).
    """

    def __init__(self, path: str | os.PathLike[str], what: str = "not a regular file") -> None:
        self.path = Path(path)
        super().__init__(
            f"refusing {self.path}: it is {what}, and vggnet only opens regular files it can check "
            f"(nothing was read from or written through it); remove it ('vggnet cache --remove {self.path.name}')"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self.path),)


class BadFileError(VggnetError, ValueError):
    """A file whose contents vggnet cannot use: the message names the file and what is wrong with it."""


class BadCheckpointError(BadFileError):
    """A checkpoint whose contents vggnet will not load (not a state dict, NaN, sparse or integer weights, ...)."""


class CorruptCheckpointError(BadCheckpointError, RuntimeError):
    """A checkpoint that cannot be read at all (cut short, not a zip): a `RuntimeError`, as torch.load's."""


class CheckpointMismatchError(BadCheckpointError, RuntimeError):
    """A checkpoint whose tensors do not fit the model: a `RuntimeError`, as `load_state_dict`'s."""


class UnsafeCheckpointError(BadCheckpointError, pickle.UnpicklingError):
    """A checkpoint holding pickled code or objects other than tensors and plain containers; none of it ran.

    Args:
        path: the checkpoint file.
        reference: the global its pickle asked for ("posix.system"), when torch named one.
    """

    def __init__(self, path: str | os.PathLike[str], reference: str | None = None) -> None:
        self.path = Path(path)
        self.reference = reference  # the global it tried to import ("posix.system"), when torch named one
        holds = f"a reference to {reference}" if reference else "pickled code or objects other than tensors"
        super().__init__(
            f"refused to load {path}: it holds {holds} (or is not a PyTorch checkpoint at all); it was read with "
            "weights_only=True, so none of it ran. Use a checkpoint that holds only tensors (a state dict)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self.path), self.reference)


class BadKerasFileError(BadCheckpointError):
    """A Keras .h5 file vggnet will not read: damaged, not Keras weights, or reaching outside itself.

    HDF5 lets a dataset take its bytes from other files (external storage, external or soft links,
    virtual datasets) and declare any shape; vggnet reads only plain float arrays stored in the file,
    of the shape each VGG layer holds. The message names the file and the dataset; nothing was read.
    """


class NotAStateDict(BadCheckpointError, TypeError):
    """A checkpoint that holds no state dict where vggnet looks (a `TypeError`, as before, and a bad checkpoint)."""


class BadImageError(BadFileError):
    """An image that cannot be used (not an image, cut short, over the pixel budget): skip it and go on.

    Args:
        path: the file (None for an image already in memory).
        problem: what is wrong with it, in a few words.
    """

    def __init__(self, path: object, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(problem if path is None else f"{path}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.problem)


class Diverged(VggnetError, RuntimeError):
    """A training run's loss went NaN or far above its start."""


# The one table the command line exits by: the first class of an error's MRO found here decides.
EXIT_CODES: Final[Mapping[type[BaseException], int]] = MappingProxyType(
    {UsageError: EXIT_USAGE, VggnetError: EXIT_FAILURE}
)


def exit_code(err: BaseException) -> int:
    """The exit status for `err`: `EXIT_CODES` of the first of its classes listed there, else 1.

    Args:
        err: the exception a command ended with.

    Returns:
        2 for a usage error, 1 for anything else.
    """
    for cls in type(err).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_FAILURE


def listing(items: Sequence[str], n: int = 8) -> str:
    """The first `n` of `items` as a list, each cut to 100 characters, and how many more there are.

    Messages quote keys and names a file chose: this keeps such a line readable whatever the file holds.

    Args:
        items: the names to show.
        n: how many to show.

    Returns:
        "['a', 'b'] and 3 more", or "['a', 'b']" when all are shown.
    """
    shown = [item if len(item) <= 100 else item[:97] + "..." for item in items[:n]]
    return str(shown) + (f" and {len(items) - n} more" if len(items) > n else "")
