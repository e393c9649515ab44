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

from .conftest import file_sha256, fingerprint, save_seeded_vgg11

PHOTO = Path(__file__).parent / "photos" / "coffee.jpg"
MISSING_DEVICE = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: missing on every machine


@pytest.fixture(scope="module")
def vgg11_files(tmp_path_factory):
    """A seeded full-size vgg11 state dict, and a fine-tuned checkpoint (3 classes, its own preset) made from it."""
    folder = tmp_path_factory.mktemp("vgg11")
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


# --- what a checkpoint may contain (issue 11 item 5) ---------------------------------------------------


class _Payload:
    """Pickles as a call that would create `marker`: what weights_only=True must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _tiny() -> torch.nn.Module:
    """A meta-device module with a VGG-style BatchNorm (its num_batches_tracked) for the content checks."""
    with torch.device("meta"):
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))


def _tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = dict(
        torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2)).state_dict()
    )
    state["1.num_batches_tracked"] = torch.tensor(7)
    return state


def _from_file(state: object, tmp_path: Path) -> object:
    """`state` after a round trip through a real file and the hub's weights-only load."""
    path = tmp_path / "state.pth"
    torch.save(state, path)
    with open(path, "rb") as f:
        return vggnet.hub.weights_only_load(f, path, mmap=True, map_location="cpu")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"0.weight": lambda t: t.to_sparse()}, r"0\.weight \(sparse_coo\) is not dense"),
        ({"2.weight": lambda t: t.to_sparse_csr()}, r"2\.weight \(sparse_csr\) is not dense"),
        ({"0.bias": lambda t: torch.quantize_per_tensor(t, 0.1, 0, torch.qint8)}, r"0\.bias \(quantized\) is not"),
        ({"0.weight": lambda t: t.to(torch.int64), "2.bias": lambda t: t.to(torch.int32)},
         r"0\.weight \(torch\.int64\), 2\.bias \(torch\.int32\) are not floating point"),
        ({"2.bias": lambda t: t > 0}, r"2\.bias \(torch\.bool\) is not floating point"),
        ({"2.bias": lambda t: t.to(torch.complex64)}, r"2\.bias \(torch\.complex64\) is not floating"),
        ({"1.num_batches_tracked": lambda t: t.float()}, r"1\.num_batches_tracked \(torch\.float32\) is not of an"),
        ({"0.weight": lambda t: t.to("meta")}, r"0\.weight is on the meta device, with no values"),
    ],
)  # fmt: skip
def test_tensors_that_are_not_dense_floats_are_refused_from_a_real_file(tmp_path, change, message):
    state = _tiny_state()
    state.update({key: make(state[key]) for key, make in change.items()})
    loaded = _from_file(state, tmp_path)
    model = _tiny()
    with pytest.raises(
        checkpoint.BadCheckpointError, match=rf"^my\.pth cannot be loaded: {message}.*nothing was loaded"
    ):
        checkpoint.load_checkpoint_state(model, loaded, source="my.pth")
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing was assigned


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_are_cast_to_the_models(tmp_path, dtype):
    state = {k: (v.to(dtype) if v.is_floating_point() else v.to(torch.int32)) for k, v in _tiny_state().items()}
    loaded = _from_file(state, tmp_path)
    model = _tiny()
    checkpoint.load_checkpoint_state(model, loaded)
    got = model.state_dict()
    assert {t.dtype for k, t in got.items() if "num_batches" not in k} == {torch.float32}
    assert got["1.num_batches_tracked"].dtype == torch.long and int(got["1.num_batches_tracked"]) == 7
    for key, value in state.items():  # the checkpoint's values, only widened or rounded to float32
        assert torch.equal(got[key], value.to(got[key].dtype)), key


def test_a_float64_value_beyond_float32_is_refused_not_loaded_as_inf(tmp_path):
    state = {k: v.double() if v.is_floating_point() else v for k, v in _tiny_state().items()}
    state["2.weight"][0, 0] = 1e300  # finite in float64, inf in the model's float32
    with pytest.raises(checkpoint.BadCheckpointError, match=r"2\.weight \(0 NaN, 1 Inf\)"):
        checkpoint.load_checkpoint_state(_tiny(), _from_file(state, tmp_path))


def test_nan_and_inf_are_refused_naming_the_first_tensors_and_the_count(tmp_path):
    with torch.device("meta"):
        model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(4)])
    state = {
        f"{i}.{p}": torch.ones(2, 2) if p == "weight" else torch.ones(2) for i in range(4) for p in ("weight", "bias")
    }
    for i, key in enumerate(sorted(state)[:7]):
        state[key].view(-1)[0] = float("nan") if i % 2 else float("-inf")
    with pytest.raises(checkpoint.BadCheckpointError) as info:
        checkpoint.load_checkpoint_state(model, _from_file(state, tmp_path), source="run.pth")
    message = str(info.value)
    assert message.startswith("run.pth holds NaN or Inf in 7 tensor(s): 0.weight (1 NaN, 0 Inf), 0.bias (0 NaN, 1 Inf)")
    assert "and 2 more; nothing was loaded" in message and "\n" not in message
    assert "nonfinite" in message  # how a record says NaN is expected


