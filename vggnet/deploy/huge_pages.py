"""Transparent huge pages for the weights a packed model reads on every call (Linux).

A VGG pass streams all of its weights (vgg16's int8 weights are 132 MiB packed, fc6's 98 of them) through
a cache too small to keep them from one call to the next. Mapped in 4 KiB pages, that stream needs a new
address translation every 4 KiB, and the CPU's prefetchers stop at each page's end; in 2 MiB pages
neither happens (the speed page, docs/speed.md, has the figures).

glibc and PyTorch's CPU allocator map small pages unless told otherwise (PyTorch's
`THP_MEM_ALLOC_ENABLE=1` does it for each allocation of 2 MiB or more in a process, read at its first),
so a model that packs its weights once asks the kernel to move just those into huge pages:
`madvise(MADV_COLLAPSE)` over the whole 2 MiB pages inside each packed tensor (Linux 6.1 and later; on
older kernels, or where no huge page is free at that moment, nothing: `MADV_HUGEPAGE` would leave the move
to the kernel's khugepaged, at some later time, during calls). The contents do not change. The system's
setting is kept: nothing is done where transparent huge pages are `never` (for all sizes, or for this page
size), and a range the process marked `MADV_NOHUGEPAGE` is left so. `MADV_COLLAPSE` may reclaim or compact
memory to find free huge pages, whatever the `defrag` setting says, which is part of the time it takes
(about 2.3 ms a MiB moved, measured on the 2-core Xeon).

Only the int8 model's packed weights are advised: oneDNN Graph's copies inside an optimized model's
programs are not exposed. Naming the memory mapped while a program was made instead (measured in issue
27: bf16 batch 1 a little faster, float32 and batch 8 not) was taken out after CI runs in which warm
batch-8 calls page-faulted; a later run without it did too, so that was likely not the cause
(docs/speed.md).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

__all__ = ["MADV_COLLAPSE", "advise_huge_pages", "huge_page_size"]

logger = logging.getLogger(__name__)

MADV_COLLAPSE = 25  # <asm-generic/mman-common.h>, Linux 6.1
THP_SETTINGS = Path("/sys/kernel/mm/transparent_hugepage")

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
        start, end = _whole_pages(address, address + nbytes, size)
        if address and end > start:
            ranges.add((start, end - start))
    return sum(_advise(madvise, start, length) for start, length in sorted(ranges))


def _whole_pages(start: int, end: int, size: int) -> tuple[int, int]:
    """The whole pages of `size` bytes inside [start, end), as (first, after last); empty if first >= after."""
    return -(-start // size) * size, end // size * size


def _advise(madvise: Madvise, start: int, length: int) -> int:
    """`length` bytes from `start` collapsed into huge pages now; the bytes moved, 0 if refused (a kernel
    before 6.1, no huge page free this moment, a range marked MADV_NOHUGEPAGE, a container's policy)."""
    if madvise(start, length, MADV_COLLAPSE) == 0:
        return length
    code = ctypes.get_errno()
    logger.debug("MADV_COLLAPSE of %d bytes refused: %s", length, errno.errorcode.get(code, code))
    return 0
