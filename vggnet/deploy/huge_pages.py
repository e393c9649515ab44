"""Transparent huge pages for the weights a packed model reads on every call (Linux).

A VGG pass streams all of its weights (vgg16's int8 weights are 132 MiB packed, fc6's 98 of them) through
a cache too small to keep them from one call to the next. Mapped in 4 KiB pages, that stream needs a new
address translation every 4 KiB, and the CPU's prefetchers stop at each page's end; in 2 MiB pages
neither happens (the speed page, docs/speed.md, has the figures).

glibc and PyTorch's CPU allocator map small pages unless told otherwise (PyTorch's
`THP_MEM_ALLOC_ENABLE=1` does it for each allocation of 2 MiB or more in a process, read at its first),
so a model that packs its weights once asks the kernel to move just those into huge pages:
`madvise(MADV_COLLAPSE)` over the whole 2 MiB pages inside each packed tensor (Linux 6.1 and later), or
`MADV_HUGEPAGE` on older kernels, where the kernel's khugepaged collapses them in its own time. Where the
packed copies are not exposed (oneDNN Graph's, inside an optimized model's programs),
`advise_new_mappings` names the large anonymous memory mapped while they were made instead. The
contents do not change. The system's setting is kept: nothing is done where transparent huge pages are
`never` (for all sizes, or for this page size), and a range the process marked `MADV_NOHUGEPAGE` is left
so. `MADV_COLLAPSE` may reclaim or compact memory to find free huge pages, whatever the `defrag` setting
says, which is part of the time it takes (about 2.3 ms a MiB moved, measured on the 2-core Xeon).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

__all__ = [
    "MADV_COLLAPSE",
    "MADV_HUGEPAGE",
    "MIN_NEW_MAPPING",
    "NewMappings",
    "advise_huge_pages",
    "advise_new_mappings",
    "huge_page_size",
]

logger = logging.getLogger(__name__)

MADV_HUGEPAGE = 14  # <asm-generic/mman-common.h>
MADV_COLLAPSE = 25  # Linux 6.1
THP_SETTINGS = Path("/sys/kernel/mm/transparent_hugepage")
# The smallest new mapping `advise_new_mappings` names: a thread's stack (8 MiB by default) stays as it is
MIN_NEW_MAPPING = 16 << 20

Madvise = Callable[[int, int, int], int]


@functools.lru_cache(maxsize=1)
def huge_page_size() -> int:
    """The size of a transparent huge page here, in bytes; 0 where there are none to ask for.

    Read once per process: a later change of the system's setting is not seen.

    Returns:
        The kernel's PMD page size (2 MiB on x86-64) on Linux where transparent huge pages of that size
        are `always` or `madvise` (the per-size setting where the kernel has one, else the global one);
        0 elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return 0
    try:
        size = int((THP_SETTINGS / "hpage_pmd_size").read_text())
        mode = (THP_SETTINGS / "enabled").read_text()
    except (OSError, ValueError):
        return 0
    per_size = THP_SETTINGS / f"hugepages-{size // 1024}kB" / "enabled"  # Linux 6.8 and later
    if per_size.is_file():
        try:
            own = per_size.read_text()
        except OSError:
            return 0
        mode = mode if "[inherit]" in own else own
    return 0 if "[never]" in mode else size


