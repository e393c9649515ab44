"""Exported artifacts against eager PyTorch: ONNX through onnxruntime, pt2 through torch.export.load, TorchScript.

vgg11 at small sizes: the exporters see the same layers for every VGG. The artifacts are also run in a
fresh process where `import vggnet` fails, as a deployment without vggnet would run them.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vggnet
from tests.helpers import HEAD_KINDS, head_model
from vggnet.data.transforms import ImageClassification
from vggnet.deploy.export import AdaptivePoolByMatmul, WithPreset, check_export, export, run_export
from vggnet.errors import EXIT_FAILURE, EXIT_USAGE, OutputPathError, UnsupportedError, exit_code

# (N, C, H, W): several batch sizes, square and not, pool5 maps below, at and above 7 (9x9 overlaps windows).
SIZES = [(1, 3, 64, 64), (3, 3, 96, 128), (2, 3, 224, 224), (1, 3, 65, 300), (2, 3, 288, 288)]
SMALL = [(1, 3, 64, 64), (3, 3, 96, 128), (1, 3, 65, 300)]  # the same cases, cheaper: the 2x9 map has a side > 7
PRESET = ImageClassification(crop_size=64, resize_size=73)
RAW = [(1, 3, 90, 120), (3, 3, 64, 64), (2, 3, 200, 101), (1, 3, 73, 300)]


@pytest.fixture(scope="module")
def model() -> vggnet.VGG:
    torch.manual_seed(0)
    return vggnet.vgg11().eval()


def inputs(sizes: list[tuple[int, int, int, int]], seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) for s in sizes]


def images(sizes: list[tuple[int, int, int, int]], seed: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, s, generator=g, dtype=torch.uint8) for s in sizes]


def run_without_vggnet(code: str) -> str:
    """Run `code` in a fresh interpreter in which `import vggnet` raises ImportError."""
    prelude = "import sys\nsys.modules['vggnet'] = None  # import vggnet -> ImportError\n"
    done = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


# --- pieces -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", [(1, 1), (2, 3), (7, 7), (9, 9), (10, 15), (14, 14), (13, 64)])
def test_matmul_pool_is_the_adaptive_pool(side: tuple[int, int]) -> None:
    x = torch.randn(2, 5, *side)
    torch.testing.assert_close(AdaptivePoolByMatmul(7)(x), F.adaptive_avg_pool2d(x, 7))
    torch.testing.assert_close(AdaptivePoolByMatmul(1)(x), F.adaptive_avg_pool2d(x, 1))  # the gap head's


def test_with_preset_equals_the_preset_then_the_model(model: vggnet.VGG) -> None:
    wrapped = WithPreset(model, crop_size=64, resize_size=73).eval()
    for x in images(RAW):
        with torch.no_grad():
            assert torch.equal(wrapped(x), model(PRESET(x)))


def test_export_refuses_bad_arguments_naming_the_options(model: vggnet.VGG, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="onnx, pt2, torchscript"):
        export(model, tmp_path / "m", "tflite")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 32"):
        export(model, tmp_path / "m.pt2", "pt2", image_size=16)
    with pytest.raises(ValueError, match=r"not TorchScript.*'onnx' or 'pt2'"):
        export(model, tmp_path / "m.ts", "torchscript", include_preset=True)
    with torch.device("meta"):
        empty = vggnet.vgg11()
    with pytest.raises(ValueError, match="meta device"):
        export(empty, tmp_path / "m.pt2", "pt2")
    assert not list(tmp_path.iterdir())


class Tiny(torch.nn.Module):
    """A small network the exporters trace in a moment; `branch` makes it branch on its input's values."""

    def __init__(self, branch: bool = False) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean((2, 3))
        if self.branch and y.sum() > 0:  # data-dependent: torch.export cannot trace it
            return -y
        return y


def test_export_never_writes_through_a_link_and_refuses_what_it_cannot_take(tmp_path: Path) -> None:
    victim = tmp_path / "notes.txt"
    victim.write_text("a text file elsewhere")
    link = tmp_path / "link.pt2"
    link.symlink_to(victim)
    with pytest.raises(OutputPathError, match=r"link.pt2: it is a symbolic link; vggnet never writes through one"):
        export(Tiny(), link, "pt2", image_size=32)
    assert victim.read_text() == "a text file elsewhere"
    (tmp_path / "folder.onnx").mkdir()
    with pytest.raises(OutputPathError, match=r"folder.onnx: it is a folder") as err:
        export(Tiny(), tmp_path / "folder.onnx", "onnx", image_size=32)
    assert exit_code(err.value) == EXIT_USAGE
    out = tmp_path / "model.pt2"  # refused before anything is traced (torch.export's page of text)
    with pytest.raises(ValueError, match=r"dynamic size the example's side .* from 64 to 8192 px .* got 63"):
        export(Tiny(), out, "pt2", dynamic_size=True, image_size=63)
    with pytest.raises(ValueError, match="batch_size must be an integer from 1 to 4096, got 5000"):
        export(Tiny(), out, "pt2", dynamic_batch=False, batch_size=5000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.onnx", "link.pt2", "notes.txt"]


@pytest.mark.slow
def test_an_export_replaces_its_file_whole_and_a_failure_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "model.pt2"
    assert export(Tiny(), out, "pt2", image_size=32) == out
    first = out.read_bytes()
    message = r"could not export the model to .*model.pt2 \(pt2; nothing was written\): "
    with pytest.raises(UnsupportedError, match=message) as err:
        export(Tiny(branch=True), out, "pt2", image_size=32)  # torch.export's page of text, as one line
    assert "\n" not in str(err.value) and exit_code(err.value) == EXIT_FAILURE
    assert out.read_bytes() == first  # the old artifact is intact, no temporary file is left
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt2"]
    export(Tiny(), out, "torchscript", image_size=32)
    assert out.read_bytes() != first and [p.name for p in tmp_path.iterdir()] == ["model.pt2"]


# --- pt2 and TorchScript ------------------------------------------------------------------------------


@pytest.mark.slow
def test_pt2_dynamic_batch_and_size(model: vggnet.VGG, tmp_path: Path) -> None:
    path = export(model, tmp_path / "vgg11.pt2", "pt2", dynamic_size=True, image_size=64)
    assert check_export(path, "pt2", model, inputs(SMALL)) < 1e-5
    x = inputs([(2, 3, 96, 128)])[0]
    torch.save(x, tmp_path / "x.pt")
    out = run_without_vggnet(f"""
        import torch
        program = torch.export.load({str(path)!r})
        x = torch.load({str(tmp_path / "x.pt")!r})
        torch.save(program.module()(x), {str(tmp_path / "y.pt")!r})
    """)
    assert out == ""
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), model(x))


