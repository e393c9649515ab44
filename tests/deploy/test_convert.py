"""`vggnet convert` and `vggnet export` as a user runs them: real processes, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import save_seeded_vgg11
from vggnet.deploy.convert import convert
from vggnet.hub import _formats as formats
from vggnet.models import layouts


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vggnet", *argv], capture_output=True, text=True, timeout=600, env=os.environ.copy()
    )


@pytest.fixture(scope="module")
def vgg11_pth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    path = tmp_path_factory.mktemp("src") / "vgg11-mine.pth"
    return path, save_seeded_vgg11(path, seed=0)


@pytest.mark.slow
def test_convert_pth_to_safetensors_prints_the_digest_of_what_it_wrote(vgg11_pth, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src, state = vgg11_pth
    dst = tmp_path / "out" / "vgg11.safetensors"
    dst.parent.mkdir()
    done = run("convert", str(src), str(dst), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["sha256"] == formats.file_sha256(dst) and report["bytes"] == dst.stat().st_size
    assert report["tensors"] == len(state) and report["layout"] == "vggnet"
    assert formats.detect_format(dst) == "safetensors"
    back = layouts.read_state_dict(dst)
    assert all(torch.equal(back[k], v) for k, v in state.items())
    again = run("convert", str(dst), str(tmp_path / "back.pth"))  # and back, the digest line as sha256sum prints it
    assert again.returncode == 0, again.stderr
    digest, name = again.stdout.split()
    assert digest == formats.file_sha256(tmp_path / "back.pth") and name == str(tmp_path / "back.pth")
    assert [p.name for p in dst.parent.iterdir()] == ["vgg11.safetensors"]  # no temporary left


@pytest.mark.slow
def test_convert_to_timm_layout(vgg11_pth, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src, state = vgg11_pth
    done = convert(str(src), tmp_path / "model.safetensors", layout="timm")
    raw = formats.load_safetensors(done.path)
    assert raw.keys() == layouts.to_timm(state).keys()
    timm = pytest.importorskip("timm")
    model = timm.create_model("vgg11", pretrained=False)
    model.load_state_dict(raw, strict=True)


@pytest.mark.slow
def test_convert_checks_the_source_digest_and_names_bad_suffixes(vgg11_pth, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src, _ = vgg11_pth
    wrong = run("convert", str(src), str(tmp_path / "x.safetensors"), "--sha256", "0" * 64)
    assert wrong.returncode == 1 and "checksum mismatch" in wrong.stderr
    assert not (tmp_path / "x.safetensors").exists()
    suffix = run("convert", str(src), str(tmp_path / "x.onnx"))
    assert suffix.returncode == 2 and ".safetensors, .pth, .pt, .bin" in suffix.stderr
    random = run("convert", "none", str(tmp_path / "x.pth"))
    assert random.returncode == 2 and "nothing to convert" in random.stderr


@pytest.mark.slow
def test_convert_keras_h5_without_keras_installed_needed(tmp_path: Path) -> None:
    """A Keras-1 layout notop file of VGG11's shape (8 convolutions), written with h5py alone."""
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    widths = [(3, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512), (512, 512)]
    names = ["block1_conv1", "block2_conv1", "block3_conv1", "block3_conv2", "block4_conv1", "block4_conv2",
             "block5_conv1", "block5_conv2"]  # fmt: skip
    path = tmp_path / "vgg11_notop.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"input_1", *(n.encode() for n in names)]
        f.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
        for name, (cin, cout) in zip(names, widths):
            group = f.create_group(name)
            group.attrs["weight_names"] = [f"{name}_W_1:0".encode(), f"{name}_b_1:0".encode()]
            group[f"{name}_W_1:0"] = rng.standard_normal((3, 3, cin, cout)).astype(np.float32)
            group[f"{name}_b_1:0"] = rng.standard_normal(cout).astype(np.float32)
    done = run("convert", str(path), str(tmp_path / "vgg11_notop.safetensors"), "--json")
    assert done.returncode == 0, done.stderr
    arch, expected = layouts.load_keras(path)
    assert arch == "vgg11" and json.loads(done.stdout)["tensors"] == 16
    written = formats.load_safetensors(tmp_path / "vgg11_notop.safetensors")
    assert written.keys() == expected.keys() and all(torch.equal(written[k], v) for k, v in expected.items())
    with h5py.File(path) as f:  # conv1_1 reads RGB: its input channels are Keras' BGR reversed
        kernel = torch.from_numpy(np.asarray(f["block1_conv1"]["block1_conv1_W_1:0"]))
    assert torch.equal(written["features.0.weight"], kernel.permute(3, 2, 0, 1).flip(1))


