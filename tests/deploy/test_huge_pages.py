"""Huge pages for packed weights.

The claims: only whole huge pages inside a tensor's own memory are named to the kernel, each range once;
the kernel maps them in huge pages and the values stay; a system set to `never`, a kernel without
MADV_COLLAPSE, a range marked MADV_NOHUGEPAGE and a refusal are honoured; tensors without dense memory
are skipped; every weight an int8 program packs is advised, and lands in huge pages.
"""

import contextlib
import ctypes
import errno
import mmap
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import vggnet.deploy.huge_pages as huge_pages
import vggnet.deploy.onednn
from tests.deploy.test_packed import images, small_vgg
from vggnet.deploy.huge_pages import (
    MADV_COLLAPSE,
    advise_huge_pages,
    huge_page_size,
)
from vggnet.deploy.quantize import int8_instructions, quantize

MiB = 1 << 20
int8 = pytest.mark.skipif(int8_instructions() is None, reason="oneDNN has no int8 kernels on this CPU")


class Kernel:
    """madvise as a recorder: each call's (start, length, advice), answered by `answers[advice]` (an errno,
    0 for success), or by the real madvise where `real` is given."""

    def __init__(self, answers: dict[int, int] | None = None, real=None) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.answers = answers or {}
        self.real = real
        self.succeeded: list[int] = []
        self.errors: list[int] = []  # the errno of each refused call
        self.results: list[int] = []  # each call's return value, in order

    def __call__(self, start: int, length: int, advice: int) -> int:
        self.calls.append((start, length, advice))
        if self.real is not None:
            result = self.real(start, length, advice)
        else:
            ctypes.set_errno(self.answers.get(advice, 0))
            result = -1 if self.answers.get(advice, 0) else 0
        self.results.append(result)
        if result == 0:
            self.succeeded.append(advice)
        else:
            self.errors.append(ctypes.get_errno())
        return result


@pytest.fixture
def kernel(monkeypatch):
    recorder = Kernel()
    monkeypatch.setattr(huge_pages, "huge_page_size", lambda: 2 * MiB)
    monkeypatch.setattr(huge_pages, "_madvise", lambda: recorder)
    return recorder


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_only_whole_huge_pages_inside_each_tensor_are_named_once(kernel):
    small, large = torch.empty(MiB, dtype=torch.uint8), torch.empty(7 * MiB + 12345, dtype=torch.uint8)
    view = large[3 * MiB :]  # a view names its whole storage: the same range as `large`, named once
    others = [torch.empty(8 * MiB, device="meta"), torch.empty(0), torch.eye(2048).to_sparse_csr()]
    advised = advise_huge_pages([small, large, view, *others])
    assert len(kernel.calls) == 1 and advised == kernel.calls[0][1]
    address, nbytes = large.data_ptr(), large.untyped_storage().nbytes()
    start, length, advice = kernel.calls[0]
    assert advice == MADV_COLLAPSE
    assert start % (2 * MiB) == 0 and length % (2 * MiB) == 0 and length >= 4 * MiB
    assert address <= start and start + length <= address + nbytes


@int8
def test_a_packed_onednn_weight_is_named_by_its_own_buffer(kernel):
    weight = torch.randint(-127, 128, (1024, 512, 3, 3), dtype=torch.int8)  # 4.5 MiB: a whole page at least
    packed = torch.ops.onednn.qconv_prepack(weight, torch.ones(1024), 0.1, 0, [1, 1], [1, 1], [1, 1], 1, [1, 512, 8, 8])
    advise_huge_pages([packed])
    address, nbytes = torch.ops.mkldnn.data_ptr(packed), torch.ops.mkldnn._nbytes(packed)
    assert nbytes >= weight.numel() and len(kernel.calls) == 1
    start, length, _ = kernel.calls[0]
    assert address <= start and start + length <= address + nbytes


@pytest.mark.parametrize("code", [errno.EINVAL, errno.EAGAIN, errno.ENOMEM, errno.EPERM])
def test_a_refusal_costs_the_speed_up_and_nothing_else_is_asked(kernel, code):
    # EINVAL: a kernel before 6.1, or a range marked MADV_NOHUGEPAGE (MADV_HUGEPAGE would clear the mark);
    # EAGAIN/ENOMEM: no huge page free now (MADV_HUGEPAGE would leave the move to khugepaged, during calls)
    kernel.answers = {MADV_COLLAPSE: code}
    assert advise_huge_pages([torch.empty(6 * MiB, dtype=torch.uint8)]) == 0
    assert [advice for *_, advice in kernel.calls] == [MADV_COLLAPSE]


