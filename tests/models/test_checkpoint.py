"""checkpoint.load: every weights source through one loader, one set of rules, every argument checked before a fetch."""

import os
from pathlib import Path

import pytest
import torch

import vggnet
from tests.helpers import file_sha256, fingerprint, save_seeded_vgg11, write_vgg11_notop
from vggnet import cli, errors
from vggnet.errors import ArchMismatch, DeviceError
from vggnet.models import checkpoint as checkpoint
from vggnet.models.checkpoint import load
from vggnet.models.finetuned import FORMAT
from vggnet.models.weights import IMAGENET_CATEGORIES, Weights
from vggnet.train import finetune as finetuning
from vggnet.train.runs import save_checkpoint

PHOTO = Path(__file__).parents[1] / "photos" / "coffee.jpg"
MISSING_DEVICE = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: missing on every machine


@pytest.fixture(scope="module")
def vgg11_files(module_folders):
    """A seeded full-size vgg11 state dict, and a fine-tuned checkpoint (3 classes, its own preset) made from it."""
    folder = module_folders.mktemp("vgg11")
    plain = folder / "vgg11-plain.pth"
    state = save_seeded_vgg11(plain, seed=3)
    tuned_state = {**state, "classifier.6.weight": state["classifier.6.weight"][:3], "classifier.6.bias": torch.ones(3)}
    tuned = folder / "best.pth"
    save_checkpoint(
        {
            "format": FORMAT, "arch": "vgg11", "in_chans": 3, "classes": ["ant", "bee", "cicada"], "mode": "linear",
            "preprocessing": {"crop_size": 160, "resize_size": 183, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2],
                              "interpolation": "bicubic"},
            "epoch": 2, "val_acc": 75.0, "weights": "DEFAULT", "state_dict": tuned_state,
        },
        tuned,
    )  # fmt: skip
    return plain, tuned, fingerprint(state), fingerprint(tuned_state)


pytestmark = pytest.mark.usefixtures("cache")  # VGGNET_HOME in tmp_path/cache; TORCH_HOME is private anyway


# --- everything is checked before anything is fetched ---------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"device": MISSING_DEVICE}, DeviceError, f"no device '{MISSING_DEVICE}' here; valid: cpu"),
        ({"device": "bogus"}, RuntimeError, "no device 'bogus' here; valid: cpu"),
        ({"arch": "vgg17"}, ValueError, "unknown model 'vgg17'; valid: vgg11, vgg11_bn"),
        ({"arch": "vgg11"}, ArchMismatch, "VGG16_Weights.IMAGENET1K_V1 holds vgg16 weights, not vgg11"),
        ({"num_classes": -1}, ValueError, "num_classes must be an integer >= 0"),
        ({"in_chans": 0}, ValueError, "in_chans must be a positive integer"),
        ({"sha256": "0" * 64}, ValueError, "sha256 is for a checkpoint file or URL"),
        ({"sha256": "xyz"}, ValueError, "64 hex digits"),
    ],
)
def test_an_official_record_is_not_fetched_for_a_bad_argument(http_server, monkeypatch, kwargs, error, message):
    # get_model("vgg16", weights="DEFAULT", device="cuda") on a machine without CUDA used to download 528 MB first
    record = vggnet.VGG16_Weights.DEFAULT.value
    http_server.add("/models/" + record.file_name, b"never fetched")
    monkeypatch.setenv("VGGNET_MIRROR", http_server.url("/models"))
    with pytest.raises(error, match=message):
        load(vggnet.VGG16_Weights.DEFAULT, **kwargs)
    if "arch" not in kwargs and "sha256" not in kwargs:
        with pytest.raises(error, match=message):
            vggnet.get_model("vgg16", weights="DEFAULT", **kwargs)
    assert http_server.log() == []  # not a single request