@pytest.mark.slow
def test_export_cli_torchscript_and_its_report(vgg11_pth, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src, _ = vgg11_pth
    out = tmp_path / "vgg11.ts"
    done = run("export", "vgg11", str(out), "--format", "torchscript", "--weights", str(src), "--image-size", "64",
               "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["sha256"] == formats.file_sha256(out) and report["format"] == "torchscript"
    assert report["max_abs_diff"] is not None and report["max_abs_diff"] < 1e-5
    assert report["weights"] == str(src) and report["arch"] == "vgg11"


@pytest.mark.slow
def test_export_cli_pt2_with_preset(tmp_path: Path) -> None:
    out = tmp_path / "vgg11.pt2"
    done = run("export", "vgg11", str(out), "--format", "pt2", "--weights", "none", "--image-size", "64",
               "--dynamic-size", "--with-preset", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["with_preset"] and report["dynamic_size"] and report["max_abs_diff"] < 1e-5
    module = torch.export.load(out).module()
    logits = module(torch.randint(0, 256, (3, 3, 300, 200), dtype=torch.uint8))  # any size, raw pixels
    assert logits.shape == (3, 1000)


@pytest.mark.slow
def test_export_cli_refuses_bad_combinations(tmp_path: Path) -> None:
    done = run(
        "export", "vgg11", str(tmp_path / "x.ts"), "--format", "torchscript", "--with-preset", "--weights", "none"
    )
    assert done.returncode == 2 and "onnx, pt2 or aoti" in done.stderr
    unknown = run("export", "vgg11", str(tmp_path / "x"), "--format", "tflite")
    assert unknown.returncode == 2 and "onnx" in unknown.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_export_cli_with_preset_puts_a_saved_checkpoints_own_preset_in_the_graph(tmp_path: Path) -> None:
    import vggnet
    from vggnet.data.transforms import ImageClassification

    torch.manual_seed(0)
    model = vggnet.vgg11_bn(head="gap", num_classes=3).eval()
    preset = ImageClassification(crop_size=32, resize_size=40, mean=[0.3, 0.3, 0.3], std=[0.2, 0.2, 0.2])
    saved = vggnet.save(model, tmp_path / "mine.pth", classes=["a", "b", "c"], preset=preset)
    out = tmp_path / "mine.pt2"
    done = run("export", "vgg11_bn", str(out), "--format", "pt2", "--weights", str(saved), "--with-preset", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["image_size"] == 32 and report["max_abs_diff"] < 1e-5  # the example side is the file's crop
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)  # the graph's fixed input side
    with torch.no_grad():
        want = model(preset(images))  # resized up to 40, then the center 32
    torch.testing.assert_close(torch.export.load(out).module()(images), want, atol=1e-4, rtol=1e-4)

    resized = run("export", "vgg11_bn", str(tmp_path / "r.pt2"), "--format", "pt2", "--weights", str(saved),
                  "--with-preset", "--resize", "36", "--crop", "36", "--json")  # fmt: skip
    assert resized.returncode == 0, resized.stderr
    assert json.loads(resized.stdout)["image_size"] == 36
    images = torch.randint(0, 256, (2, 3, 36, 36), dtype=torch.uint8)
    with torch.no_grad():
        want = model(ImageClassification(crop_size=36, resize_size=36, mean=[0.3] * 3, std=[0.2] * 3)(images))
    torch.testing.assert_close(torch.export.load(tmp_path / "r.pt2").module()(images), want, atol=1e-4, rtol=1e-4)
    refused = run("export", "vgg11_bn", str(tmp_path / "x.pt2"), "--format", "pt2", "--weights", str(saved),
                  "--resize", "36")  # fmt: skip
    assert refused.returncode == 2 and "add --with-preset" in refused.stderr
