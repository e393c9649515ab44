"""int8: agreement with float32 on real photos, calibration inputs, the float32 fallback, the errors.

Tolerance (README, "Speed"): on the photos in tests/photos, every image keeps float32's top-1 class
and its logits stay at cosine >= 0.995 to float32's (measured: 0.9988 or more on AVX2 with 7-bit
activations). The int8 tests run wherever oneDNN has int8 kernels (`int8_instructions()`: AMX,
AVX-512 VNNI, AVX-VNNI or AVX2), so also on this project's AVX2 machines, only slower there.
"""

import gc
import itertools
import logging
import math
import shutil
import sys
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vggnet
import vggnet.deploy.quantize
from tests.helpers import HEAD_KINDS, PHOTOS, spawn_python
from vggnet import vgg11
from vggnet.data.decode import load_image
from vggnet.data.transforms import ImageClassification
from vggnet.deploy.inference import InferenceVGG, optimize_for_inference
from vggnet.deploy.quantize import (
    GRAPH_BATCHES,
    INT8_INSTRUCTIONS,
    Int8VGG,
    QuantizeReport,
    int8_instructions,
    quantize,
)

SIDE = 64
PRESET = ImageClassification(crop_size=SIDE, resize_size=73)
MIN_COSINE = 0.995
INT8_HERE = int8_instructions() is not None


def photos() -> torch.Tensor:
    return torch.stack([PRESET(load_image(p)) for p in sorted(PHOTOS.glob("*.[jp][pn]g"))])  # (4, 3, 64, 64)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return vgg11(num_classes=10).eval()


@pytest.fixture
def no_int8(monkeypatch):
    """A CPU on which oneDNN has no int8 kernels (the one detection function, forced)."""
    monkeypatch.setattr(vggnet.deploy.quantize, "int8_instructions", lambda: None)


def class_folders(root: Path) -> Path:
    """The photos as two classes: a/ (camera, chelsea) and b/ (coffee, rocket)."""
    files = sorted(PHOTOS.glob("*.[jp][pn]g"))
    for label, chosen in (("a", files[:2]), ("b", files[2:])):
        (root / label).mkdir(parents=True)
        for f in chosen:
            shutil.copy(f, root / label / f.name)
    return root


# --- detection ---------------------------------------------------------------------------------------


def test_int8_instructions_names_the_fastest_the_cpu_has(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    found = int8_instructions()
    capabilities = torch.cpu.get_capabilities()
    assert found is None or capabilities[found]
    if found is not None:  # nothing faster is there
        assert not any(capabilities.get(name) for name in INT8_INSTRUCTIONS[: INT8_INSTRUCTIONS.index(found)])
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_vnni": True, "avx_vnni": True})
    assert int8_instructions() == (
        "avx512_vnni" if vggnet.deploy.quantize.platform.machine() in ("x86_64", "AMD64") else None
    )
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": False, "avx": True})
    assert int8_instructions() is None
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "amx_int8": True})
    monkeypatch.setattr(vggnet.deploy.quantize.platform, "machine", lambda: "aarch64")
    assert int8_instructions() is None  # oneDNN's x86 int8 kernels only