@functools.lru_cache(maxsize=1)
def _madvise() -> Madvise | None:
    """libc's madvise, which sets errno for ctypes.get_errno; None where it cannot be had."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError, TypeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


def _collapses() -> bool:
    """Whether this kernel knows MADV_COLLAPSE (6.1 and later): if so, EINVAL from it is a refusal."""
    try:
        major, minor = (int(part) for part in os.uname().release.split(".")[:2])
    except ValueError:
        return True
    return (major, minor) >= (6, 1)


def _memory(tensor: torch.Tensor) -> tuple[int, int] | None:
    """(address, bytes) of the memory behind `tensor` (a dense tensor's whole storage, or oneDNN's packed
    buffer), or None for a tensor without such memory (sparse, quantized, on another device, a subclass)."""
    if tensor.device.type != "cpu" or tensor.is_quantized:
        return None
    try:
        if tensor.is_mkldnn:
            return int(torch.ops.mkldnn.data_ptr(tensor)), int(torch.ops.mkldnn._nbytes(tensor))
        if tensor.layout != torch.strided:
            return None
        storage = tensor.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):  # a wrapper subclass, a fake tensor
        return None


def advise_huge_pages(tensors: Iterable[torch.Tensor]) -> int:
    """Ask the kernel to map the memory of CPU `tensors` in transparent huge pages, best effort.

    Only the whole huge pages inside each tensor's memory are named (a view names those of its whole
    storage), so no byte of anything else is, and each range once. Tensors smaller than a huge page,
    without dense memory of their own (sparse, quantized, another device) or on a system without huge
    pages are left as they are; a refusal (no huge page free, a container's policy) only costs the
    speed-up.

    Args:
        tensors: the tensors, typically weights packed once and read by every call.

    Returns:
        How many bytes the kernel took the advice for (0 where huge pages are unavailable or refused).
    """
    size = huge_page_size()
    madvise = _madvise() if size else None
    if madvise is None:
        return 0
    ranges = set()
    for tensor in tensors:
        memory = _memory(tensor)
        if memory is None:
            continue
        address, nbytes = memory
        start, end = -(-address // size) * size, (address + nbytes) // size * size
        if address and end > start:
            ranges.add((start, end - start))
    return sum(_advise(madvise, start, length) for start, length in sorted(ranges))


class NewMappings:
    """What `advise_new_mappings` advised: `bytes`, set when its block ends (0 until then)."""

    def __init__(self) -> None:
        self.bytes = 0


@contextlib.contextmanager
def advise_new_mappings() -> Iterator[NewMappings]:
    """Advise, when the block ends, the private anonymous memory mapped during it and still mapped then.

    For memory a library allocates and keeps without handing it out: oneDNN Graph's packed copies of a
    program's weights (glibc maps each block of 32 MiB or more on its own), which PyTorch does not expose.
    Only the address ranges that were not mapped when the block began are named, in whole huge pages, and
    only in mappings of `MIN_NEW_MAPPING` bytes or more; the heap and the stacks are not. Another thread's
    large allocation made during the block is advised too, which changes how its memory is mapped, not
    what it holds.

    Yields:
        A `NewMappings` whose `bytes` says, once the block is over, how many bytes the kernel took the
        advice for.
    """
    result = NewMappings()
    size = huge_page_size()
    madvise = _madvise() if size else None
    before = _anonymous_mappings() if madvise is not None else []
    yield result
    if madvise is None:
        return
    mappings = [(low, high) for low, high in _anonymous_mappings() if high - low >= MIN_NEW_MAPPING]
    ranges = [part for mapping in mappings for part in _minus(mapping, before)]
    whole = [(-(-start // size) * size, end // size * size) for start, end in ranges]
    result.bytes = sum(_advise(madvise, start, end - start) for start, end in whole if end > start)


def _anonymous_mappings() -> list[tuple[int, int]]:
    """The process's private, read-write, anonymous mappings as sorted (start, end), from /proc/self/maps
    (a mapping of a file, the heap and the stacks have a name there; these have none)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.split()
        if len(fields) == 5 and fields[1].startswith("rw") and fields[1].endswith("p") and fields[4] == "0":
            low, _, high = fields[0].partition("-")
            ranges.append((int(low, 16), int(high, 16)))
    return sorted(ranges)


def _minus(span: tuple[int, int], taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of `span` outside every range of `taken` (sorted, not overlapping each other)."""
    start, end = span
    parts = []
    for low, high in taken:
        if high <= start or low >= end:
            continue
        if low > start:
            parts.append((start, low))
        start = max(start, high)
    if start < end:
        parts.append((start, end))
    return parts


def _advise(madvise: Madvise, start: int, length: int) -> int:
    """`length` bytes from `start` collapsed into huge pages now, else marked for khugepaged to collapse in
    its own time (a kernel before 6.1, or no huge page free this moment); the bytes advised, 0 if refused."""
    if madvise(start, length, MADV_COLLAPSE) == 0:
        return length
    code = ctypes.get_errno()
    if code == errno.EINVAL and _collapses():  # the range is marked MADV_NOHUGEPAGE (or THP is off for it)
        logger.debug("MADV_COLLAPSE of %d bytes refused (EINVAL): left as it is", length)
        return 0
    if madvise(start, length, MADV_HUGEPAGE) == 0:
        return length
    logger.debug("madvise of %d bytes refused: %s", length, errno.errorcode.get(ctypes.get_errno(), code))
    return 0
