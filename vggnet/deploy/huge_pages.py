"""Transparent huge pages for the weights a packed model reads on every call (Linux).

A VGG pass streams all of its weights (vgg16's int8 weights are 132 MiB packed, fc6's 98 of them) through
a cache too small to keep them from one call to the next. Mapped in 4 KiB pages, that stream needs a new
address translation every 4 KiB, and the CPU's prefetchers stop at each page's end; in 2 MiB pages
neither happens (the speed page, docs/speed.md, has the figures).

glibc and PyTorch's CPU allocator map small pages unless told otherwise (PyTorch's
`THP_MEM_ALLOC_ENABLE=1` does it for each allocation of 2 MiB or more in a process, read at its first),
so a model that packs its weights once asks the kernel to move just those into huge pages:
`madvise(MADV_COLLAPSE)` over the whole 2 MiB pages inside each packed tensor (Linux 6.1 and later; on
older kernels, or where no huge page is free at that moment, nothing: `MADV_HUGEPAGE` would leave the move to
the kernel's khugepaged, at some later time, during calls). Where the
packed copies are not exposed (oneDNN Graph's, inside an optimized model's programs),
`NewMappings` names the large anonymous memory mapped while they were made instead. The
contents do not change. The system's setting is kept: nothing is done where transparent huge pages are
`never` (for all sizes, or for this page size), and a range the process marked `MADV_NOHUGEPAGE` is
left so. `MADV_COLLAPSE` may reclaim or compact memory to find free huge pages,
whatever the `defrag` setting says, which is part of the time it takes (about 2.3 ms a MiB moved,
measured on the 2-core Xeon).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

__all__ = [
    "MADV_COLLAPSE",
    "MIN_NEW_MAPPING",
    "Mapping",
    "NewMappings",
    "advise_huge_pages",
    "huge_page_size",
    "parse_mappings",
]

logger = logging.getLogger(__name__)

MADV_COLLAPSE = 25  # <asm-generic/mman-common.h>, Linux 6.1
THP_SETTINGS = Path("/sys/kernel/mm/transparent_hugepage")
# The smallest new part of a mapping `NewMappings` names: a thread's stack (8 MiB by default) stays as it is
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


@dataclass(frozen=True)
class Mapping:
    """A private, read-write, anonymous mapping of the process, from /proc/self/smaps.

    Args:
        start: its first address.
        end: the address after its last.
        resident: its bytes in memory (Rss).
        no_huge: marked MADV_NOHUGEPAGE (VmFlags `nh`).
    """

    start: int
    end: int
    resident: int
    no_huge: bool


class NewMappings:
    """The private anonymous memory mapped from now until `advise`, moved into huge pages then.

    For memory a library allocates and keeps without handing it out: oneDNN Graph's packed copies of a
    program's weights, which PyTorch does not expose (with glibc's default settings each block of 32 MiB
    or more is a mapping of its own). What is named: the parts of mappings that were not mapped at
    creation, each of `MIN_NEW_MAPPING` bytes or more, in whole huge pages, of mappings that are resident
    (Rss within a huge page of their size, so nothing is filled in) and not marked MADV_NOHUGEPAGE. The
    heap, named mappings and threads' stacks (8 MiB by default) are not. Another thread's large block
    allocated meanwhile is advised too, which changes how its memory is mapped, not what it holds; an
    allocator that reuses its address space (jemalloc, tcmalloc) leaves nothing new to name.
    """

    def __init__(self) -> None:
        size = huge_page_size()
        self._madvise = _madvise() if size else None
        self._before: list[tuple[int, int]] = []
        if self._madvise is not None:
            try:
                self._before = [(m.start, m.end) for m in _read_mappings(Path("/proc/self/maps"))]
            except ValueError as err:  # a line not in the format read: advise nothing rather than guess
                logger.warning("could not read this process's mappings (%s): no huge pages for them", err)
                self._madvise = None

    def advise(self) -> int:
        """Ask the kernel to move the new memory into huge pages (best effort, as `advise_huge_pages`).

        Returns:
            How many bytes the kernel took the advice for; 0 where there are no huge pages, or the
            process's mappings could not be read (logged).
        """
        if self._madvise is None:
            return 0
        size = huge_page_size()
        try:
            mappings = _read_mappings(Path("/proc/self/smaps"))
        except (OSError, ValueError) as err:
            logger.warning("could not read this process's mappings (%s): no huge pages for them", err)
            return 0
        parts = [
            part
            for m in mappings
            if not m.no_huge and m.resident + size >= m.end - m.start
            for part in _minus((m.start, m.end), self._before)
            if part[1] - part[0] >= MIN_NEW_MAPPING
        ]
        whole = [_whole_pages(start, end, size) for start, end in parts]
        advised = sum(_advise(self._madvise, start, end - start) for start, end in whole if end > start)
        logger.debug("%d new bytes advised into huge pages", advised)
        return advised


def _read_mappings(path: Path) -> list[Mapping]:
    """The process's private, read-write, anonymous mappings, sorted, from `path` (/proc/self/maps, or
    /proc/self/smaps for their resident bytes and flags)."""
    try:
        text = path.read_text()
    except OSError:
        if path.name == "maps":
            return []
        raise
    return parse_mappings(text)


def parse_mappings(text: str) -> list[Mapping]:
    """The private, read-write, anonymous mappings listed in `text`, sorted by address.

    Args:
        text: the contents of /proc/<pid>/maps or /proc/<pid>/smaps. A mapping with a name (a file, the
            heap, a stack, a `[anon:...]` label) is not anonymous here.

    Returns:
        The mappings; from maps (no Rss, no flags), each counted resident and unmarked.
    """
    found: list[Mapping] = []
    anonymous = False  # whether the lines being read describe a mapping of `found`
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's first line
            perms = fields[1] if len(fields) > 1 else ""
            anonymous = len(fields) == 5 and perms.startswith("rw") and perms.endswith("p") and fields[4] == "0"
            if anonymous:
                low, high = (int(address, 16) for address in fields[0].split("-"))
                found.append(Mapping(low, high, resident=high - low, no_huge=False))
        elif anonymous and fields[0] == "Rss:":
            found[-1] = replace(found[-1], resident=int(fields[1]) * 1024)
        elif anonymous and fields[0] == "VmFlags:":
            found[-1] = replace(found[-1], no_huge="nh" in fields[1:])
    return sorted(found, key=lambda m: m.start)


def _whole_pages(start: int, end: int, size: int) -> tuple[int, int]:
    """The whole pages of `size` bytes inside [start, end), as (first, after last); empty if first >= after."""
    return -(-start // size) * size, end // size * size


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
    """`length` bytes from `start` collapsed into huge pages now; the bytes moved, 0 if refused (a kernel
    before 6.1, no huge page free this moment, a range marked MADV_NOHUGEPAGE, a container's policy)."""
    if madvise(start, length, MADV_COLLAPSE) == 0:
        return length
    code = ctypes.get_errno()
    logger.debug("MADV_COLLAPSE of %d bytes refused: %s", length, errno.errorcode.get(code, code))
    return 0
