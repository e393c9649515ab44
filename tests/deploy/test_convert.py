"""`vggnet convert` and `vggnet export` as a user runs them: real processes, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import ModuleFolders, save_seeded_vgg11, write_vgg11_notop
from vggnet.deploy.convert import convert
from vggnet.hub import _formats as formats
from vggnet.models import layouts


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vggnet", *argv], capture_output=True, text=True, timeout=600, env=os.environ.copy()
    )


@pytest.fixture(scope="module")
def vgg11_pth(module_folders: ModuleFolders) -> tuple[Path, dict[str, torch.Tensor]]:
    path = module_folders.mktemp("src") / "vgg11-mine.pth"
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
def test_export_cli_dynamic_size_of_a_gap_checkpoint_without_an_image_size(tmp_path: Path) -> None:
    import vggnet

    torch.manual_seed(0)
    model = vggnet.vgg11(head="gap", num_classes=3).eval()
    src = vggnet.save(model, tmp_path / "gap.pth", classes=["a", "b", "c"])
    out = tmp_path / "gap.pt2"
    done = run("export", "vgg11", str(out), "--format", "pt2", "--weights", str(src), "--dynamic-size", "--json")
    assert done.returncode == 0, done.stderr  # was: '<=' not supported between instances of 'int' and 'NoneType'
    assert json.loads(done.stdout)["image_size"] == 224
    x = torch.randn(2, 3, 96, 160)  # pool5 3x5: the gap head averages it all
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(out).module()(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_export_cli_refuses_bad_combinations(tmp_path: Path) -> None:
    done = run(
        "export", "vgg11", str(tmp_path / "x.ts"), "--format", "torchscript", "--with-preset", "--weights", "none"
    )
    assert done.returncode == 2 and "onnx, pt2 or aoti" in done.stderr
    unknown = run("export", "vgg11", str(tmp_path / "x"), "--format", "tflite")
    assert unknown.returncode == 2 and "onnx" in unknown.stderr
    assert not list(tmp_path.iterdir())


# --- issue 24: what is read is what was verified, read as data; any file holding a NaN converts -------------


def test_convert_never_reads_a_private_file_through_a_crafted_h5(tmp_path: Path) -> None:
    """External storage made `features.0.weight` a private file's bytes, and convert wrote them out (issue 24)."""
    h5py = pytest.importorskip("h5py")
    from vggnet.errors import BadKerasFileError, exit_code

    secret = tmp_path / "id_rsa"
    secret.write_bytes(b"PRIVATE KEY " * 288)  # 3456 bytes: conv1_1's 3x3x3x64 float16 kernel
    crafted = write_vgg11_notop(tmp_path / "vgg11_notop.h5", secret=secret)
    with h5py.File(crafted) as f:  # plain HDF5 follows it: the bytes of the secret, as weights
        assert b"PRIVATE KEY" in np.asarray(f["block1_conv1/block1_conv1_W_1:0"]).tobytes()
    out = tmp_path / "out.safetensors"
    with pytest.raises(BadKerasFileError) as info:
        convert(crafted, out)
    message = str(info.value)
    assert message.startswith(f"{crafted}: dataset /block1_conv1/block1_conv1_W_1:0 stores its data in an external")
    assert "\n" not in message and exit_code(info.value) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id_rsa", "vgg11_notop.h5"]  # nothing written


def _swapping(path: Path, good: Path, bad: Path) -> tuple[threading.Event, threading.Thread]:
    """A thread renaming `good` and `bad` (hard links, so `good` keeps its inode and stamp) over `path` in turn."""
    stop = threading.Event()

    def swap() -> None:
        i = 0
        while not stop.is_set():
            tmp = path.with_name(f".swap{i}")
            os.link(bad if i % 2 == 0 else good, tmp)
            os.replace(tmp, path)
            i += 1

    thread = threading.Thread(target=swap, daemon=True)
    thread.start()
    return stop, thread


