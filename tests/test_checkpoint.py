"""checkpoint.load: every weights source through one loader, one set of rules, every argument checked before a fetch."""

from pathlib import Path

import pytest
import torch

import vggnet
from vggnet import checkpoint, cli
from vggnet import finetune as finetuning
from vggnet.checkpoint import (
    SOURCE_RULES,
    ArchMismatch,
    DeviceError,
    WeightsFileNotFound,
    arch_of_state,
    classify,
    load,
)
from vggnet.finetune import FORMAT, save_checkpoint
from vggnet.weights import IMAGENET_CATEGORIES, Weights

from .conftest import file_sha256, fingerprint

PHOTO = Path(__file__).parent / "photos" / "coffee.jpg"
MISSING_DEVICE = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: missing on every machine


@pytest.fixture(scope="module")
def vgg11_files(tmp_path_factory):
    """A seeded full-size vgg11 state dict, and a fine-tuned checkpoint (3 classes, its own preset) made from it."""
    folder = tmp_path_factory.mktemp("vgg11")
    torch.manual_seed(3)
    state = vggnet.vgg11().state_dict()
    plain = folder / "vgg11-plain.pth"
    torch.save(state, plain)
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


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VGGNET_HOME", str(tmp_path / "cache"))


# --- what a source is ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "none", "random", "NONE"])
def test_random_sources(value):
    assert classify(value).kind == "random"


@pytest.mark.parametrize(
    ("value", "label", "arch"),
    [
        ("DEFAULT", "VGG16_Weights.IMAGENET1K_V1", "vgg16"),
        ("IMAGENET1K_FEATURES", "VGG16_Weights.IMAGENET1K_FEATURES", "vgg16"),
        ("VGG19_BN_Weights.DEFAULT", "VGG19_BN_Weights.IMAGENET1K_V1", "vgg19_bn"),
        (vggnet.VGG13_Weights.DEFAULT, "VGG13_Weights.IMAGENET1K_V1", "vgg13"),
    ],
)
def test_record_names_and_members(value, label, arch):
    source = classify(value)
    assert (source.kind, source.label, source.arch) == ("record", label, arch)
    assert source.record is vggnet.get_weight(label).value


def test_a_short_name_is_looked_up_in_the_given_arch():
    assert classify("DEFAULT", "vgg11_bn").record is vggnet.VGG11_BN_Weights.IMAGENET1K_V1.value
    record = Weights(url="https://example.org/mine-0123abcd.pth", sha256="0123abcd")
    assert classify(record) == checkpoint.Source("record", record.url, record, record.url)


def test_files_and_urls(tmp_path, monkeypatch):
    assert classify("https://example.org/w.pth").kind == "url"
    path = tmp_path / "weights"  # no suffix, no separator: a file because it exists
    path.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert classify("weights") == checkpoint.Source("file", "weights")
    assert classify(path).text == str(path) and classify(path.as_uri()).kind == "url"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert classify("~/weights").text == str(path)  # expanded


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("nope.pth", WeightsFileNotFound, "weights file nope.pth not found; weights is a record name"),
        ("runs/x", WeightsFileNotFound, "weights file runs/x not found"),
        ("file:///no/such/file.pth", WeightsFileNotFound, "no such checkpoint file exists at /no/such/file.pth"),
        ("s3://bucket/w.pth", ValueError, "unsupported URL scheme 's3'"),
        ("IMAGENET1K_V7", ValueError, "unknown weights 'IMAGENET1K_V7' for VGG16_Weights; valid: VGG16_Weights"),
        ("VGG17_Weights.DEFAULT", ValueError, "valid: VGG11_Weights.IMAGENET1K_V1"),
        (3, ValueError, "weights must be a record name, a file path, a URL or None, got int 3"),
    ],
)
def test_bad_sources_name_the_rules(tmp_path, monkeypatch, value, error, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=message) as info:
        classify(value)
    assert value == 3 or SOURCE_RULES in str(info.value)  # the same words in every error


def test_a_folder_is_not_a_weights_file(tmp_path):
    with pytest.raises(WeightsFileNotFound, match="is a folder, not a file"):
        classify(str(tmp_path))


def test_the_same_words_from_the_builders_finetune_and_predict(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    expected = f"weights file nope.pth not found; weights is {SOURCE_RULES}"
    with pytest.raises(FileNotFoundError) as built:
        vggnet.vgg11(weights="nope.pth")
    with pytest.raises(FileNotFoundError) as tuned:
        finetuning.finetune(tmp_path, weights="nope.pth")
    assert str(built.value).startswith(expected) and str(tuned.value) == str(built.value)
    assert cli.main(["predict", str(PHOTO), "--weights", "nope.pth"]) == 2
    assert expected in capsys.readouterr().err


# --- everything is checked before anything is fetched ---------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"device": MISSING_DEVICE}, DeviceError, f"no device '{MISSING_DEVICE}' here; valid: cpu"),
        ({"device": "bogus"}, RuntimeError, "no device 'bogus' here; valid: cpu"),
        ({"arch": "vgg17"}, ValueError, "unknown model 'vgg17'; valid: vgg11, vgg11_bn"),
        ({"arch": "vgg11"}, ArchMismatch, "VGG16_Weights.IMAGENET1K_V1 holds vgg16 weights, not vgg11"),
        ({"num_classes": 0}, ValueError, "num_classes must be a positive integer"),
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
    assert finetuned.classes == ["ant", "bee", "cicada"] and finetuning.load_finetuned is checkpoint.load_finetuned


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


# --- state dicts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", vggnet.list_models())
def test_arch_of_state_reads_the_model_off_the_keys(arch):
    with torch.device("meta"):
        state = vggnet.get_model(arch, num_classes=10, in_chans=1).state_dict()  # fc8 and conv1_1 widths differ
    assert arch_of_state(state) == arch
    legacy = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # as the 2017 files
    assert arch_of_state(legacy) == arch


def test_arch_of_state_names_the_valid_models():
    with torch.device("meta"):
        state = vggnet.vgg16().state_dict()
    del state["classifier.3.bias"]
    with pytest.raises(ValueError, match=r"^my.pth is not a VGG checkpoint: .* vgg11, vgg11_bn, .*, vgg19_bn$"):
        arch_of_state(state, "my.pth")
    with pytest.raises(ValueError, match=r"^the state dict is not"):
        arch_of_state({**state, "classifier.3.bias": torch.zeros(4096), "extra": torch.zeros(1)})