def test_a_url_is_not_fetched_for_a_missing_device(http_server):
    url = http_server.add("/w/vgg11-00000000.pth", b"never fetched")
    with pytest.raises(DeviceError, match="valid: cpu"):
        load(url, device=MISSING_DEVICE)
    with pytest.raises(DeviceError):
        finetuning.finetune("no-data", weights=url, device=MISSING_DEVICE)
    assert http_server.log() == []


def test_a_record_without_classifier_is_refused_when_one_is_needed(http_server, monkeypatch):
    http_server.add("/models/vgg16_features-amdegroot-88682ab5.pth", b"never fetched")
    monkeypatch.setenv("VGGNET_MIRROR", http_server.url("/models"))
    with pytest.raises(ValueError, match=r"VGG16_Weights.IMAGENET1K_FEATURES has no classifier .*use IMAGENET1K_V1"):
        load("IMAGENET1K_FEATURES", classifier=True)
    assert http_server.log() == []


# --- loading -----------------------------------------------------------------------------------------


def test_random_initialisation():
    loaded = load(None, device="meta")
    assert (loaded.arch, loaded.weights, loaded.categories) == ("vgg16", "random", IMAGENET_CATEGORIES)
    assert loaded.preset.crop_size == 224 and loaded.model.features[0].weight.device.type == "meta"
    small = load("none", arch="vgg11_bn", num_classes=3, in_chans=1, device="meta", dropout=0.1)
    assert small.arch == "vgg11_bn" and small.model.num_classes == 3 and small.model.in_channels == 1
    assert list(small.categories) == ["class 0", "class 1", "class 2"]


@pytest.mark.slow
def test_a_state_dict_file_names_its_model(vgg11_files):
    plain, _, digest, _ = vgg11_files
    loaded = load(str(plain))
    assert (loaded.arch, loaded.weights, loaded.source.kind) == ("vgg11", str(plain), "file")
    assert fingerprint(loaded.model.state_dict()) == digest
    assert loaded.categories is IMAGENET_CATEGORIES and loaded.preset.mean == [0.485, 0.456, 0.406]
    with pytest.raises(ArchMismatch, match=rf"^{plain} holds vgg11 weights, not vgg13; .*arch='vgg11'") as info:
        load(plain, arch="vgg13")
    assert (info.value.found, info.value.wanted) == ("vgg11", "vgg13")
    assert info.value.explain("--arch ").endswith("leave --arch out or pass --arch vgg11")
    headless = load(plain, num_classes=5, in_chans=1)  # a new fc8, conv1_1 summed over RGB
    assert headless.model.num_classes == 5 and list(headless.categories) == [f"class {i}" for i in range(5)]
    assert fingerprint(vggnet.vgg11(weights=plain).state_dict()) == digest  # the builders take files too


@pytest.mark.slow
def test_a_finetuned_checkpoint_brings_its_classes_preset_and_model(vgg11_files):
    _, tuned, _, digest = vgg11_files
    loaded = load(tuned.as_uri())
    assert (loaded.arch, loaded.categories, loaded.source.kind) == ("vgg11", ["ant", "bee", "cicada"], "url")
    assert fingerprint(loaded.model.state_dict()) == digest and not loaded.model.training
    preset = loaded.preset
    assert (preset.crop_size, preset.resize_size, preset.mean, preset.interpolation) == (
        160, 183, [0.5, 0.4, 0.3], "bicubic",
    )  # fmt: skip
    assert loaded.info == {"mode": "linear", "epoch": 2, "val_acc": 75.0, "weights": "DEFAULT"}
    with pytest.raises(ArchMismatch, match="holds vgg11 weights, not vgg16"):
        load(tuned, arch="vgg16")
    finetuned = checkpoint.load_finetuned(tuned)
    assert finetuned.classes == ["ant", "bee", "cicada"]