@pytest.mark.parametrize("fmt", ["pth", pytest.param("h5", marks=pytest.mark.slow), "safetensors"])
def test_convert_sha256_never_reads_a_file_swapped_after_the_check(tmp_path: Path, fmt: str) -> None:
    """`convert --sha256` hashed one file and read another: a file swapped in between was converted (issue 24)."""
    from vggnet.errors import ChecksumError

    pytest.importorskip("safetensors")
    src, other = tmp_path / f"good.{fmt}", tmp_path / f"bad.{fmt}"
    if fmt == "h5":
        write_vgg11_notop(src, seed=0)
        write_vgg11_notop(other, seed=1)
    else:
        for path, seed in ((src, 0), (other, 1)):
            state = {"features.0.weight": torch.randn(64, 3, 3, 3, generator=torch.Generator().manual_seed(seed))}
            torch.save(state, path) if fmt == "pth" else formats.save_safetensors(state, path)
    good = layouts.read_state_dict(src)
    digest = formats.file_sha256(src)
    served = tmp_path / "served" / f"weights.{fmt}"
    served.parent.mkdir()
    os.link(src, served)
    convert(served, tmp_path / "first.safetensors", sha256=digest)  # stamped: the check is then an fstat
    stop, thread = _swapping(served, src, other)
    outcomes = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # the threads take turns often: a small file's check and read are microseconds apart
    try:
        for i in range(30 if fmt != "h5" else 4):
            dst = tmp_path / f"out{i}.pth"
            try:
                convert(served, dst, sha256=digest, progress=False)
            except ChecksumError:
                outcomes.append("refused")
                continue
            back = layouts.read_state_dict(dst)
            outcomes.append("good" if all(torch.equal(back[k], v) for k, v in good.items()) else "BAD")
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        thread.join()
    assert "BAD" not in outcomes, outcomes  # good, or refused (the file changed after it was verified)


def test_convert_refuses_pickled_code_in_one_line(tmp_path: Path) -> None:
    """torch's seven-line weights_only message ("... will likely succeed") never reaches the user (issue 24)."""
    from vggnet.errors import UnsafeCheckpointError, exit_code

    evil = tmp_path / "evil.pth"
    torch.save({"features.0.weight": torch.ones(2), "x": np.float64(1.0)}, evil)  # a numpy global: not allowed
    with pytest.raises(UnsafeCheckpointError) as info:
        convert(evil, tmp_path / "out.safetensors")
    message = str(info.value)
    assert "\n" not in message and str(evil) in message and "weights_only=False" not in message
    assert "likely succeed" not in message and exit_code(info.value) == 1
    assert not (tmp_path / "out.safetensors").exists()


def test_convert_copies_nan_bit_for_bit(tmp_path: Path) -> None:
    """The read-back compared with torch.equal, NaN != NaN: "does not read back ... the disk may be full" (issue 24)."""
    nan = torch.tensor([float("nan"), -float("nan"), float("inf"), -0.0, 1.0])
    payload = torch.tensor([0x7FC00001, 0x7FA00000], dtype=torch.int32).view(torch.float32)  # NaNs with payloads
    state = {"classifier.0.weight": torch.cat([nan, payload]), "features.0.bias": torch.zeros(3)}
    src = tmp_path / "nan.pth"
    torch.save(state, src)
    for dst in (tmp_path / "nan.safetensors", tmp_path / "back.pth"):
        done = convert(src, dst)
        back = layouts.read_state_dict(done.path)
        assert back["classifier.0.weight"].view(torch.int32).tolist() == (
            state["classifier.0.weight"].view(torch.int32).tolist()
        )
        assert done.sha256 == formats.file_sha256(dst)
        src = dst


def test_convert_of_a_record_declaring_nonfinite_tensors(tmp_path: Path) -> None:
    """The features-only VGG16 record declares its classifier's NaN (Weights.nonfinite): it converts."""
    import vggnet

    state = {"features.0.weight": torch.ones(64, 3, 3, 3), "classifier.0.weight": torch.full((4, 4), float("nan"))}
    src = tmp_path / "features.pth"
    torch.save(state, src)
    record = vggnet.Weights(url=str(src), sha256=formats.file_sha256(src), nonfinite=("classifier.",))
    done = convert(record, tmp_path / "features.safetensors")
    back = formats.load_safetensors(done.path)
    assert torch.isnan(back["classifier.0.weight"]).all() and torch.equal(
        back["features.0.weight"], state["features.0.weight"]
    )


@pytest.mark.slow
def test_convert_cli_gives_one_line_and_exit_1_for_a_crafted_h5_and_for_pickled_code(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"s" * 3456)
    crafted = write_vgg11_notop(tmp_path / "vgg11_notop.h5", secret=secret)
    evil = tmp_path / "evil.pth"
    torch.save({"features.0.weight": torch.ones(2), "x": np.float64(1.0)}, evil)
    for src, says in ((crafted, "/block1_conv1/block1_conv1_W_1:0"), (evil, "numpy")):
        done = run("convert", str(src), str(tmp_path / "out.safetensors"))
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert str(src) in done.stderr and says in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out.safetensors").exists()


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


def test_convert_never_writes_through_a_link_at_dst(tmp_path: Path) -> None:
    from vggnet.errors import OutputPathError

    src = tmp_path / "src.pth"
    torch.save({"features.0.weight": torch.randn(64, 3, 3, 3)}, src)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "link.safetensors").symlink_to(victim)
    with pytest.raises(OutputPathError, match=r"link\.safetensors: it is a symbolic link"):
        convert(src, tmp_path / "link.safetensors")
    assert victim.read_text() == "keep me" and (tmp_path / "link.safetensors").is_symlink()
