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

import pytest
import torch
from torch import nn

import vggnet.deploy.huge_pages as huge_pages
import vggnet.deploy.onednn
from tests.deploy.test_packed import images, small_vgg
from vggnet.deploy.huge_pages import MADV_COLLAPSE, advise_huge_pages, huge_page_size
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

    def __call__(self, start: int, length: int, advice: int) -> int:
        self.calls.append((start, length, advice))
        if self.real is not None:
            result = self.real(start, length, advice)
        else:
            ctypes.set_errno(self.answers.get(advice, 0))
            result = -1 if self.answers.get(advice, 0) else 0
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