@pytest.mark.slow
def test_a_url_with_a_digest_is_fetched_once_and_checked(vgg11_files, http_server, tmp_path):
    plain, _, digest, _ = vgg11_files
    url = http_server.add("/runs/model.pth", plain)
    loaded = load(url, sha256=file_sha256(plain), progress=False)
    assert fingerprint(loaded.model.state_dict()) == digest and loaded.weights == url
    load(url, sha256=file_sha256(plain)[:8], progress=False)  # from the cache
    assert http_server.count("/runs/model.pth") == 1
    with pytest.raises(vggnet.ChecksumError):
        load(http_server.add("/runs/other.pth", plain), sha256="0" * 64, progress=False)


def test_a_record_of_ones_own_is_verified_and_keeps_its_labels_and_preset(vgg11_files):
    plain, _, digest, _ = vgg11_files
    labels = [f"c{i}" for i in range(1000)]
    record = Weights(url=str(plain), sha256=file_sha256(plain), categories=labels, mean=(0.5,) * 3, std=(0.25,) * 3)
    loaded = load(record, progress=False)  # in no enum: the model is read off the keys
    assert (loaded.arch, loaded.weights, list(loaded.categories)) == ("vgg11", str(plain), labels)
    assert fingerprint(loaded.model.state_dict()) == digest and loaded.preset.mean == [0.5] * 3
    with pytest.raises(vggnet.ChecksumError):
        load(Weights(url=str(plain), sha256="0" * 64), progress=False)


# --- what a checkpoint may contain (issue 11 item 5) ---------------------------------------------------