def test_nonfinite_prefixes_allow_nan_only_there(tmp_path):
    state = _tiny_state()
    state["2.weight"].fill_(float("nan"))  # the features-only VGG16's classifier, in small
    loaded = _from_file(state, tmp_path)
    model = _tiny()
    checkpoint.load_checkpoint_state(model, loaded, nonfinite=("2.",))
    assert model[2].weight.isnan().all() and torch.equal(model[0].weight, state["0.weight"])
    state["0.bias"][1] = float("inf")
    with pytest.raises(checkpoint.BadCheckpointError, match=r"in 1 tensor\(s\): 0\.bias \(0 NaN, 1 Inf\)"):
        checkpoint.load_checkpoint_state(_tiny(), _from_file(state, tmp_path), nonfinite=("2.",))


def test_a_tensor_on_another_device_is_refused_and_cpu_tensors_follow_the_device(tmp_path):
    model = _tiny()
    checkpoint.load_checkpoint_state(model, _tiny_state(), device="meta")  # the asked device: kept there
    assert model[0].weight.device.type == "meta"
    model = _tiny()
    stride0 = {**_tiny_state(), "2.weight": torch.ones(1, 1).expand(2, 4)}  # one float seen 8 times
    checkpoint.load_checkpoint_state(model, stride0)
    assert model[2].weight.is_contiguous()  # its own memory: training updates one weight at a time
    model[2].weight.data[0, 0] = 5
    assert model[2].weight.sum() == 12
    with pytest.raises(checkpoint.BadCheckpointError, match=r"0\.bias is on the meta device"):
        checkpoint.load_checkpoint_state(_tiny(), {**_tiny_state(), "0.bias": torch.empty(4, device="meta")})


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"a": 1, "b": "text"}, r"entries 'a' \(int\), 'b' \(str\) are not tensors under string names"),
        ([torch.ones(1)], r"is not a state dict \(a mapping of names to tensors\): it is a list"),
        ({"state_dict": {"w": torch.ones(1)}}, r"entries 'state_dict' \(dict\) are not tensors"),
    ],
)
def test_a_state_that_is_no_state_dict_is_named(state, message):
    with pytest.raises(checkpoint.BadCheckpointError, match=message):
        checkpoint.load_checkpoint_state(_tiny(), state, source="x.pth")


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
            with pytest.raises(checkpoint.UnsafeCheckpointError) as info:
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


def test_a_finetuned_checkpoint_with_bad_fields_names_them(tmp_path):
    path = tmp_path / "best.pth"
    save_checkpoint({"format": FORMAT, "arch": "vgg99", "classes": [], "in_chans": "3", "state_dict": {}}, path)
    with pytest.raises(checkpoint.BadCheckpointError) as info:
        checkpoint.load_finetuned(path)
    message = str(info.value)
    assert f"{path} says it was written by vggnet finetune" in message
    problems = ("'in_chans' is a str, not an int", "'preprocessing' is missing", "'classes' is not a non-empty",
                "'arch' is 'vgg99', not one of vgg11")  # fmt: skip
    for problem in problems:
        assert problem in message


def test_nan_in_a_real_vgg_file_is_refused_from_the_library_and_the_cli(vgg11_files, tmp_path, capsys):
    plain, _, _, _ = vgg11_files
    state = torch.load(plain, weights_only=True)
    state["features.3.weight"][0, 0, 0, 0] = float("nan")
    bad = tmp_path / "diverged.pth"
    torch.save(state, bad)
    with pytest.raises(
        checkpoint.BadCheckpointError, match=rf"^{bad} holds NaN or Inf in 1 tensor\(s\): features\.3\.weight \(1 NaN"
    ):
        vggnet.vgg11(weights=bad)
    assert cli.main(["predict", str(PHOTO), "--weights", str(bad)]) == 1  # a bad file, as a corrupt one
    err = capsys.readouterr().err.splitlines()
    assert (
        err[-1].startswith(f"vggnet: error: {bad} holds NaN") and [line for line in err if "error" in line] == err[-1:]
    )


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
    with pytest.raises(checkpoint.BadCheckpointError, match=r"in 2 tensor\(s\): classifier\.0\.weight \(\d[\d,]* NaN"):
        vggnet.vgg11(weights=undeclared)
    assert vggnet.VGG16_Weights.IMAGENET1K_FEATURES.value.nonfinite == ("classifier.",)
    assert all(m.value.nonfinite == () for e in vggnet.weights.WEIGHTS_ENUMS.values() for m in e
               if m is not vggnet.VGG16_Weights.IMAGENET1K_FEATURES)  # fmt: skip
    with pytest.raises(ValueError, match="nonfinite must be a tuple of state-dict key prefixes"):
        Weights(url=str(path), sha256=digest, nonfinite="classifier.")  # type: ignore[arg-type]


def test_a_half_precision_vgg_file_loads_as_float32(vgg11_files, tmp_path):
    plain, _, _, _ = vgg11_files
    half = {k: v.half() if v.is_floating_point() else v for k, v in torch.load(plain, weights_only=True).items()}
    path = tmp_path / "half.pth"
    torch.save(half, path)
    model = load(path).model
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert torch.equal(model.classifier[6].bias, half["classifier.6.bias"].float())


def test_a_hostile_key_is_cut_short_in_the_mismatch_message():
    with pytest.raises(RuntimeError, match=r"unexpected keys \['x{97}\.\.\.'\]") as info:
        checkpoint.load_checkpoint_state(_tiny(), {**_tiny_state(), "x" * 1_000_000: torch.ones(1)})
    assert len(str(info.value)) < 1000
