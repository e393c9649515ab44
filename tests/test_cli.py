"""The `vggnet` command: every subcommand through main(argv), and as a real process.

Official checkpoints cannot be downloaded here, so the download, verify and cache tests stand in
records of their own (`fake_records`): official-looking URLs (download.pytorch.org/models/NAME) for
generated files with the right digests, served by the loopback server of conftest.py through
VGGNET_MIRROR. Predictions are checked with a seeded vgg11 whose answers are computed in the test.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import vggnet
from tests.conftest import CLASSES, PRESET, closed_port, fingerprint, small_model, torchrun, write_labelled
from tests.conftest import file_sha256 as sha256
from vggnet.cli import main
from vggnet.data.decode import load_image
from vggnet.data.transforms import ImageClassification
from vggnet.hub._cache import cache_dir
from vggnet.hub._fetching import OFFICIAL_BASE
from vggnet.models import weights as weights_module
from vggnet.models.finetuned import FORMAT
from vggnet.models.weights import IMAGENET_CATEGORIES, Weights, WeightsEnum

PHOTOS = Path(__file__).parent / "photos"
PHOTO_NAMES = ["camera.png", "chelsea.png", "coffee.jpg", "rocket.jpg"]
VENV_BIN = Path(sys.executable).parent


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def save_hub_style(state: dict[str, torch.Tensor], folder: Path, stem: str) -> Path:
    """Save as `stem-<sha256[:8]>.pth`, the torch.hub naming the official files use."""
    tmp = folder / f"{stem}.tmp"
    torch.save(state, tmp)
    return tmp.rename(folder / f"{stem}-{sha256(tmp)[:8]}.pth")


def make_enum(name: str, records: dict[str, Weights]) -> type[WeightsEnum]:
    members = {**records, "DEFAULT": next(iter(records.values()))}
    return WeightsEnum(name, members)  # type: ignore[return-value]


# --- summary -----------------------------------------------------------------------------------------


def test_summary_prints_the_table_and_totals(capsys):
    assert main(["summary", "vgg16"]) == 0
    out = capsys.readouterr().out
    assert "138,357,544" in out and "15.47G" in out and "15,470,264,320" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "102,764,544" in rows["fc6"] and "(1, 512, 7, 7)" in rows["pool5"] and "(1, 512, 7, 7)" in rows["avgpool"]
    lines = [line.split() for line in out.splitlines()]
    assert ["classifier", "123,642,856", "89.4%", "fc6,", "fc7,", "fc8"] in lines
    assert ["fc6", "102,764,544", "74.3%", "the", "largest", "layer"] in lines
    assert ["convolutions", "15.35G", "99.2%"] in lines


def test_summary_json_at_another_size(capsys):
    assert main(["summary", "VGG19_BN", "--input-size", "97x161", "--batch-size", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["arch"] == "vgg19_bn" and data["input_size"] == [97, 161] and data["batch_size"] == 2
    assert data["params"] == 143_678_248 == sum(layer["params"] for layer in data["layers"])
    assert data["macs"] == sum(layer["macs"] for layer in data["layers"])
    by_name = {layer["name"]: layer for layer in data["layers"]}
    assert by_name["pool5"]["output_shape"] == [2, 512, 3, 5] and by_name["avgpool"]["output_shape"] == [2, 512, 7, 7]
    assert set(by_name["conv1_1"]) >= {"name", "type", "output_shape", "params", "macs"}


@pytest.mark.slow
def test_summary_plots(tmp_path, capsys):
    import xml.etree.ElementTree as ET

    svg = tmp_path / "vgg16.svg"
    assert main(["summary", "vgg16", "--plot", str(svg)]) == 0
    assert f"plot written to {svg}" in capsys.readouterr().err
    assert ET.parse(svg).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert main(["summary", "vgg16", "--plot", str(tmp_path / "x.png")]) == 1
        assert "pip install matplotlib" in capsys.readouterr().err
    else:
        assert main(["summary", "vgg16", "--plot", str(tmp_path / "x.png"), "--quiet"]) == 0
        assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["summary", "vgg16", "--input-size", "31"], "at least 32 px"),
        (["summary", "vgg16", "--input-size", "224x16"], "at least 32 px"),
        (["summary", "vgg16", "--input-size", "big"], "N or HxW"),
        (["summary", "vgg17"], "valid: vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn"),
        (["summary", "vgg16", "--batch-size", "0"], "positive integer"),
        (["summary", "vgg16", "--plot", "plot.txt"], "use one of .svg, .png"),
        (["summary"], "required: MODEL"),
        (["frobnicate"], "invalid choice"),
        (["download"], "or pass --all"),
        (["download", "vgg17"], "valid: vgg11"),
        (["download", "VGG16_Weights.IMAGENET1K_V2"], "VGG16_Weights.IMAGENET1K_FEATURES"),
        (["cache", "--remove", "vgg16"], "not in the cache"),
        (["summary", "vgg16", "--input-size", "224x224x3"], "expected N or HxW in pixels (e.g. 224 or 224x320)"),
        (["verify", "no-such-dir"], "no-such-dir is not a directory"),
        (["predict", str(PHOTOS), "--image-size", "8"], "at least 32 px"),
        (["predict", str(PHOTOS), "--device", "bogus"], "no device 'bogus' here; valid: cpu"),
        (["predict", str(PHOTOS), "--device", "cuda:99"], "valid: cpu"),
        (["finetune", "data", "--device", "bogus"], "valid: cpu"),
        (["finetune", "data", "--image-size", "8"], "argument --image-size: VGG needs at least 32 px"),
        (["predict", "no-such-photo.jpg"], "no-such-photo.jpg: no such image file"),
        (["predict", str(PHOTOS / "*.gif")], "no files match"),
        (["predict", str(PHOTOS), "--weights", "IMAGENET1K_V7"], "valid: VGG16_Weights.IMAGENET1K_V1"),
        (["predict", str(PHOTOS), "--weights", "VGG16_Weights.IMAGENET1K_FEATURES"], "has no classifier"),
        (["predict", str(PHOTOS), "--weights", "VGG16_Weights.IMAGENET1K_V1", "--arch", "vgg11"], "not for --arch"),
        (["predict", str(PHOTOS), "--weights", "missing.pth"], "no such checkpoint file"),
    ],
)
def test_usage_errors_exit_2_with_one_line_and_no_traceback(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written, nothing downloaded


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["--debug", "summary", "vgg16", "--plot", str(tmp_path / "plot.txt")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "use one of .svg" in err


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("summary", "list", "predict", "download", "verify", "cache"):
        assert command in out
    assert main(["--version"]) == 0 and vggnet.__version__ in capsys.readouterr().out
    assert main(["predict", "--help"]) == 0 and "--topk" in capsys.readouterr().out


def test_the_table_of_commands_is_every_add_run_pair_and_each_takes_debug_and_quiet():
    import inspect

    from vggnet import cli

    pairs = {}
    for module in (cli.artifacts, cli.checkpoints, cli.costs, cli.images, cli.perception, cli.training):
        own = {name: f for name, f in vars(module).items() if inspect.isfunction(f) and f.__module__ == module.__name__}
        adds = {name[4:] for name in own if name.startswith("add_")}
        assert adds == {name[4:] for name in own if name.startswith("run_")}, module.__name__
        pairs.update({name: (own[f"add_{name}"], own[f"run_{name}"]) for name in adds})
    assert pairs == cli.COMMANDS
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():  # type: ignore[union-attr]
        assert {"--debug", "--quiet", "-q"} <= set(parser._option_string_actions), name


def test_options_after_the_command(tmp_path, capsys):
    assert main(["summary", "vgg11", "--quiet", "--plot", str(tmp_path / "p.svg")]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "7.61G" in captured.out
    assert main(["-q", "summary", "vgg11", "--json"]) == 0 and json.loads(capsys.readouterr().out)["arch"] == "vgg11"


# --- list --------------------------------------------------------------------------------------------


def test_list_shows_every_weight_and_what_is_cached(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VGGNET_HOME", str(tmp_path))
    (tmp_path / "vgg19-dcbb9e9d.pth").write_bytes(b"x")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "VGG16_Weights.IMAGENET1K_FEATURES" in out and str(tmp_path) in out
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("vgg")}
    assert len(rows) == 9
    assert rows["VGG16_Weights.IMAGENET1K_V1"].split()[2:] == [
        "(default)", "71.592", "90.382", "138,357,544", "15.470", "527.8", "no",
    ]  # fmt: skip
    assert rows["VGG19_Weights.IMAGENET1K_V1"].endswith("yes")
    assert main(["list", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    features = next(e for e in entries if e["weights"] == "VGG16_Weights.IMAGENET1K_FEATURES")
    assert features["acc@1"] is None and features["params"] == 138_357_544 and not features["default"]
    assert [e["cached"] for e in entries].count(True) == 1
    assert {e["model"] for e in entries} == set(vggnet.list_models())


# --- predict -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded_vgg11(tmp_path_factory) -> Path:
    """A full-size vgg11 checkpoint (torchvision's initialisation, seed 0) whose fc8 is scaled up 300x,
    so that images get clearly different, confident answers; saved as `vgg11-<sha256[:8]>.pth`."""
    torch.manual_seed(0)
    model = vggnet.vgg11()
    with torch.no_grad():
        model.classifier[6].weight.mul_(300)
    path = save_hub_style(model.state_dict(), tmp_path_factory.mktemp("seeded"), "vgg11")
    yield path
    path.unlink()


def expected_topk(checkpoint: Path, paths: list[Path], k: int, crop: int = 224) -> list[list[tuple[int, float]]]:
    """What predict must print: the same weights and the ImageNet preset, computed here."""
    model = vggnet.vgg11(init_weights=False)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    preset = vggnet.data.transforms.ImageClassification(crop_size=crop, resize_size=round(crop * 256 / 224))
    with torch.inference_mode():
        probs = model.eval()(torch.stack([preset(load_image(p)) for p in paths])).softmax(dim=1)
    top = probs.topk(k, dim=1)
    return [list(zip(i, v)) for i, v in zip(top.indices.tolist(), top.values.tolist())]


def check_predictions(results: list[dict], expected: list[list[tuple[int, float]]], paths: list[Path]) -> None:
    assert [r["image"] for r in results] == [str(p) for p in paths]
    for result, want in zip(results, expected):
        got = [(p["index"], p["probability"]) for p in result["predictions"]]
        assert [i for i, _ in got] == [i for i, _ in want]
        assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-4)
        assert [p["label"] for p in result["predictions"]] == [IMAGENET_CATEGORIES[i] for i, _ in want]


@pytest.mark.slow
def test_predict_a_directory_with_a_local_checkpoint(seeded_vgg11, capsys):
    paths = [PHOTOS / n for n in PHOTO_NAMES]
    argv = ["predict", str(PHOTOS), "--weights", str(seeded_vgg11), "--topk", "3", "--batch-size", "3"]
    assert main([*argv, "--json", "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["arch"], data["device"], data["topk"]) == ("vgg11", "cpu", 3)  # the model is read off the keys
    expected = expected_topk(seeded_vgg11, paths, 3)
    check_predictions(data["results"], expected, paths)
    assert len({r["predictions"][0]["index"] for r in data["results"]}) > 1  # the photos are told apart

    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(paths[0]) and len(lines) == 4 * (1 + 3)
    # the text run repeats the JSON run (same batches, same arithmetic), so its rounding is compared
    # with the JSON's, which was checked against the reference above to 1e-4
    top = data["results"][0]["predictions"][0]
    index, prob = top["index"], top["probability"]
    assert lines[1].split() == [f"{prob:.2%}", *IMAGENET_CATEGORIES[index].split(), f"({index})"]


@pytest.mark.slow
def test_predict_globs_image_size_and_a_bad_image(seeded_vgg11, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    argv = ["predict", str(PHOTOS / "c*.*"), str(broken), "--weights", str(seeded_vgg11), "--topk", "2"]
    assert main([*argv, "--image-size", "160", "--json", "-q"]) == 1  # one image failed: exit 1, the others done
    captured = capsys.readouterr()
    assert str(broken) in captured.err and "Traceback" not in captured.err
    data = json.loads(captured.out)
    paths = [PHOTOS / "camera.png", PHOTOS / "chelsea.png", PHOTOS / "coffee.jpg"]
    assert data["results"][-1] == {"image": str(broken), "error": data["results"][-1]["error"]}
    check_predictions(data["results"][:-1], expected_topk(seeded_vgg11, paths, 2, crop=160), paths)


@pytest.mark.slow
def test_predict_with_a_record_fetched_through_the_mirror(seeded_vgg11, monkeypatch, capsys):
    record = Weights(url=OFFICIAL_BASE + seeded_vgg11.name, sha256=sha256(seeded_vgg11), categories=IMAGENET_CATEGORIES)
    monkeypatch.setattr(
        weights_module, "WEIGHTS_ENUMS", {"vgg11": make_enum("VGG11_Weights", {"IMAGENET1K_V1": record})}
    )
    monkeypatch.setenv("VGGNET_MIRROR", str(seeded_vgg11.parent))
    photo = PHOTOS / "chelsea.png"
    assert main(["predict", str(photo), "--arch", "vgg11", "--json", "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["weights"] == "VGG11_Weights.IMAGENET1K_V1"
    check_predictions(data["results"], expected_topk(seeded_vgg11, [photo], 5), [photo])


@pytest.mark.slow
def test_predict_with_a_finetuned_checkpoint_uses_its_labels_and_preset(seeded_vgg11, tmp_path, capsys):
    finetune = pytest.importorskip("vggnet.train.finetune")
    state = torch.load(seeded_vgg11, weights_only=True, mmap=True)
    state["classifier.6.weight"], state["classifier.6.bias"] = state["classifier.6.weight"][:3], torch.zeros(3)
    preprocessing = {"crop_size": 192, "resize_size": 200, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}
    classes = ["ant", "bee", "cicada"]
    checkpoint = {
        "format": FORMAT, "arch": "vgg11", "in_chans": 3, "classes": classes, "mode": "full",
        "preprocessing": {**preprocessing, "interpolation": "bilinear"}, "epoch": 1, "val_acc": 50.0,
        "weights": None, "state_dict": state,
    }  # fmt: skip
    path = tmp_path / "best.pth"
    finetune.save_checkpoint(checkpoint, path)
    del state, checkpoint

    paths = [PHOTOS / "chelsea.png", PHOTOS / "coffee.jpg"]
    assert main(["predict", *map(str, paths), "--weights", str(path), "--topk", "2", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    model = vggnet.vgg11(num_classes=3, init_weights=False)
    model.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    preset = ImageClassification(**preprocessing)
    with torch.inference_mode():
        probs = model.eval()(torch.stack([preset(load_image(p)) for p in paths])).softmax(dim=1)
    for result, row in zip(results, probs):
        top = row.topk(2)
        assert [p["label"] for p in result["predictions"]] == [classes[i] for i in top.indices.tolist()]
        assert [p["probability"] for p in result["predictions"]] == pytest.approx(top.values.tolist(), abs=1e-4)


@pytest.mark.slow
def test_predict_with_weights_none_is_a_random_model_with_imagenet_labels(capsys):
    photo = PHOTOS / "coffee.jpg"
    assert main(["predict", str(photo), "--weights", "none", "--arch", "vgg11", "--json", "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["arch"], data["weights"], data["topk"]) == ("vgg11", "random", 5)
    assert all(p["label"] == IMAGENET_CATEGORIES[p["index"]] for p in data["results"][0]["predictions"])


@pytest.mark.slow
def test_predict_refuses_a_checkpoint_of_another_model(seeded_vgg11, capsys):
    assert main(["predict", str(PHOTOS / "coffee.jpg"), "--weights", str(seeded_vgg11), "--arch", "vgg13"]) == 2
    assert "holds vgg11 weights, not vgg13" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_as_the_installed_script_with_a_url(seeded_vgg11, http_server, tmp_path):
    url = http_server.add(f"/checkpoints/{seeded_vgg11.name}", seeded_vgg11)
    photo = PHOTOS / "rocket.jpg"
    env = {"VGGNET_HOME": str(tmp_path)}
    proc = run(str(VENV_BIN / "vggnet"), "predict", str(photo), "--weights", url, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    check_predictions(json.loads(proc.stdout)["results"], expected_topk(seeded_vgg11, [photo], 5), [photo])
    assert (tmp_path / seeded_vgg11.name).stat().st_size == seeded_vgg11.stat().st_size  # verified by its name
    assert "%|" not in proc.stderr and "B/s" not in proc.stderr  # stderr is not a terminal: no progress bar


# --- download, verify, cache -------------------------------------------------------------------------


@pytest.fixture
def fake_records(tmp_path, monkeypatch, http_server):
    """Two official-looking records for small generated files, served on loopback through VGGNET_MIRROR."""
    source = tmp_path / "generated"
    source.mkdir()
    states = {
        "vgg11": {"features.0.weight": torch.randn(64, 3, 3, 3), "classifier.6.bias": torch.randn(1000)},
        "vgg16": {"features.0.weight": torch.randn(64, 3, 3, 3), "features.0.bias": torch.randn(64)},
    }
    files = {arch: save_hub_style(state, source, arch) for arch, state in states.items()}
    enums = {}
    for arch, path in files.items():
        http_server.add(f"/models/{path.name}", path)
        record = Weights(url=OFFICIAL_BASE + path.name, sha256=sha256(path), size=path.stat().st_size)
        enums[arch] = make_enum(f"{arch.upper()}_Weights", {"IMAGENET1K_V1": record})
    monkeypatch.setattr(weights_module, "WEIGHTS_ENUMS", enums)
    monkeypatch.setenv("VGGNET_MIRROR", http_server.url("/models"))
    monkeypatch.setenv("VGGNET_HOME", str(tmp_path / "cache"))
    return {arch: (files[arch], states[arch], enums[arch].DEFAULT) for arch in files}


def test_download_to_a_mirror_then_load_through_VGGNET_MIRROR(fake_records, http_server, tmp_path, monkeypatch, capsys):
    mirror = tmp_path / "mirror"
    assert main(["download", "--all", "--to", str(mirror)]) == 0
    out = capsys.readouterr().out
    for path, _, member in fake_records.values():
        assert (mirror / path.name).read_bytes() == path.read_bytes()
        assert str(member) in out and http_server.count(f"/models/{path.name}") == 1
    assert not cache_dir().exists()  # a mirror, not the cache

    http_server.reset()  # nothing served any more: only the mirror folder can answer
    monkeypatch.setenv("VGGNET_MIRROR", str(mirror))
    for _, state, member in fake_records.values():
        assert fingerprint(member.get_state_dict(progress=False)) == fingerprint(state)
    assert main(["verify", str(mirror)]) == 0
    assert capsys.readouterr().out.count("ok ") == 2


def test_download_into_the_cache_then_list_verify_and_remove(fake_records, http_server, capsys):
    path, _, member = fake_records["vgg11"]
    assert main(["download", "vgg11"]) == 0
    cached = cache_dir() / path.name
    assert cached.read_bytes() == path.read_bytes() and str(cached) in capsys.readouterr().out

    assert main(["list", "--json"]) == 0
    assert {e["weights"]: e["cached"] for e in json.loads(capsys.readouterr().out)} == {
        "VGG11_Weights.IMAGENET1K_V1": True,
        "VGG16_Weights.IMAGENET1K_V1": False,
    }
    assert main(["download", "VGG11_Weights.IMAGENET1K_V1"]) == 0  # already there: no second transfer
    assert http_server.count(f"/models/{path.name}") == 1
    capsys.readouterr()

    unknown = cache_dir() / "notes.bin"
    unknown.write_bytes(b"someone else's file")
    assert main(["verify", "--json"]) == 0
    status = {r["file"]: r["status"] for r in json.loads(capsys.readouterr().out)}
    assert status == {path.name: "ok", "notes.bin": "unknown"}

    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    cached.write_bytes(data)
    assert main(["verify"]) == 1
    captured = capsys.readouterr()
    assert f"corrupt  {path.name}" in captured.out and f"{path.name} is corrupt" in captured.err

    assert main(["cache", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {f["file"]: f["weights"] for f in listing["files"]} == {path.name: str(member), "notes.bin": None}
    assert listing["total"] == len(data) + unknown.stat().st_size
    assert main(["cache", "--remove", "vgg11"]) == 0
    assert f"removed {path.name}" in capsys.readouterr().out
    assert sorted(os.listdir(cache_dir())) == ["notes.bin"]
    assert main(["cache", "--clear"]) == 0 and unknown.exists()  # not vggnet's: kept


def test_download_to_a_mirror_reuses_the_cache(fake_records, http_server, tmp_path, capsys):
    path, _, _ = fake_records["vgg16"]
    assert main(["download", "vgg16"]) == 0
    assert main(["download", "vgg16", "--to", str(tmp_path / "mirror")]) == 0
    assert http_server.count(f"/models/{path.name}") == 1
    assert (tmp_path / "mirror" / path.name).read_bytes() == path.read_bytes()


def test_download_of_wrong_bytes_fails_and_keeps_nothing(fake_records, http_server, capsys):
    path, _, member = fake_records["vgg16"]
    http_server.add(f"/models/{path.name}", b"x" * path.stat().st_size)
    assert main(["download", "vgg16"]) == 1
    err = capsys.readouterr().err
    assert f"{member}: checksum mismatch" in err and "Traceback" not in err
    assert not (cache_dir() / path.name).exists()


def test_offline_and_not_cached_fails_with_exit_1(fake_records, monkeypatch, capsys):
    monkeypatch.setenv("VGGNET_OFFLINE", "1")
    assert main(["download", "vgg11", "vgg16"]) == 1
    assert "2 of 2 downloads failed" in capsys.readouterr().err


def test_verify_checks_names_and_stamps(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VGGNET_HOME", str(tmp_path))
    good = save_hub_style({"w": torch.ones(3)}, tmp_path, "resnet")  # a torch.hub name: its digest is checked
    bad = tmp_path / "alexnet-00000000.pth"
    bad.write_bytes(b"not what the name says")
    assert main(["verify", "--json"]) == 1
    assert {r["file"]: r["status"] for r in json.loads(capsys.readouterr().out)} == {
        good.name: "ok",
        bad.name: "corrupt",
    }


def test_cache_clear_removes_only_what_vggnet_wrote_or_verified(fake_records, capsys):
    path, _, _ = fake_records["vgg11"]
    assert main(["download", "vgg11"]) == 0
    folder = cache_dir()
    ours = {
        path.name: None,  # downloaded and stamped: with its stamp
        f"{path.name}.{sha256(path)[:16]}.0a1b2c3d.partial": b"p" * 10,
        f"{path.name}.corrupt-20240102-030405-beef": b"c" * 20,
        "run.pth.unverified.0a1b2c3d.partial": b"u" * 5,
    }
    theirs = {
        "vgg16-397923af.pth": b"torchvision downloaded this",  # an official record's name, never verified by vggnet
        "vgg16-397923af.pth.0123456789abcdef0123456789abcdef.partial": b"torch.hub's temporary",
        "resnet.pth": b"r",
        "resnet.pth.zip": b"z",  # beside resnet.pth, but not a zip copy vggnet wrote
    }
    for name, data in {**ours, **theirs}.items():
        if data is not None:
            (folder / name).write_bytes(data)
    capsys.readouterr()
    assert main(["cache", "--clear", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {f["file"] for f in report["removed"]} == set(ours)
    assert report["freed"] == path.stat().st_size + 35 and report["folder"] == str(folder)
    assert report["skipped"] == []
    assert sorted(n for n in os.listdir(folder) if not n.endswith(".lock")) == sorted(theirs)


def test_cache_remove_takes_any_listed_file(fake_records, capsys):
    path, _, _ = fake_records["vgg16"]
    assert main(["download", "vgg16"]) == 0
    corrupt = cache_dir() / f"{path.name}.corrupt-20240102-030405-beef"
    corrupt.write_bytes(b"c" * 20)
    capsys.readouterr()
    assert main(["cache", "--json"]) == 0
    assert corrupt.name in {f["file"] for f in json.loads(capsys.readouterr().out)["files"]}
    assert main(["cache", "--remove", corrupt.name, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["removed"] == [{"file": corrupt.name, "kind": "corrupt", "size": 20}] and report["freed"] == 20
    assert not corrupt.exists() and (cache_dir() / path.name).exists()  # only that file

    assert main(["cache", "--remove", "vgg16"]) == 0
    assert f"removed {path.name}" in capsys.readouterr().out
    assert not (cache_dir() / path.name).exists()


def test_verify_does_not_vouch_for_an_unchecked_download(http_server, tmp_path, monkeypatch, capsys):
    """A download with no digest to check (no sha256, none in its name) may be incomplete: 'unknown', not 'ok'."""
    from vggnet.hub._fetching import fetch

    monkeypatch.setenv("VGGNET_HOME", str(tmp_path))
    fetch(http_server.add("/plain.pth", b"half of a checkpoint"), progress=False)
    data = b"a whole checkpoint"
    fetch(http_server.add("/mine.pth", data), sha256=hashlib.sha256(data).hexdigest(), progress=False)
    assert main(["verify", "--json"]) == 0
    results = {r["file"]: (r["status"], r["against"]) for r in json.loads(capsys.readouterr().out)}
    assert results == {
        "plain.pth": ("unknown", None),
        "mine.pth": ("ok", "the digest recorded when it was verified"),
    }


def test_verify_says_when_the_only_reference_is_the_name(tmp_path, capsys):
    (tmp_path / "run-20240101.pth").write_bytes(b"a checkpoint saved on new year's day")
    assert main(["verify", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "run-20240101.pth is corrupt or misnamed" in err and "the hex part of its name" in err


@pytest.mark.slow
def test_predict_with_a_local_checkpoint_whose_name_looks_like_a_digest(seeded_vgg11, tmp_path, capsys):
    dated = tmp_path / "vgg11-epoch-00000010.pth"
    dated.symlink_to(seeded_vgg11)
    photo = PHOTOS / "coffee.jpg"
    assert main(["predict", str(photo), "--weights", str(dated), "--json", "--device", "cpu"]) == 0
    check_predictions(json.loads(capsys.readouterr().out)["results"], expected_topk(seeded_vgg11, [photo], 5), [photo])


# --- as a real process -------------------------------------------------------------------------------


def test_python_dash_m_summary_json():
    proc = run(sys.executable, "-m", "vggnet", "summary", "vgg16", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["params"], round(data["macs"] / 1e9, 2)) == (138_357_544, 15.47)


@pytest.mark.slow
def test_installed_script_exit_codes(tmp_path):
    script = str(VENV_BIN / "vggnet")
    assert run(script, "--version").stdout.strip() == f"vggnet {vggnet.__version__}"
    proc = run(script, "summary", "vgg16", "--input-size", "16")
    assert proc.returncode == 2 and "at least 32 px" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "vgg11-00000000.pth").write_bytes(b"flipped")
    proc = run(script, "verify", str(tmp_path))
    assert proc.returncode == 1 and "is corrupt" in proc.stderr
    proc = run(script, "list", env={"VGGNET_HOME": str(tmp_path)})
    assert proc.returncode == 0 and proc.stdout.count("\nvgg") == 9


def test_predict_refuses_a_state_dict_that_is_no_vgg(tmp_path, capsys):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.ones(1)}, path)
    assert main(["predict", str(PHOTOS / "coffee.jpg"), "--weights", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path} is not a VGG checkpoint: its keys match none of vgg11, vgg11_bn," in err and "Traceback" not in err


@pytest.mark.slow
def test_predict_image_size_keeps_a_finetuned_checkpoints_normalization(seeded_vgg11, tmp_path, capsys):
    finetune = pytest.importorskip("vggnet.train.finetune")
    state = torch.load(seeded_vgg11, weights_only=True, mmap=True)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.2, 0.2]
    checkpoint = {
        "format": FORMAT, "arch": "vgg11", "in_chans": 3, "classes": list(IMAGENET_CATEGORIES), "mode": "full",
        "preprocessing": {"crop_size": 224, "resize_size": 256, "mean": mean, "std": std, "interpolation": "bicubic"},
        "epoch": 1, "val_acc": 50.0, "weights": None, "state_dict": state,
    }  # fmt: skip
    path = tmp_path / "best.pth"
    finetune.save_checkpoint(checkpoint, path)
    photo = PHOTOS / "rocket.jpg"
    assert main(["predict", str(photo), "--weights", str(path), "--image-size", "160", "--topk", "3", "--json"]) == 0
    preset = ImageClassification(crop_size=160, resize_size=183, mean=mean, std=std, interpolation="bicubic")
    with torch.inference_mode():
        model = vggnet.vgg11(init_weights=False)
        model.load_state_dict(state)
        top = model.eval()(preset(load_image(photo))[None]).softmax(dim=1)[0].topk(3)
    predictions = json.loads(capsys.readouterr().out)["results"][0]["predictions"]
    assert [p["index"] for p in predictions] == top.indices.tolist()
    assert [p["probability"] for p in predictions] == pytest.approx(top.values.tolist(), abs=1e-4)


@pytest.mark.parametrize("argv", [["cache"], ["cache", "--clear"], ["verify"]])
def test_a_cache_directory_that_is_a_file_is_named_not_listed_as_empty(tmp_path, monkeypatch, capsys, argv):
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("not a directory")
    monkeypatch.setenv("VGGNET_HOME", str(not_a_dir))
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"VGGNET_HOME={not_a_dir}" in err and "it is not a directory" in err
    assert not_a_dir.read_text() == "not a directory"


# --- issue 11: a read-only cache, no network, odd files in the cache ------------------------------


def test_download_without_a_network_fails_fast_with_advice_and_no_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VGGNET_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("VGGNET_MIRROR", f"http://127.0.0.1:{closed_port()}")  # a server that is not there
    started = time.monotonic()
    assert main(["download", "vgg11"]) == 1
    assert time.monotonic() - started < 10
    out, err = capsys.readouterr()
    record = vggnet.VGG11_Weights.DEFAULT.value
    assert out == "" and "Traceback" not in err
    assert "the connection was refused" in err and f"download {record.url} elsewhere" in err
    for advice in (str(tmp_path / "cache"), "VGGNET_MIRROR", "VGGNET_OFFLINE", "--weights none"):
        assert advice in err


def test_cache_clear_on_a_read_only_cache_names_vggnet_home(tmp_path, monkeypatch, capsys):
    home = tmp_path / "cache"
    home.mkdir()
    (home / "x-1a2b3c4d.pth.1a2b3c4d.0a1b2c3d.partial").write_bytes(b"p" * 10)  # vggnet's: --clear takes it
    monkeypatch.setenv("VGGNET_HOME", str(home))
    try:  # root ignores permission bits: a read-only bind mount is what stops it
        subprocess.run(["mount", "--bind", str(home), str(home)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("cannot bind-mount here")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(home)], check=True, capture_output=True)
        assert main(["cache", "--clear"]) == 1
    finally:
        subprocess.run(["umount", str(home)], check=True, capture_output=True)
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(
        f"vggnet: error: the cache directory VGGNET_HOME={home} cannot hold checkpoints: cannot remove"
    )
    assert len(os.listdir(home)) == 1


def test_cache_lists_what_is_not_a_regular_file(tmp_path, monkeypatch, capsys):
    home = tmp_path / "cache"
    home.mkdir()
    os.mkfifo(home / "pipe.pth")
    (home / "zero.pth").symlink_to("/dev/zero")
    monkeypatch.setenv("VGGNET_HOME", str(home))
    assert main(["cache", "--json"]) == 0
    files = {f["file"]: f["kind"] for f in json.loads(capsys.readouterr().out)["files"]}
    assert files == {"pipe.pth": "not a regular file", "zero.pth": "not a regular file"}


# --- hostile images and sizes (issue 11 item 6) -------------------------------------------------------


@pytest.mark.slow
def test_predict_names_and_skips_each_bad_image_and_classifies_the_rest(seeded_vgg11, tmp_path, capsys):
    import io
    import shutil

    from PIL import Image

    from tests.test_decode import png_declaring

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("camera.png", "coffee.jpg"):
        shutil.copy(PHOTOS / name, folder / name)
    (folder / "bomb.png").write_bytes(png_declaring(30000, 30000))  # over twice Pillow's limit: its own error
    (folder / "big.png").write_bytes(png_declaring(10000, 10000))
    Image.new("L", (1, 60000)).save(folder / "tall.png")  # 254 bytes, 11 GiB once resized
    (folder / "notes.jpg").write_text("not a JPEG")
    buf = io.BytesIO()
    Image.new("RGB", (300, 300), "blue").save(buf, "JPEG")
    (folder / "cut.jpg").write_bytes(buf.getvalue()[:400])
    argv = ["predict", str(folder), "--weights", str(seeded_vgg11), "--topk", "2", "--batch-size", "2", "--json", "-q"]
    assert main(argv) == 1  # five bad images: each named, the two good ones classified, exit 1 at the end
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert "Traceback" not in captured.err and len(errors) == 5
    for name, problem in [
        ("big.png", "its header declares 10000x10000 = 100,000,000 pixels, over the budget"),
        ("bomb.png", "its header declares 900,000,000 pixels, over the budget"),
        ("cut.jpg", "not a readable image"),
        ("notes.jpg", "not an image Pillow can identify"),
        ("tall.png", "aspect ratio 60,000:1"),
    ]:
        prefix = f"vggnet: cannot read the image {folder / name}: "
        assert any(line.startswith(prefix) and problem in line and line.count(str(folder)) == 1 for line in errors)
    data = json.loads(captured.out)
    good = [folder / "camera.png", folder / "coffee.jpg"]
    check_predictions([r for r in data["results"] if "predictions" in r], expected_topk(seeded_vgg11, good, 2), good)
    assert sorted(Path(r["image"]).name for r in data["results"] if "error" in r) == [
        "big.png", "bomb.png", "cut.jpg", "notes.jpg", "tall.png",
    ]  # fmt: skip


@pytest.mark.slow
def test_predict_honours_the_pixel_budget_variable(seeded_vgg11, monkeypatch, capsys):
    monkeypatch.setenv("VGGNET_MAX_IMAGE_PIXELS", "100000")  # camera.png is 512x512 = 262,144 pixels
    argv = ["predict", str(PHOTOS / "camera.png"), "--weights", str(seeded_vgg11), "-q"]
    assert main(argv) == 1
    assert "262,144 pixels, over the budget of 100,000 (set VGGNET_MAX_IMAGE_PIXELS" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", str(PHOTOS), "--image-size", "5000"],
        ["predict", str(PHOTOS), "--image-size", "1025"],
        ["finetune", "data", "--image-size", "2048"],
        ["bench", "--image-size", "224x5000"],
    ],
)
def test_image_size_has_an_upper_bound(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2  # refused while parsing: nothing loaded, nothing allocated
    err = capsys.readouterr().err
    assert "at most 1024 px per side" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_summary_sizes_stay_unbounded(capsys):
    assert main(["summary", "vgg11", "--input-size", "4096", "--json"]) == 0  # the meta device allocates nothing
    assert json.loads(capsys.readouterr().out)["input_size"] == [4096, 4096]


# --- evaluate, predict to a file, embed, under torchrun (issue 14) ----------------------------------


@pytest.fixture(scope="module")
def seven_classes(tmp_path_factory):
    """A plain state dict of the seeded 7-class small_model (conftest), and a labelled folder with a corrupt file."""
    folder = tmp_path_factory.mktemp("seven")
    weights = folder / "vgg11-seven.pth"
    torch.save(small_model().state_dict(), weights)
    data = write_labelled(folder / "data", CLASSES, per_class=2)
    return weights, data


SMALL = ["--image-size", "32", "--workers", "0", "--batch-size", "4"]


@pytest.mark.slow
def test_evaluate_command_prints_the_figures_and_draws_the_matrix(seven_classes, tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    from vggnet.batch.evaluate import evaluate

    weights, data = seven_classes
    plot = tmp_path / "confusion.png"
    assert main(["evaluate", str(data), "--weights", str(weights), *SMALL, "--json", "--plot", str(plot)]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    want = evaluate(small_model(), PRESET, data, workers=0, progress=False)
    assert (report["arch"], report["weights"], report["images"], report["failed"]) == ("vgg11", str(weights), 14, 1)
    assert report["confusion"] == want.confusion.tolist()
    assert report["acc1"] == pytest.approx(want.acc1) and report["acc5"] == pytest.approx(want.acc5)
    assert report["per_class"] == pytest.approx(want.per_class) and report["layout"] == "sorted"
    assert "zz-broken.png" in captured.err and "Traceback" not in captured.err
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.width > 7 * 10

    assert main(["evaluate", str(data), "--weights", str(weights), *SMALL]) == 0
    text = capsys.readouterr().out
    assert f"acc@1  {want.acc1:.3%}" in text and f"acc@5  {want.acc5:.3%}" in text and "per class acc@1" in text
    assert "14 images, 7 classes, 1 unreadable" in text

    assert main(["evaluate", str(data), "--weights", str(weights), "--plot", "m.svg"]) == 2
    assert "name a .png file" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nothing"), "--weights", str(weights)]) == 2
    assert "no such folder" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_to_a_file_resumes_and_reads_stdin(seven_classes, tmp_path, monkeypatch, capsys):
    import io

    weights, data = seven_classes
    out = tmp_path / "out.jsonl"
    argv = ["predict", str(data), "--weights", str(weights), "--topk", "2", *SMALL, "--output", str(out)]
    assert main(argv) == 1  # one unreadable image: reported, the run goes on, exit 1
    captured = capsys.readouterr()
    assert "zz-broken.png" in captured.err and "15 images (1 unreadable)" in captured.err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 15 and sum("error" in r for r in records) == 1
    assert all(r["predictions"][0]["label"].startswith("class ") for r in records if "error" not in r)
    first = out.read_text()

    lines = first.splitlines(keepends=True)
    out.write_text("".join(lines[:4]) + lines[4][:7])  # killed while writing line 5
    assert main([*argv, "--resume"]) == 0  # the unreadable image was recorded before: nothing fails now
    assert out.read_text() == first
    assert "11 images (0 unreadable, 4 already there)" in capsys.readouterr().err

    csv_out = tmp_path / "out.csv"
    good = [r for r in records if "error" not in r][:3]
    listing = "\n".join(r["image"] for r in good) + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(listing))
    assert main(["predict", "-", "--weights", str(weights), "--topk", "2", *SMALL, "-o", str(csv_out)]) == 0
    rows = csv_out.read_text().splitlines()
    assert rows[0] == "image,label_1,index_1,probability_1,label_2,index_2,probability_2,error"
    assert [row.split(",")[0] for row in rows[1:]] == [r["image"] for r in good]
    assert [row.split(",")[1] for row in rows[1:]] == [r["predictions"][0]["label"] for r in good]

    listed = tmp_path / "list.txt"
    listed.write_text(listing)
    assert main(["predict", "--from-file", str(listed), "--weights", str(weights), *SMALL, "--json"]) == 0
    streamed = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in streamed["results"]] == [r["image"] for r in good]
    assert streamed["arch"] == "vgg11" and streamed["topk"] == 5

    assert main(["predict", "--weights", str(weights)]) == 2
    assert "name the images" in capsys.readouterr().err
    assert main(["predict", str(data), "--resume"]) == 2
    assert "--resume and --format are for --output FILE" in capsys.readouterr().err


@pytest.mark.slow
def test_embed_command_writes_shards_and_an_index(seven_classes, tmp_path, capsys):
    import numpy as np

    from vggnet.batch.embed import read_embeddings

    weights, data = seven_classes
    out = tmp_path / "emb"
    argv = ["embed", str(data), "--weights", str(weights), *SMALL, "--out", str(out)]
    assert main([*argv, "--layer", "pool5", "--pool", "--normalize", "--shard-size", "5"]) == 1
    assert "zz-broken.png" in capsys.readouterr().err
    paths, rows = read_embeddings(out)
    assert rows.shape == (14, 512) and len(set(paths)) == 14 and np.allclose(np.linalg.norm(rows, axis=1), 1)
    assert sorted(p.name for p in out.glob("*.npy")) == [f"features-00000{i}.npy" for i in range(3)]
    assert main([*argv, "--layer", "pool5", "--pool", "--normalize", "--shard-size", "5", "--resume"]) == 0
    assert "0 images (0 unreadable, 15 already there)" in capsys.readouterr().err
    assert main([*argv, "--layer", "fc9"]) == 2
    assert "--layer fc9: no such layer in vgg11; valid: conv1_1" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "evaluate", "embed"])
def test_commands_under_torchrun_match_one_process(seven_classes, tmp_path, command, capsys):
    import numpy as np

    from vggnet.batch.embed import read_embeddings

    weights, data = seven_classes
    common = ["--weights", str(weights), *SMALL]
    if command == "predict":
        one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
        extra = ["--topk", "3", "--output"]
        assert main([command, str(data), *common, *extra, str(one)]) == 1
    elif command == "embed":
        one, two = tmp_path / "one", tmp_path / "two"
        extra = ["--layer", "fc7", "--shard-size", "4", "--out"]
        assert main([command, str(data), *common, *extra, str(one)]) == 1
    else:
        one, two = tmp_path / "one.json", tmp_path / "two.json"
        assert main([command, str(data), *common, "--json"]) == 0
        one.write_text(capsys.readouterr().out)
        extra = []
    done = torchrun("-m", "vggnet", command, str(data), *common, *extra, *([str(two)] if extra else ["--json"]))
    assert done.returncode == (0 if command == "evaluate" else 1), done.stderr[-3000:]
    if command == "predict":
        a, b = ([json.loads(line) for line in p.read_text().splitlines()] for p in (one, two))
        assert [r["image"] for r in a] == [r["image"] for r in b]  # every image once, in the same order
        for x, y in zip(a, b):
            assert x.get("error", "") == y.get("error", "")
            assert [p["index"] for p in x.get("predictions", [])] == [p["index"] for p in y.get("predictions", [])]
            assert [p["probability"] for p in x.get("predictions", [])] == pytest.approx(
                [p["probability"] for p in y.get("predictions", [])], abs=1e-5
            )
        assert done.stderr.count("vggnet: cannot read the image") == 1  # by the rank that read it
        assert not list(tmp_path.glob("two.jsonl.part*"))
    elif command == "embed":
        (p1, r1), (p2, r2) = read_embeddings(one), read_embeddings(two)
        assert p1 == p2 and np.allclose(r1, r2, atol=1e-4)
    else:
        a, b = json.loads(one.read_text()), json.loads(done.stdout)  # rank 0 alone printed
        assert b["world_size"] == 2 and a["world_size"] == 1
        assert (b["images"], b["failed"], b["confusion"]) == (a["images"], a["failed"], a["confusion"])
        assert (b["acc1"], b["acc5"], b["per_class"]) == (a["acc1"], a["acc5"], a["per_class"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)


# --- finetune: every FinetuneConfig setting is an option, and the other way round (issue 17) ---------


def test_finetune_options_are_the_config_fields():
    import dataclasses

    from vggnet.cli import build_parser
    from vggnet.cli.training import FINETUNE_OPTIONS
    from vggnet.train.finetune import FinetuneConfig

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["finetune"]  # type: ignore[union-attr]
    dests = {a.dest for a in sub._actions} - {"help", "debug", "quiet"}
    fields = {f.name for f in dataclasses.fields(FinetuneConfig) if f.init}
    # DATA is the positional data; progress is the global --quiet; on_epoch is a Python callable (the CLI prints)
    assert fields - {"progress", "on_epoch"} == dests == set(FINETUNE_OPTIONS) | {"data"}


@pytest.mark.slow
def test_finetune_recipe_flags_from_the_command_line(tmp_path, capsys):
    from PIL import Image

    for split, n in (("train", 6), ("val", 2)):
        for k, name in enumerate(("dark", "light")):
            (tmp_path / "d" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.new("L", (40, 36), 40 + 170 * k + 5 * i).save(tmp_path / "d" / split / name / f"{i}.png")
    out, plot = tmp_path / "run", tmp_path / "curves.png"
    argv = ["finetune", str(tmp_path / "d"), "--arch", "vgg11", "--weights", "none", "--mode", "full", "--head", "gap",
            "--image-size", "32", "--epochs", "2", "--batch-size", "4", "--lr", "0.01", "--augment", "light",
            "--no-hflip", "--crop-scale", "0.7", "1", "--label-smoothing", "0.1", "--weight-decay", "1e-4",
            "--warmup-epochs", "1", "--early-stop", "5", "--seed", "3", "--in-chans", "1", "--out", str(out),
            "--plot", str(plot)]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    epochs = [line for line in captured.err.splitlines() if "epoch " in line and "images/s" in line]
    assert len(epochs) == 2 and all("train loss" in e and "val loss" in e and "acc" in e for e in epochs), captured.err
    last = torch.load(out / "last.pth", weights_only=True)
    assert last["in_chans"] == 1 and last["head"] == "gap"
    assert last["train"]["recipe"] == {
        "arch": "vgg11", "mode": "full", "head": "gap", "image_size": 32, "in_chans": 1, "batch_size": 4, "seed": 3,
        "augment": "light", "hflip": False, "crop_scale": [0.7, 1.0], "label_smoothing": 0.1, "weight_decay": 1e-4,
        "warmup_epochs": 1, "val_split": None, "lr": 0.01, "weights": "none",
    }  # fmt: skip
    assert plot.stat().st_size > 0
    assert main(argv) == 1  # a finished run is not overwritten
    assert "already holds a run (finished after epoch 2)" in capsys.readouterr().err
    assert main([*argv, "--epochs", "3", "--resume"]) == 0
    assert len((out / "history.jsonl").read_text().splitlines()) == 3
    assert main([*argv, "--head", "fc7"]) == 2
    assert "head 'fc7' is a linear probe" in capsys.readouterr().err