def test_no_huge_pages_means_no_call(monkeypatch):
    def refuse():
        raise AssertionError("madvise looked up where there are no huge pages")

    monkeypatch.setattr(huge_pages, "huge_page_size", lambda: 0)
    monkeypatch.setattr(huge_pages, "_madvise", refuse)
    assert advise_huge_pages([torch.empty(8 * MiB, dtype=torch.uint8)]) == 0


@pytest.mark.parametrize(
    ("enabled", "per_size", "size"),
    [
        ("always [madvise] never\n", None, 2 * MiB),
        ("[always] madvise never\n", None, 2 * MiB),
        ("always madvise [never]\n", None, 0),
        ("always [madvise] never\n", "always inherit madvise [never]\n", 0),
        ("always madvise [never]\n", "always inherit [madvise] never\n", 2 * MiB),
        ("always [madvise] never\n", "always [inherit] madvise never\n", 2 * MiB),
    ],
)
def test_the_systems_setting_decides(monkeypatch, tmp_path, enabled, per_size, size):
    (tmp_path / "enabled").write_text(enabled)
    (tmp_path / "hpage_pmd_size").write_text(f"{2 * MiB}\n")
    if per_size is not None:
        (tmp_path / "hugepages-2048kB").mkdir()
        (tmp_path / "hugepages-2048kB" / "enabled").write_text(per_size)
    monkeypatch.setattr(huge_pages, "THP_SETTINGS", tmp_path)
    monkeypatch.setattr(sys, "platform", "linux")
    huge_page_size.cache_clear()
    try:
        assert huge_page_size() == size
        (tmp_path / "enabled").unlink()
        huge_page_size.cache_clear()
        assert huge_page_size() == 0  # no transparent huge pages in this kernel
    finally:
        huge_page_size.cache_clear()


def anon_huge_bytes(start: int, end: int) -> int:
    """The bytes in huge pages of the mappings that overlap [start, end), from /proc/self/smaps."""
    total, overlaps = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):  # a mapping's first line: low-high perms ...
                low, high = (int(part, 16) for part in head.split("-"))
                overlaps = low < end and start < high
            elif overlaps and head == "AnonHugePages:":
                total += int(line.split()[1]) * 1024
    return total