@pytest.mark.parametrize(
    ("cap", "expected"),
    [
        ("AVX512_CORE_VNNI", "avx512_vnni"),  # AMX switched off: an AVX-512 VNNI CPU
        ("avx2_vnni", "avx_vnni"),
        ("AVX512_CORE", "avx2"),  # AVX-512 without VNNI: 16-bit sums, so 7-bit activations
        ("AVX2", "avx2"),
        ("AVX", None),  # no int8 kernels worth running: the float32 fallback
        ("AVX512_CORE_AMX", "amx_int8"),  # caps that allow AMX cap nothing
        ("ALL", "amx_int8"),
        ("nonsense", "amx_int8"),  # a value vggnet does not know: no cap assumed
    ],
)
def test_int8_instructions_honours_onednns_isa_cap(monkeypatch, cap, expected):
    """oneDNN runs below the CPU's best under ONEDNN_MAX_CPU_ISA; the report and reduce_range's default follow it."""
    everything = dict.fromkeys(INT8_INSTRUCTIONS, True)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: everything)
    monkeypatch.setattr(vggnet.deploy.quantize.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert int8_instructions() == expected
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", cap)  # oneDNN's older name
    assert int8_instructions() == expected


def test_a_cap_leaves_only_what_the_cpu_has_below_it(monkeypatch):
    """AVX2_VNNI on a CPU with AVX-512 VNNI but no AVX-VNNI (Cascade Lake): oneDNN falls back to AVX2."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_vnni": True, "avx2": True})
    monkeypatch.setattr(vggnet.deploy.quantize.platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2_VNNI")
    assert int8_instructions() == "avx2"


# --- the int8 path on real photos ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_photos(module_folders):
    """vgg11 (seeded), quantized on the four photos as class folders and checked on them with labels."""
    pytest.importorskip("torchao", reason="int8 needs torchao: pip install 'vggnet[int8]'")
    torch.manual_seed(0)
    net = vgg11(num_classes=2).eval()
    folder = class_folders(module_folders.mktemp("photos"))
    return net, quantize(net, folder, held_out=folder, preset=PRESET, fallback=False)


@pytest.mark.slow
@pytest.mark.skipif(not INT8_HERE, reason="oneDNN has no int8 kernels on this CPU (needs x86 with AVX2 or better)")
def test_int8_keeps_float32_top1_and_logits_on_real_photos(int8_photos):
    net, quantized = int8_photos
    x = photos()
    with torch.inference_mode():
        expected = net(x)
        got = torch.cat([quantized(image[None]) for image in x])  # the packed batch: 1
    assert got.dtype == torch.float32 and got.shape == (4, 2)
    cosine = F.cosine_similarity(got, expected, dim=1)
    assert (cosine >= MIN_COSINE).all(), cosine
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert not torch.equal(got, expected)  # int8 arithmetic, not the float32 model
    # The report says the same, measured by quantize itself.
    report = quantized.report
    assert isinstance(report, QuantizeReport) and report.int8 and quantized.int8 and report.fallback_reason is None
    assert report.instructions == int8_instructions() and report.cpu_capability
    assert report.reduce_range == (report.instructions == "avx2")
    assert report.calibration_images == 4 and report.evaluated_images == 4 and report.evaluated_on == "held_out"
    assert report.image_size == (SIDE, SIDE) and report.batch_size == 1
    assert report.top1_agreement == 100.0 and report.min_cosine >= MIN_COSINE
    assert report.cosine == pytest.approx(cosine.mean().item(), abs=1e-4)
    labels = torch.tensor([0, 0, 1, 1])  # a/ then b/
    assert report.accuracy_fp32 == pytest.approx(100 * (expected.argmax(1) == labels).float().mean().item())
    assert report.accuracy_int8 == report.accuracy_fp32  # the same top-1 on every photo
    assert report.quantize_s > 0 and report.compile_s > 0


@pytest.mark.slow
@pytest.mark.skipif(not INT8_HERE, reason="oneDNN has no int8 kernels on this CPU (needs x86 with AVX2 or better)")
def test_int8_module_is_smaller_and_refuses_what_it_cannot_run(int8_photos):
    net, quantized = int8_photos
    fp32_bytes = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    int8_bytes = sum(t.numel() * t.element_size() for t in quantized.state_dict().values())
    assert int8_bytes < 0.26 * fp32_bytes  # int8 weights; the float32 ones are not kept
    with pytest.raises(ValueError, match="exported for 64x64 images, got 96x96"):
        quantized(torch.zeros(1, 3, 96, 96))
    with pytest.raises(ValueError, match="floating-point"):
        quantized(torch.zeros(1, 3, SIDE, SIDE, dtype=torch.uint8))
    with pytest.raises(ValueError, match="3 input channels"):
        quantized(torch.zeros(1, 1, SIDE, SIDE))
    with pytest.raises(RuntimeError, match="inference-only"):
        quantized.train()


@pytest.mark.slow
@pytest.mark.skipif(not INT8_HERE, reason="oneDNN has no int8 kernels on this CPU (needs x86 with AVX2 or better)")
def test_the_float32_model_can_be_freed_once_quantized():
    """torchao's and torch.ao's device lookups are functools.cache'd on the graphs they see: without
    quantize emptying them, every call kept the float32 weights (528 MB for vgg16) for good."""
    torch.manual_seed(0)
    net = vgg11(num_classes=2).eval()
    x = torch.randn(4, 3, SIDE, SIDE)
    quantized = quantize(net, x[:2], held_out=x[2:], fallback=False)
    fc6 = weakref.ref(net.classifier[0].weight)
    del net
    gc.collect()
    assert fc6() is None
    with torch.inference_mode():
        assert quantized(x[:1]).shape == (1, 2)  # it runs on its int8 copies


# --- the fallback --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fallback_returns_the_float32_model_with_the_reason(model, no_int8, caplog):
    x = photos()
    with caplog.at_level(logging.WARNING, logger="vggnet.deploy.quantize"):
        result = quantize(model, x[:2], held_out=x[2:])
    assert isinstance(result, Int8VGG) and not result.int8
    assert isinstance(result.program, InferenceVGG)
    assert "no fast int8 kernels" in result.fallback_reason and "float32" in result.fallback_reason
    assert any("falls back to float32" in r.getMessage() for r in caplog.records)
    report = result.report
    assert not report.int8 and report.fallback_reason == result.fallback_reason and report.instructions is None
    assert report.top1_agreement == 100.0 and report.cosine == pytest.approx(1.0, abs=1e-6)
    assert report.calibration_images == 2 and report.evaluated_images == 2 and report.evaluated_on == "held_out"
    assert report.quantize_s == 0.0
    with torch.inference_mode():
        torch.testing.assert_close(result(x), model(x), rtol=1e-4, atol=1e-5)
        # the float32 model takes any size, as optimize_for_inference's does
        assert result(torch.zeros(2, 3, 96, 96)).shape == (2, 10)


@pytest.mark.slow
def test_fallback_false_raises_with_the_reason(model, no_int8):
    with pytest.raises(RuntimeError, match="cannot quantize to int8 here: oneDNN has no fast int8 kernels"):
        quantize(model, photos(), fallback=False)


@pytest.mark.slow
def test_without_torchao_the_error_says_how_to_install_it(model, monkeypatch):
    monkeypatch.setattr(vggnet.deploy.quantize, "int8_instructions", lambda: "avx2")
    monkeypatch.setitem(sys.modules, "torchao.quantization.pt2e.quantize_pt2e", None)  # import fails
    with pytest.raises(ImportError, match=r"pip install 'vggnet\[int8\]'"):
        quantize(model, photos())


def test_optimize_for_inference_sends_int8_to_quantize(model):
    with pytest.raises(ValueError, match=r"vggnet.deploy.quantize.quantize\(model, calibration\)"):
        optimize_for_inference(model, dtype=torch.int8)


# --- calibration and evaluation images (through the fallback, which needs no compilation) ------------


@pytest.mark.slow
def test_every_kind_of_images_gives_the_same_report(model, no_int8, tmp_path):
    x = photos()
    labels = torch.tensor([0, 0, 1, 1])
    folder = class_folders(tmp_path / "classes")
    flat = tmp_path / "flat"
    shutil.copytree(PHOTOS, flat, ignore=shutil.ignore_patterns("*.md"))
    kinds = {
        "tensor": x,
        "batches": [x[:3], x[3:]],
        "pairs": [(x[:3], labels[:3]), (x[3:], labels[3:])],
        "class folders": folder,
        "flat folder": str(flat),
    }
    with torch.inference_mode():
        fp32_acc = 100 * (model(x).argmax(1) == labels).float().mean().item()
    for name, source in kinds.items():
        report = quantize(model, source, held_out=source, preset=PRESET).report
        assert report.calibration_images == 4 and report.evaluated_images == 4, name
        labelled = name in ("pairs", "class folders")
        assert (report.accuracy_fp32 is not None) == labelled, name
        if labelled:
            assert report.accuracy_fp32 == pytest.approx(fp32_acc) == report.accuracy_int8, name
    # without held-out images the calibration images are the evaluation set, and the report says so
    assert quantize(model, x).report.evaluated_on == "calibration"


@pytest.mark.parametrize(
    ("source", "error", "match"),
    [
        (torch.zeros(2, 1, SIDE, SIDE), ValueError, "3 input channels"),
        (torch.zeros(2, 3, 16, 16), ValueError, "at least 32x32"),
        (torch.zeros(2, 3, SIDE, SIDE, dtype=torch.uint8), ValueError, "preprocessed float images"),
        ([], ValueError, "no calibration images"),
        ([1, 2], TypeError, "image tensors or \\(images, labels\\) pairs, got int"),
        (3.5, TypeError, "tensor, an iterable of batches or a folder, got float"),
        ("/nonexistent/calibration", FileNotFoundError, "no such folder"),
    ],
)
@pytest.mark.slow
def test_bad_calibration_images_are_named(model, no_int8, source, error, match):
    with pytest.raises(error, match=match):
        quantize(model, source)


@pytest.mark.slow
def test_an_empty_folder_is_refused(model, no_int8, tmp_path):
    with pytest.raises(ValueError, match="no images"):
        quantize(model, tmp_path)


@pytest.mark.slow
def test_quantize_leaves_the_model_as_it_was(no_int8):
    torch.manual_seed(0)
    net = vgg11(num_classes=10).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    quantize(net, photos()[:2])
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.slow
def test_a_folder_is_read_with_the_preset_of_the_checkpoint_the_model_came_from(no_int8, tmp_path):
    torch.manual_seed(0)
    mine = vggnet.vgg11_bn(head="gap", num_classes=2).eval()
    own = ImageClassification(crop_size=48, resize_size=48, mean=[0.3, 0.3, 0.3], std=[0.2, 0.2, 0.2])
    saved = vggnet.save(mine, tmp_path / "mine.pth", classes=["a", "b"], preset=own)
    folder = class_folders(tmp_path / "classes")
    report = quantize(vggnet.vgg11_bn(weights=saved), folder).report  # no preset= given: the file's
    assert report.image_size == (48, 48) and report.calibration_images == 4
    assert quantize(mine, folder).report.image_size == (224, 224)  # a model from no file: ImageNet's, as before
    with torch.inference_mode():
        expected = mine(torch.stack([own(load_image(p)) for p in sorted(folder.glob("*/*"))])).argmax(1)
    assert report.accuracy_fp32 == pytest.approx(100 * (expected == torch.tensor([0, 0, 1, 1])).float().mean().item())


@pytest.mark.slow
@pytest.mark.skipif(not INT8_HERE, reason="oneDNN has no int8 kernels on this CPU (needs x86 with AVX2 or better)")
def test_new_batch_sizes_pack_at_most_once_more_and_say_nothing(recwarn, caplog):
    """Issue 25: the int8 graph was compiled for one batch size, and every new one compiled again,
    with Inductor's warnings. Issue 27: batches run in pieces of 8, 4, 2 and 1 images, and the weights
    are packed once per piece size (nothing is compiled), so no size is packed twice."""
    torch.manual_seed(0)
    x = torch.randn(15, 3, 32, 32)
    quantized = quantize(vgg11(num_classes=2).eval(), x[:2], fallback=False)  # packed for batch 1
    packed = quantized.program.programs
    assert set(packed) == {(1, 3, 32, 32)}
    recwarn.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        outs = {n: quantized(x[:n]) for n in (1, 3, 8)}  # 3 = 2 + 1, then 8
        assert sorted(shape[0] for shape in packed) == [1, 2, 8]
        programs = dict(packed)
        outs |= {n: quantized(x[:n]) for n in (5, 7, 15, 3)}  # only 5 = 4 + 1 packs (for 4)
    assert sorted(shape[0] for shape in packed) == [1, 2, 4, 8]
    assert all(packed[shape] is program for shape, program in programs.items())  # none packed again
    assert [str(w.message) for w in recwarn] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert {n: tuple(out.shape) for n, out in outs.items()} == {n: (n, 2) for n in (1, 3, 8, 5, 7, 15)}
    torch.testing.assert_close(outs[8][:3], outs[3])  # the same images, whatever pieces they ran in
    torch.testing.assert_close(outs[15][:8], outs[8])
    torch.testing.assert_close(outs[7], outs[8][:7])  # 4 + 2 + 1 against 8


@pytest.mark.slow
@pytest.mark.skipif(not INT8_HERE, reason="oneDNN has no int8 kernels on this CPU (needs x86 with AVX2 or better)")
def test_an_image_that_is_not_finite_gets_nan_logits_the_others_their_own():
    # quantizing turns a NaN or an infinity into a uint8 value: without the mark it would get plausible logits
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    quantized = quantize(vgg11(num_classes=2).eval(), x[:2], fallback=False)
    x[1, 0, 5, 5], x[2, 2, 7, 7], x[3, 1, 0, 0] = math.nan, math.inf, -math.inf
    got = quantized(x)
    assert torch.isnan(got[1:]).all() and torch.equal(got[:1], quantized(x[:1]))


@pytest.mark.parametrize(("n", "pieces"), [(1, [1]), (3, [2, 1]), (8, [8]), (15, [8, 4, 2, 1]), (17, [8, 8, 1])])
def test_batches_run_in_pieces_of_the_packed_sizes(n, pieces):
    stops = list(itertools.accumulate(pieces))
    assert vggnet.deploy.quantize._graph_batches(n) == list(zip([0, *stops[:-1]], stops, strict=True))
    assert stops[-1] == n and set(pieces) <= set(GRAPH_BATCHES)


REORDERS = """
import os, sys, torch
from vggnet import vgg11
from vggnet.deploy.quantize import quantize
torch.manual_seed(0)
x = torch.randn(8, 3, 64, 64)
quantized = quantize(vgg11(num_classes=2).eval(), x[:2], fallback=False)
quantized(x), quantized(x)
sys.stdout.flush()
os.write(1, b"--- warm\\n")
quantized(x)
"""


@pytest.mark.slow
@pytest.mark.skipif(int8_instructions() != "amx_int8", reason="measured on AMX: other CPUs' oneDNN kernels differ")
def test_a_warm_int8_call_reorders_no_weights(monkeypatch):
    """Issue 27: with one dynamic-batch graph, Inductor prepacked the int8 convolution weights for no
    batch in particular and oneDNN reordered them on every call (vgg16 batch 8: 9 reorders, 3x slower)."""
    monkeypatch.setenv("ONEDNN_VERBOSE", "1")
    out, err = spawn_python(REORDERS).communicate(timeout=600)
    assert "--- warm" in out, err[-2000:]
    warm = out.split("--- warm", 1)[1].splitlines()
    assert sum(",exec," in line and ",convolution," in line for line in warm) == 8  # oneDNN's int8 kernels ran
    assert [line for line in warm if ",reorder," in line] == []


# --- every head (issue 25) -------------------------------------------------------------------


INT8_HEAD = """
import ctypes, gc, sys, torch
import torch.nn.functional as F
from tests.deploy.test_quantize import photos
from tests.helpers import head_model
from vggnet.deploy.quantize import quantize
x = photos()[:, :, :32, :32].contiguous()
for kind in sys.argv[1:]:
    net = head_model(kind, arch="vgg11")
    quantized = quantize(net, x, fallback=False)
    with torch.inference_mode():
        expected, got = net(x), quantized(x)
    assert quantized.int8 and got.shape == expected.shape, (kind, got.shape, expected.shape)
    program = quantized.program.programs[tuple(x.shape)]  # 4 images: one piece
    run = quantized.program.runs[tuple(x.shape)]
    assert type(run).__name__ == "ScriptedGraph", (kind, run)  # TorchScript runs it, not FX
    other = x.flip(-1).contiguous(memory_format=torch.channels_last)  # not the input the function was checked on
    with torch.inference_mode():
        assert torch.equal(run(other), program(other)), kind  # FX's bits
    calls = {node.target for node in program.graph.nodes}
    assert not calls & {torch.ops.aten.conv2d.default, torch.ops.aten.linear.default}, (kind, calls)  # all oneDNN's
    cosine = F.cosine_similarity(got.flatten(1), expected.flatten(1), dim=1)
    assert (cosine >= 0.99).all(), (kind, cosine)
    print("ok", kind, flush=True)
    del net, quantized, expected, got  # this kind's model and int8 program go before the next is built
    gc.collect()
    getattr(ctypes.CDLL(None), "malloc_trim", lambda pad: 0)(0)  # glibc hands the freed pages back
"""
# three processes of three kinds: one process per kind spent a third of the matrix starting Python and torch;
# nine kinds in one (a test worker) grew past 17 GB; three, freed between kinds, peaked at 4.6 GB
INT8_GROUPS = [HEAD_KINDS[i : i + 3] for i in range(0, len(HEAD_KINDS), 3)]


@pytest.mark.parametrize("kinds", INT8_GROUPS, ids=["-".join(group) for group in INT8_GROUPS])
@pytest.mark.slow
@pytest.mark.skipif(not INT8_HERE, reason="oneDNN has no int8 kernels on this CPU (needs x86 with AVX2 or better)")
def test_int8_for_every_head(kinds):
    out, err = spawn_python(INT8_HEAD, *kinds).communicate(timeout=600)
    assert out.split() == [word for kind in kinds for word in ("ok", kind)], err[-3000:]