class _Payload:
    """Pickles as a call that would create `marker`: what weights_only=True must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_carrying_code_is_refused_with_one_line_everywhere(tmp_path, capsys):
    """Plain state dict or fine-tuned checkpoint, library or CLI: one line naming the file, nothing run."""
    marker = tmp_path / "pwned"
    small = {"features.0.weight": torch.ones(2), "x": _Payload(marker)}
    finetuned = {"format": FORMAT, "arch": "vgg11", "classes": ["a"], "extra": _Payload(marker)}
    files = []
    for name, content, zip_format in [("evil.pth", small, True), ("evil-legacy.pth", small, False),
                                      ("best.pth", finetuned, True)]:  # fmt: skip
        files.append(tmp_path / name)
        torch.save(content, files[-1], _use_new_zipfile_serialization=zip_format)
    for path in files:
        calls = [load, lambda p: vggnet.vgg11(weights=str(p)), checkpoint.load_finetuned]
        for call in calls[:2] if "legacy" in path.name else calls:  # (finetune writes zip files only)
            with pytest.raises(errors.UnsafeCheckpointError) as info:
                call(path)
            message = str(info.value)
            assert (
                message.startswith(f"refused to load {path}: it holds a reference to ") and "none of it ran" in message
            )
            assert "\n" not in message and "weights_only=False" not in message and "add_safe_globals" not in message
            assert info.value.__cause__ is None and info.value.__suppress_context__  # torch's advice not chained
            assert isinstance(info.value, ValueError) and info.value.path == path
        assert cli.main(["predict", str(PHOTO), "--weights", str(path)]) == 1
        err = capsys.readouterr().err.splitlines()  # (a warning that a local file is unverified may come first)
        assert err[-1].startswith(f"vggnet: error: refused to load {path}: it holds a reference to ")
        assert [line for line in err if "error" in line] == err[-1:] and "Traceback" not in "".join(err)
    assert not marker.exists()
    torch.load(files[0], weights_only=False)  # the payload is live: the refusals above are what stopped it
    assert marker.exists()


@pytest.mark.slow
def test_nan_in_a_real_vgg_file_is_refused_from_the_library_and_the_cli(vgg11_files, tmp_path, capsys):
    plain, _, _, _ = vgg11_files
    state = torch.load(plain, weights_only=True)
    state["features.3.weight"][0, 0, 0, 0] = float("nan")
    bad = tmp_path / "diverged.pth"
    torch.save(state, bad)
    with pytest.raises(
        errors.BadCheckpointError, match=rf"^{bad} holds NaN or Inf in 1 tensor\(s\): features\.3\.weight \(1 NaN"
    ):
        vggnet.vgg11(weights=bad)
    assert cli.main(["predict", str(PHOTO), "--weights", str(bad)]) == 1  # a bad file, as a corrupt one
    err = capsys.readouterr().err.splitlines()
    assert (
        err[-1].startswith(f"vggnet: error: {bad} holds NaN") and [line for line in err if "error" in line] == err[-1:]
    )


@pytest.mark.slow
def test_a_features_only_record_with_a_nan_classifier_loads_and_only_there(vgg11_files, tmp_path):
    """What VGG16_Weights.IMAGENET1K_FEATURES is, on vgg11: a record that declares its NaN classifier."""
    plain, _, _, _ = vgg11_files
    state = torch.load(plain, weights_only=True)
    for key in ("classifier.0.weight", "classifier.3.weight"):
        state[key].fill_(float("nan"))
    path = tmp_path / "features-only.pth"
    torch.save(state, path)
    digest = file_sha256(path)
    record = Weights(url=str(path), sha256=digest, categories=None, nonfinite=("classifier.",))
    model = vggnet.vgg11(weights=record)
    assert model.classifier[0].weight.isnan().all() and torch.equal(
        model.features[0].weight, state["features.0.weight"]
    )
    undeclared = Weights(url=str(path), sha256=digest)
    with pytest.raises(errors.BadCheckpointError, match=r"in 2 tensor\(s\): classifier\.0\.weight \(\d[\d,]* NaN"):
        vggnet.vgg11(weights=undeclared)
    assert vggnet.VGG16_Weights.IMAGENET1K_FEATURES.value.nonfinite == ("classifier.",)
    assert all(m.value.nonfinite == () for e in vggnet.models.weights.WEIGHTS_ENUMS.values() for m in e
               if m is not vggnet.VGG16_Weights.IMAGENET1K_FEATURES)  # fmt: skip
    with pytest.raises(ValueError, match="nonfinite must be a tuple of state-dict key prefixes"):
        Weights(url=str(path), sha256=digest, nonfinite="classifier.")  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_half_precision_vgg_file_loads_as_float32(vgg11_files, tmp_path):
    plain, _, _, _ = vgg11_files
    half = {k: v.half() if v.is_floating_point() else v for k, v in torch.load(plain, weights_only=True).items()}
    path = tmp_path / "half.pth"
    torch.save(half, path)
    model = load(path).model
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert torch.equal(model.classifier[6].bias, half["classifier.6.bias"].float())


def test_a_keras_file_reading_a_private_file_is_refused_before_any_byte_of_it_is_read(tmp_path):
    """HDF5 external storage made the loader take a private file's bytes as features.0.weight (issue 24)."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(os.urandom(3456))
    crafted = write_vgg11_notop(tmp_path / "vgg11_notop.h5", secret=secret)
    for call in (load, lambda p: vggnet.vgg11(weights=str(p))):
        with pytest.raises(errors.BadKerasFileError, match=r"block1_conv1_W_1:0 stores its data in an external file"):
            call(crafted)


# --- a real signature (issue 25) ------------------------------------------------------------------------------


def test_load_shows_every_argument_and_refuses_a_bad_one_before_any_download():
    import inspect

    params = inspect.signature(vggnet.load).parameters
    assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in params.values())  # no **kwargs left
    assert {"head", "global_pool", "dropout", "init_weights"} <= set(params)
    never = "http://127.0.0.1:9/never-0123abcd.pth"  # nothing listens there: a download would fail otherwise
    for kwargs, message in (({"head": "max"}, "head must be one of"), ({"global_pool": "max"}, "global_pool"),
                            ({"dropout": 2.0}, "dropout")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            load(never, **kwargs)
    model = load(None, arch="vgg11", head="gap", num_classes=0, global_pool="", device="meta").model
    assert (model.head, model.num_classes, model.global_pool) == ("gap", 0, "")
