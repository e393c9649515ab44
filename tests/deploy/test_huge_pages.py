"""Huge pages for packed weights.

The claims: only whole huge pages inside a tensor's own memory are named to the kernel; the kernel maps
them in huge pages and the values stay; a system set to `never`, a kernel without MADV_COLLAPSE or a
refusal are honoured; every weight an int8 program packs is advised, and lands in huge pages.
"""

import ctypes
import errno
import sys

import pytest
import torch
from torch import nn

import vggnet.deploy.huge_pages as huge_pages
import vggnet.deploy.onednn
from tests.deploy.test_packed import images, small_vgg
from vggnet.deploy.huge_pages import MADV_COLLAPSE, MADV_HUGEPAGE, advise_huge_pages, huge_page_size
from vggnet.deploy.quantize import int8_instructions, quantize

MiB = 1 << 20


class Kernel:
    """madvise as a recorder: each call's (start, length, advice), answered by `answers[advice]` (an errno or 0)."""

    def __init__(self, answers: dict[int, int] | None = None) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.answers = answers or {}

    def __call__(self, start: int, length: int, advice: int) -> int:
        self.calls.append((start, length, advice))
        code = self.answers.get(advice, 0)
        ctypes.set_errno(code)
        return -1 if code else 0


@pytest.fixture
def kernel(monkeypatch):
    recorder = Kernel()
    monkeypatch.setattr(huge_pages, "huge_page_size", lambda: 2 * MiB)
    monkeypatch.setattr(huge_pages, "_madvise", lambda: recorder)
    return recorder


def test_only_whole_huge_pages_inside_each_tensor_are_named(kernel):
    small, large = torch.empty(MiB, dtype=torch.uint8), torch.empty(7 * MiB + 12345, dtype=torch.uint8)
    view = large[3 * MiB :]  # a view: its whole storage is what is named
    advised = advise_huge_pages([small, large, view, torch.empty(8 * MiB, device="meta")])
    assert len(kernel.calls) == 2 and advised == sum(length for _, length, _ in kernel.calls)
    address, nbytes = large.data_ptr(), large.untyped_storage().nbytes()
    for start, length, advice in kernel.calls:
        assert advice == MADV_COLLAPSE
        assert start % (2 * MiB) == 0 and length % (2 * MiB) == 0 and length >= 4 * MiB
        assert address <= start and start + length <= address + nbytes


def test_a_packed_onednn_weight_is_named_by_its_own_buffer(kernel):
    weight = torch.randint(-127, 128, (512, 512, 3, 3), dtype=torch.int8)  # 2.25 MiB packed
    packed = torch.ops.onednn.qconv_prepack(weight, torch.ones(512), 0.1, 0, [1, 1], [1, 1], [1, 1], 1, [1, 512, 8, 8])
    advise_huge_pages([packed])
    address, nbytes = torch.ops.mkldnn.data_ptr(packed), torch.ops.mkldnn._nbytes(packed)
    assert nbytes >= weight.numel()
    for start, length, _ in kernel.calls:
        assert address <= start and start + length <= address + nbytes


def test_without_collapse_the_kernel_is_asked_to_collapse_later_and_a_refusal_costs_nothing(kernel):
    tensor = torch.empty(6 * MiB, dtype=torch.uint8)
    kernel.answers = {MADV_COLLAPSE: errno.EINVAL}  # a kernel before 6.1
    assert advise_huge_pages([tensor]) >= 2 * MiB
    assert [advice for *_, advice in kernel.calls] == [MADV_COLLAPSE, MADV_HUGEPAGE]
    kernel.calls.clear()
    kernel.answers = {MADV_COLLAPSE: errno.EAGAIN, MADV_HUGEPAGE: errno.EPERM}
    assert advise_huge_pages([tensor]) == 0
    assert [advice for *_, advice in kernel.calls] == [MADV_COLLAPSE, MADV_HUGEPAGE]


@pytest.mark.parametrize(
    ("enabled", "size"),
    [("always [madvise] never\n", 2 * MiB), ("[always] madvise never\n", 2 * MiB), ("always madvise [never]\n", 0)],
)
def test_the_systems_setting_decides(monkeypatch, tmp_path, enabled, size):
    (tmp_path / "enabled").write_text(enabled)
    (tmp_path / "hpage_pmd_size").write_text(f"{2 * MiB}\n")
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
            if "-" in head and not head.endswith(":"):
                low, high = (int(part, 16) for part in head.split("-"))
                overlaps = low < end and start < high
            elif overlaps and head == "AnonHugePages:":
                total += int(line.split()[1]) * 1024
    return total


def collapses_here() -> bool:
    if not huge_page_size():
        return False
    probe = torch.ones(8 * MiB, dtype=torch.uint8)
    madvise = huge_pages._madvise()
    start = -(-probe.data_ptr() // huge_page_size()) * huge_page_size()
    return madvise is not None and madvise(start, huge_page_size(), MADV_COLLAPSE) == 0


needs_collapse = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not collapses_here(),
    reason="needs Linux 6.1+ with transparent huge pages not `never`",
)


@needs_collapse
def test_the_kernel_maps_the_tensor_in_huge_pages_and_its_values_stay():
    tensor = torch.randint(0, 256, (9 * MiB,), dtype=torch.uint8)
    before, kept = anon_huge_bytes(tensor.data_ptr(), tensor.data_ptr() + tensor.numel()), tensor.clone()
    advised = advise_huge_pages([tensor])
    after = anon_huge_bytes(tensor.data_ptr(), tensor.data_ptr() + tensor.numel())
    assert advised >= 6 * MiB and after - before >= advised - 2 * MiB  # a page may have been huge already
    assert torch.equal(tensor, kept)


int8 = pytest.mark.skipif(int8_instructions() is None, reason="oneDNN has no int8 kernels on this CPU")


def wide_head() -> nn.Module:
    """The small VGG with the 7x7 pool and a 25088 x 512 first layer: 12.25 MiB of int8 weights to map."""
    net = small_vgg(head="vgg")
    net.classifier = nn.Sequential(nn.Linear(25088, 512), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(512, 3))
    return net.eval()


@int8
def test_every_weight_an_int8_program_packs_is_advised_and_mapped_in_huge_pages(monkeypatch):
    pytest.importorskip("torchao", reason="int8 needs torchao")
    advised: list[torch.Tensor] = []

    def spy(tensors):
        tensors = list(tensors)
        advised.extend(tensors)
        return advise_huge_pages(tensors)

    monkeypatch.setattr(vggnet.deploy.onednn, "advise_huge_pages", spy)
    model = quantize(wide_head(), images(4, 32), fallback=False)
    with torch.inference_mode():
        model(images(1, 32))
    programs = model.program.programs.values()
    packed = [t for program in programs for name, t in program.named_buffers() if name.startswith("_packed_")]
    assert packed and {id(t) for t in packed} <= {id(t) for t in advised}
    if collapses_here():
        fc6 = max(advised, key=torch.ops.mkldnn._nbytes)
        address, nbytes = torch.ops.mkldnn.data_ptr(fc6), torch.ops.mkldnn._nbytes(fc6)
        assert nbytes >= 25088 * 512
        assert anon_huge_bytes(address, address + nbytes) >= nbytes - 4 * MiB