@pytest.mark.slow
def test_pt2_static_size_refuses_other_sizes(model: vggnet.VGG, tmp_path: Path) -> None:
    path = export(model, tmp_path / "vgg11.pt2", "pt2", image_size=64)
    assert check_export(path, "pt2", model, inputs([(1, 3, 64, 64), (4, 3, 64, 64)])) < 1e-5
    with pytest.raises(Exception, match="64"):  # torch.export's guard names the size it was exported for
        run_export(path, "pt2", torch.randn(1, 3, 96, 96))


@pytest.mark.slow
def test_pt2_with_preset_takes_uint8_images_of_any_size(model: vggnet.VGG, tmp_path: Path) -> None:
    path = export(
        model, tmp_path / "p.pt2", "pt2", dynamic_size=True, image_size=90, include_preset=True, preset=PRESET
    )
    wrapped = WithPreset(model, crop_size=64, resize_size=73)
    assert check_export(path, "pt2", wrapped, images(RAW)) < 1e-5


@pytest.mark.slow
def test_torchscript_runs_without_vggnet(model: vggnet.VGG, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = export(model, tmp_path / "vgg11.ts", "torchscript", image_size=64)
    assert "does not script" not in caplog.text  # scripted, not traced: any batch and size
    assert check_export(path, "torchscript", model, inputs([(1, 3, 64, 64), (3, 3, 96, 128)])) < 1e-5
    out = run_without_vggnet(f"""
        import torch
        m = torch.jit.load({str(path)!r})
        print(tuple(m(torch.zeros(2, 3, 64, 64)).shape))
    """)
    assert out.strip() == "(2, 1000)"


# --- ONNX -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_onnx_dynamic_batch_and_size_in_onnxruntime(model: vggnet.VGG, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    path = export(model, tmp_path / "vgg11.onnx", "onnx", dynamic_size=True, image_size=64)
    assert [p.name for p in tmp_path.iterdir()] == ["vgg11.onnx"]  # one file, weights inside
    graph = onnx.load(str(path)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert (graph.input[0].name, graph.output[0].name) == ("images", "logits")
    assert check_export(path, "onnx", model, inputs(SIZES)) < 1e-5
    x = inputs([(3, 3, 65, 300)])[0]
    torch.save(x, tmp_path / "x.pt")
    out = run_without_vggnet(f"""
        import numpy as np, onnxruntime as ort, torch
        session = ort.InferenceSession({str(path)!r}, providers=["CPUExecutionProvider"])
        (logits,) = session.run(None, {{"images": torch.load({str(tmp_path / "x.pt")!r}).numpy()}})
        np.save({str(tmp_path / "y.npy")!r}, logits)
    """)
    assert out == ""
    import numpy as np

    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "y.npy")), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_onnx_static_batch_is_static(model: vggnet.VGG, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    path = export(model, tmp_path / "vgg11.onnx", "onnx", dynamic_batch=False, batch_size=2, image_size=64)
    dims = [d.dim_param or d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 64, 64]
    assert check_export(path, "onnx", model, inputs([(2, 3, 64, 64)])) < 1e-5


@pytest.mark.slow
def test_onnx_with_preset_in_onnxruntime(model: vggnet.VGG, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    path = export(
        model, tmp_path / "p.onnx", "onnx", dynamic_size=True, image_size=90, include_preset=True, preset=PRESET
    )
    wrapped = WithPreset(model, crop_size=64, resize_size=73)
    # onnxruntime's antialiased resize rounds a few pixels to the neighbouring 0-255 value: a tolerance, not equality.
    assert check_export(path, "onnx", wrapped, images(RAW)) < 1e-3


@pytest.mark.slow
def test_aoti_package_dynamic_batch(model: vggnet.VGG, tmp_path: Path) -> None:
    """AOTInductor compiles native code with the machine's C++ compiler: minutes on 2 cores."""
    path = export(model, tmp_path / "vgg11.aoti.pt2", "aoti", image_size=64)
    assert check_export(path, "aoti", model, inputs([(1, 3, 64, 64), (3, 3, 64, 64)])) < 1e-4


# --- every head (issue 25) --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", HEAD_KINDS)
@pytest.mark.slow
def test_export_with_dynamic_size_for_every_head(kind, tmp_path):
    net = head_model(kind, arch="vgg11")
    out = export(net, tmp_path / "model.pt2", "pt2", dynamic_size=True, image_size=64)
    sizes = [(1, 3, 64, 64), (3, 3, 96, 128)]  # pool5 maps 2x2 and 3x4: the gap head's pool averages them all
    assert check_export(out, "pt2", net, inputs(sizes)) < 1e-4
