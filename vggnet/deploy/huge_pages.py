"""Transparent huge pages for the weights a packed model reads on every call (Linux).

A VGG pass streams all of its weights (138 MB in int8, most of them the first fully connected layer's)
through a cache too small to keep them from one call to the next. Mapped in 4 KiB pages, that stream
needs a new page translation every 4 KiB and the CPU's prefetchers stop at each page's end; in 2 MiB
pages neither happens. Measured on a 2-core Xeon (AMX, kernel 6.18), the vgg16 int8 pass at batch 1 took
12.4-13.2 ms with its packed weights in huge pages against 13.1-14.4 ms without (five processes each).

glibc and PyTorch's CPU allocator map small pages unless told otherwise (PyTorch's
`THP_MEM_ALLOC_ENABLE=1` does it for every tensor of a process, read once when torch starts), so a model
that packs its weights once asks the kernel to move just those into huge pages: `madvise(MADV_COLLAPSE)`
(Linux 6.1 and later) over the whole 2 MiB pages inside each packed tensor, or `MADV_HUGEPAGE` on older
kernels, where the kernel's khugepaged collapses them in its own time. The contents do not change; the
system's setting is kept: nothing is done where transparent huge pages are `never`.
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

_log = logging.getLogger(__name__)

MADV_HUGEPAGE = 14  # <asm-generic/mman-common.h>
MADV_COLLAPSE = 25
THP_SETTINGS = Path("/sys/kernel/mm/transparent_hugepage")


@functools.lru_cache(maxsize=1)
def huge_page_size() -> int:
    """The size of a transparent huge page here, in bytes; 0 where there are none to ask for.

    Returns:
        The kernel's PMD page size (2 MiB on x86-64) on Linux with transparent huge pages `always` or
        `madvise`; 0 elsewhere, or where the system's setting is `never`.
    """
    if not sys.platform.startswith("linux"):
        return 0
    try:
        mode = (THP_SETTINGS / "enabled").read_text()
        size = int((THP_SETTINGS / "hpage_pmd_size").read_text())
    except (OSError, ValueError):
        return 0
    return 0 if "[never]" in mode else size


@functools.lru_cache(maxsize=1)
def _madvise() -> Callable[[int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


def _memory(tensor: torch.Tensor) -> tuple[int, int]:
    """(address, bytes) of the memory behind `tensor`: a dense tensor's storage, or oneDNN's packed buffer."""
    if tensor.is_mkldnn:
        return int(torch.ops.mkldnn.data_ptr(tensor)), int(torch.ops.mkldnn._nbytes(tensor))
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def advise_huge_pages(tensors: Iterable[torch.Tensor]) -> int:
    """Ask the kernel to map the memory of CPU `tensors` in transparent huge pages, best effort.

    Only the whole huge pages inside each tensor's memory are named, so no byte of anything else is;
    tensors smaller than a huge page, on another device, or without memory of their own are left as they
    are, and a refusal (no memory free in huge pages, a container's policy) only costs the speed-up.

    Args:
        tensors: the tensors, typically weights packed once and read by every call.

    Returns:
        How many bytes the kernel took the advice for (0 where huge pages are unavailable or refused).
    """
    size, madvise = huge_page_size(), _madvise()
    if not size or madvise is None:
        return 0
    advised = 0
    for tensor in tensors:
        if tensor.device.type != "cpu" or tensor.is_sparse or tensor.is_quantized:
            continue
        address, nbytes = _memory(tensor)
        start, end = -(-address // size) * size, (address + nbytes) // size * size
        if address and end > start:
            advised += _advise(madvise, start, end - start)
    return advised


def _advise(madvise: Callable[[int, int, int], int], start: int, length: int) -> int:
    """`length` bytes from `start` collapsed into huge pages now, else (a kernel before 6.1, no huge page free
    this moment) marked for khugepaged to collapse later; the bytes advised, 0 where both were refused."""
    for advice in (MADV_COLLAPSE, MADV_HUGEPAGE):
        if madvise(start, length, advice) == 0:
            return length
        code = ctypes.get_errno()
        _log.debug("madvise(%d) of %d bytes refused: %s", advice, length, errno.errorcode.get(code, code))
    return 0