@pytest.fixture
def fresh_small_pages():
    """A 10 MiB private anonymous mapping of its own, filled while marked MADV_NOHUGEPAGE (so its pages are small
    whatever the system's setting), then unmarked, as a uint8 tensor over it."""
    if not sys.platform.startswith("linux") or not huge_page_size() or huge_page_size() > 4 * MiB:
        pytest.skip("needs Linux with 2 MiB transparent huge pages not `never`")
    region = mmap.mmap(-1, 10 * MiB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # not shmem
    region.madvise(mmap.MADV_NOHUGEPAGE)
    tensor = torch.frombuffer(region, dtype=torch.uint8)
    tensor.copy_(torch.randint(0, 256, (10 * MiB,), dtype=torch.uint8))
    region.madvise(mmap.MADV_HUGEPAGE)
    yield tensor
    del tensor
    with contextlib.suppress(BufferError):  # pytest still holds the tensor: the mapping goes with it
        region.close()


def test_the_kernel_maps_the_tensor_in_huge_pages_and_its_values_stay(fresh_small_pages, monkeypatch):
    tensor, kept = fresh_small_pages, fresh_small_pages.clone()
    real = huge_pages._madvise()
    assert real is not None
    recorder = Kernel(real=real)
    monkeypatch.setattr(huge_pages, "_madvise", lambda: recorder)
    span = (tensor.data_ptr(), tensor.data_ptr() + tensor.numel())
    advised = advise_huge_pages([tensor])
    if MADV_COLLAPSE not in recorder.succeeded and set(recorder.errors) & {errno.EAGAIN, errno.ENOMEM, errno.EINVAL}:
        pytest.skip(f"the kernel did not collapse now ({recorder.errors}): no huge page free, or before Linux 6.1")
    assert advised >= 8 * MiB
    assert anon_huge_bytes(*span) >= advised
    assert torch.equal(tensor, kept)


def wide_head() -> nn.Module:
    """The small VGG with the 7x7 pool and a 25088 x 512 first layer: 12.25 MiB of int8 weights to map."""
    net = small_vgg(head="vgg")
    net.classifier = nn.Sequential(nn.Linear(25088, 512), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(512, 3))
    return net.eval()


@int8
def test_every_weight_an_int8_program_packs_is_advised_and_mapped_in_huge_pages(monkeypatch):
    pytest.importorskip("torchao", reason="int8 needs torchao")
    advised: list[torch.Tensor] = []
    collapsed: list[int] = []

    def spy(tensors):
        tensors = list(tensors)
        advised.extend(tensors)
        real = huge_pages._madvise()
        recorder = Kernel(real=real) if real is not None else None
        with monkeypatch.context() as patch:
            patch.setattr(huge_pages, "_madvise", lambda: recorder)
            bytes_advised = advise_huge_pages(tensors)
        if recorder is not None and MADV_COLLAPSE in recorder.succeeded:
            collapsed.append(bytes_advised)
        return bytes_advised

    monkeypatch.setattr(vggnet.deploy.onednn, "advise_huge_pages", spy)
    model = quantize(wide_head(), images(4, 32), fallback=False)
    with torch.inference_mode():
        model(images(1, 32))
    programs = model.program.programs.values()
    packed = [t for program in programs for name, t in program.named_buffers() if name.startswith("_packed_")]
    assert packed and {id(t) for t in packed} <= {id(t) for t in advised}
    fc6 = max(advised, key=torch.ops.mkldnn._nbytes)
    address, nbytes = torch.ops.mkldnn.data_ptr(fc6), torch.ops.mkldnn._nbytes(fc6)
    assert nbytes >= 25088 * 512
    if max(collapsed, default=0) >= 8 * MiB:  # fc6's pages were collapsed when it was packed
        assert anon_huge_bytes(address, address + nbytes) >= nbytes - 4 * MiB


# --- memory mapped while a block runs (oneDNN Graph's packed copies) ---------------------------------


def test_minus_keeps_only_what_was_not_taken():
    taken = [(10, 20), (30, 40)]
    assert huge_pages._minus((0, 50), taken) == [(0, 10), (20, 30), (40, 50)]
    assert huge_pages._minus((12, 18), taken) == []
    assert huge_pages._minus((15, 35), taken) == [(20, 30)]
    assert huge_pages._minus((40, 45), taken) == [(40, 45)]


def mapping(start_mib: float, end_mib: float, resident_mib: float | None = None, no_huge: bool = False):
    start, end = int(start_mib * MiB), int(end_mib * MiB)
    resident = end - start if resident_mib is None else int(resident_mib * MiB)
    return huge_pages.Mapping(start, end, resident, no_huge)


def test_only_large_new_resident_parts_of_mappings_are_named(kernel, monkeypatch):
    before = [mapping(100, 140), mapping(500, 540)]
    after = [
        mapping(100, 180),  # an old mapping the kernel merged a new 40 MiB block into: the new part
        mapping(300, 308),  # a thread's stack
        mapping(401 + 1 / 256, 437),  # an unaligned block: its whole huge pages
        mapping(496, 540),  # a 4 MiB piece merged into an old mapping: too small
        mapping(600, 700, resident_mib=10),  # mostly unpopulated: collapsing would fill it in
        mapping(800, 900, no_huge=True),  # marked MADV_NOHUGEPAGE
    ]
    reads = iter([before, after])
    monkeypatch.setattr(huge_pages, "_read_mappings", lambda path: next(reads))
    new = huge_pages.NewMappings()
    advised = new.advise()
    assert sorted((start, start + length) for start, length, _ in kernel.calls) == [
        (140 * MiB, 180 * MiB),
        (402 * MiB, 436 * MiB),
    ]
    assert advised == 40 * MiB + 34 * MiB


def test_no_huge_pages_means_the_maps_are_not_read(monkeypatch):
    def refuse(path):
        raise AssertionError("maps read where there are no huge pages")

    monkeypatch.setattr(huge_pages, "huge_page_size", lambda: 0)
    monkeypatch.setattr(huge_pages, "_read_mappings", refuse)
    assert huge_pages.NewMappings().advise() == 0


def test_maps_that_cannot_be_parsed_mean_nothing_is_advised(kernel, monkeypatch, caplog):
    monkeypatch.setattr(huge_pages, "_read_mappings", lambda path: huge_pages.parse_mappings("zz-10 rw-p 0 00:00 0\n"))
    with caplog.at_level("WARNING", logger="vggnet.deploy.huge_pages"):
        new = huge_pages.NewMappings()
    assert new.advise() == 0 and kernel.calls == [] and "could not read" in caplog.text


def test_unreadable_mappings_cost_the_speed_up_not_the_program(kernel, monkeypatch, caplog):
    reads = iter([[], OSError("permission denied")])

    def read(path):
        found = next(reads)
        if isinstance(found, Exception):
            raise found
        return found

    monkeypatch.setattr(huge_pages, "_read_mappings", read)
    new = huge_pages.NewMappings()
    with caplog.at_level("WARNING", logger="vggnet.deploy.huge_pages"):
        assert new.advise() == 0
    assert kernel.calls == [] and "could not read this process's mappings" in caplog.text


SMAPS = """\
55d0a0000000-55d0a4000000 rw-p 00000000 00:00 0                          [heap]
Size:              65536 kB
Rss:               65536 kB
VmFlags: rd wr mr mw me ac sd
7f0000000000-7f0004000000 rw-p 00000000 00:00 0
Size:              65536 kB
Rss:               65532 kB
VmFlags: rd wr mr mw me ac sd
7f0010000000-7f0014000000 rw-p 00000000 00:00 0
Size:              65536 kB
Rss:                   0 kB
VmFlags: rd wr mr mw me nh sd
7f0020000000-7f0024000000 rw-p 00000000 00:00 0                          [anon:glibc: malloc]
Rss:               65536 kB
7f0030000000-7f0034000000 rw-p 00000000 08:01 1234                       /tmp/a file (deleted)
Rss:               65536 kB
7f0040000000-7f0044000000 ---p 00000000 00:00 0
Rss:                   0 kB
7f0050000000-7f0054000000 rw-s 00000000 00:01 77                         /dev/zero (deleted)
7f0060000000-7f0064000000 rwxp 00000000 00:00 0

7ffd00000000-7ffd00800000 rw-p 00000000 00:00 0                          [stack]
"""


def test_the_parser_keeps_private_anonymous_read_write_mappings_with_their_rss_and_flags():
    found = huge_pages.parse_mappings(SMAPS)
    assert found == [
        huge_pages.Mapping(0x7F0000000000, 0x7F0004000000, 65532 * 1024, False),
        huge_pages.Mapping(0x7F0010000000, 0x7F0014000000, 0, True),
        huge_pages.Mapping(0x7F0060000000, 0x7F0064000000, 64 * MiB, False),  # from maps: no Rss line
    ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_the_maps_list_a_private_anonymous_mapping_and_not_a_file(tmp_path):
    region = mmap.mmap(-1, 20 * MiB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    (tmp_path / "f").write_bytes(b"\0" * (4 * MiB))
    with open(tmp_path / "f", "r+b") as f:
        mapped_file = mmap.mmap(f.fileno(), 4 * MiB)
        address = ctypes.addressof(ctypes.c_char.from_buffer(region))
        file_address = ctypes.addressof(ctypes.c_char.from_buffer(mapped_file))
        for path in ("/proc/self/maps", "/proc/self/smaps"):
            ranges = [(m.start, m.end) for m in huge_pages._read_mappings(Path(path))]
            assert any(low <= address and address + 20 * MiB <= high for low, high in ranges)
            assert not any(low <= file_address < high for low, high in ranges)
            assert ranges == sorted(ranges)
        mapped_file.close()
    region.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_memory_mapped_meanwhile_gets_huge_pages_and_nothing_older_is_named(monkeypatch):
    real = huge_pages._madvise()
    if real is None or not huge_page_size():
        pytest.skip("needs Linux with transparent huge pages not `never`")
    recorder = Kernel(real=real)
    monkeypatch.setattr(huge_pages, "_madvise", lambda: recorder)
    older = mmap.mmap(-1, 40 * MiB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    older.write(b"\1" * (40 * MiB))
    older_address = ctypes.addressof(ctypes.c_char.from_buffer(older))
    new = huge_pages.NewMappings()
    region = mmap.mmap(-1, 40 * MiB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.write(bytes(range(256)) * (40 * MiB // 256))
    advised = new.advise()
    address = ctypes.addressof(ctypes.c_char.from_buffer(region))
    for start, length, _ in recorder.calls:
        assert not (start < older_address + 40 * MiB and older_address < start + length)
    own = [i for i, (start, _, advice) in enumerate(recorder.calls) if address <= start < address + 40 * MiB]
    assert own, recorder.calls
    if recorder.calls[own[0]][2] == MADV_COLLAPSE and recorder.results[own[0]] == 0:  # collapsed now
        assert advised >= 38 * MiB and anon_huge_bytes(address, address + 40 * MiB) >= 38 * MiB
    assert region[: 256 * 4] == bytes(range(256)) * 4
    region.close()
    older.close()
