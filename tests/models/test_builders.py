"""Builders with weights: strict loading on the meta device, both serialization formats, new heads, devices."""

import inspect
import logging
import warnings
from typing import Literal, get_args

import pytest
import torch
from torch import nn

import vggnet
from tests.helpers import file_sha256 as sha256
from tests.helpers import fingerprint, randomize_batchnorm
from vggnet import Weights
from vggnet.models.builders import BUILDERS
from vggnet.models.config import ARCHS


@pytest.fixture(scope="module")
def vgg11_bn_files(module_folders):
    """A full-size seeded vgg11_bn state dict in both formats; the legacy one lacks num_batches_tracked, as in 2017."""
    folder = module_folders.mktemp("vgg11_bn")
    torch.manual_seed(7)
    state = randomize_batchnorm(vggnet.vgg11_bn(), mean=1, var=(0.5, 2)).state_dict()
    zip_path, legacy_path = folder / "zip.pth", folder / "legacy.pth"
    torch.save(state, zip_path)
    legacy = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(legacy, legacy_path, _use_new_zipfile_serialization=False)
    return state, {"zip": (zip_path, sha256(zip_path)), "legacy": (legacy_path, sha256(legacy_path))}


def record(path, digest, **fields) -> Weights:
    return Weights(url=str(path), sha256=digest, **fields)


pytestmark = pytest.mark.usefixtures("cache")  # VGGNET_HOME in tmp_path/cache; TORCH_HOME is private anyway


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.slow
def test_a_local_record_loads_every_tensor_exactly(vgg11_bn_files, fmt):
    state, files = vgg11_bn_files
    path, digest = files[fmt]
    model = vggnet.vgg11_bn(weights=record(path, digest))
    loaded = model.state_dict()
    assert list(loaded) == list(state)
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            assert loaded[key].item() == (0 if fmt == "legacy" else value.item()) and loaded[key].dtype == torch.long
        else:
            assert torch.equal(loaded[key], value), key
    assert all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])  # nothing left on meta
    assert all(p.requires_grad for p in model.parameters())
    model.eval()
    x = torch.randn(1, 3, 40, 40)
    reference = vggnet.vgg11_bn().eval()
    reference.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


@pytest.mark.slow
def test_with_weights_no_time_goes_into_random_init(vgg11_bn_files, monkeypatch):
    state, files = vgg11_bn_files

    originals = {}

    def forbid(owner, name):
        original = originals[(owner, name)] = getattr(owner, name)

        def guarded(tensor, *args, **kwargs):
            if tensor.device.type != "meta":  # on meta an init call computes nothing
                raise AssertionError("random initialisation ran although weights were given")
            return original(tensor, *args, **kwargs)

        monkeypatch.setattr(owner, name, guarded)

    for name in ("kaiming_normal_", "kaiming_uniform_", "normal_", "uniform_", "constant_"):
        forbid(nn.init, name)
    forbid(torch.Tensor, "normal_")
    forbid(torch.Tensor, "uniform_")
    path, digest = files["zip"]
    model = vggnet.vgg11_bn(weights=record(path, digest))
    assert torch.equal(model.features[0].weight, state["features.0.weight"])
    with pytest.raises(AssertionError, match="random initialisation ran"):
        vggnet.vgg11_bn()  # the patch does catch a random init


@pytest.mark.slow
def test_another_num_classes_keeps_every_other_tensor_and_logs(vgg11_bn_files, caplog):
    state, files = vgg11_bn_files
    path, digest = files["zip"]
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="vggnet"):
        model = vggnet.vgg11_bn(weights=record(path, digest), num_classes=101)
    assert "fc8, which is freshly initialised" in caplog.text
    loaded = model.state_dict()
    assert loaded["classifier.6.weight"].shape == (101, 4096) and loaded["classifier.6.bias"].shape == (101,)
    for key, value in state.items():
        if not key.startswith("classifier.6."):
            assert torch.equal(loaded[key], value), key
    fc8 = model.get_classifier()
    assert fc8.weight.device.type == "cpu" and fc8.weight.requires_grad
    assert 0.008 < fc8.weight.std().item() < 0.012 and torch.count_nonzero(fc8.bias) == 0  # N(0, 0.01), bias 0


@pytest.mark.slow
def test_a_checkpoint_that_does_not_fit_names_the_keys(vgg11_bn_files, tmp_path):
    state, _ = vgg11_bn_files
    broken = dict(state)
    del broken["features.4.weight"]
    broken["features.99.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(
        RuntimeError, match=r"missing keys \['features.4.weight'\]; unexpected keys \['features.99.weight'\]"
    ):
        vggnet.vgg11_bn(weights=record(path, sha256(path)))
    narrow = dict(state)
    narrow["classifier.0.bias"] = torch.zeros(100)
    path = tmp_path / "narrow.pth"
    torch.save(narrow, path)
    with pytest.raises(RuntimeError, match=r"missing keys \[\]; unexpected keys \[\]; shape mismatches "
                       r"\['classifier.0.bias: checkpoint \(100,\), model \(4096,\)'\]"):  # fmt: skip
        vggnet.vgg11_bn(weights=record(path, sha256(path)))
    with pytest.raises(RuntimeError, match=r"another VGG variant.*and \d+ more"):
        vggnet.vgg13_bn(weights=record(*vgg11_bn_files[1]["zip"]))


@pytest.mark.slow
def test_missing_num_batches_tracked_is_the_only_tolerated_gap(vgg11_bn_files, tmp_path):
    state, _ = vgg11_bn_files
    without_mean = {k: v for k, v in state.items() if k != "features.1.running_mean"}
    path = tmp_path / "no-mean.pth"
    torch.save(without_mean, path)
    with pytest.raises(RuntimeError, match=r"missing keys \['features.1.running_mean'\]"):
        vggnet.vgg11_bn(weights=record(path, sha256(path)))


@pytest.mark.slow
def test_pretrained_is_deprecated_but_works(monkeypatch, tmp_path):
    monkeypatch.setenv("VGGNET_OFFLINE", "1")
    deprecated = pytest.warns(UserWarning, match=r"equivalent to passing `weights=VGG11_Weights.IMAGENET1K_V1`")
    offline = pytest.raises(FileNotFoundError, match=r"vgg11-8a719046\.pth")  # names the file it looked for
    parameter = "parameter 'pretrained' is deprecated"
    with pytest.warns(UserWarning, match=parameter), deprecated, offline:
        vggnet.vgg11(pretrained=True)
    with pytest.warns(UserWarning, match=parameter), pytest.warns(UserWarning, match="passing `weights=None`"):
        model = vggnet.vgg11(pretrained=False)
    assert isinstance(model, vggnet.VGG)
    with pytest.raises(ValueError, match="either weights= or the deprecated pretrained="):
        vggnet.vgg11(weights="DEFAULT", pretrained=True)


def test_device_keyword_without_weights():
    model = vggnet.vgg11(device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert vggnet.vgg11(device="cpu").features[0].weight.device.type == "cpu"


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
def test_loading_straight_onto_cuda(vgg11_bn_files):
    state, files = vgg11_bn_files
    path, digest = files["legacy"]
    torch.cuda.reset_peak_memory_stats()
    model = vggnet.vgg11_bn(weights=record(path, digest), device="cuda").eval()
    assert all(t.device.type == "cuda" for t in [*model.parameters(), *model.buffers()])
    assert torch.equal(model.features[0].weight.cpu(), state["features.0.weight"])
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224, device="cuda"))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    # one copy of the parameters on the card, not a model's worth of random init plus the checkpoint
    assert torch.cuda.max_memory_allocated() < 1.6 * sum(v.numel() * v.element_size() for v in state.values())


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.slow
def test_end_to_end_over_http_a_custom_record_loads_once_and_equals_the_served_weights(
    http_server, vgg16_checkpoints, tmp_path, fmt
):
    served = getattr(vgg16_checkpoints, fmt)
    url = http_server.add("/models/" + served.name, served.path)
    weights = Weights(url=url, sha256=served.sha256, size=served.size, categories=[f"c{i}" for i in range(1000)])
    model = vggnet.vgg16(weights=weights, progress=False)
    assert fingerprint(model.state_dict()) == vgg16_checkpoints.fingerprint
    assert http_server.count("/models/" + served.name) == 1
    assert (tmp_path / "cache" / served.name).stat().st_size == served.size
    again = vggnet.get_model("vgg16", weights=weights, progress=False)  # a cache hit: no second download
    assert http_server.count("/models/" + served.name) == 1
    assert fingerprint(again.state_dict()) == vgg16_checkpoints.fingerprint


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"dropuot": 0.1}, TypeError, "unexpected keyword argument 'dropuot'; the builders take"),
        ({"in_chans": 0}, ValueError, "in_chans must be a positive integer, got 0"),
        ({"num_classes": True}, ValueError, r"num_classes must be an integer >= 0 \(the outputs .*\), got True"),
        ({"num_classes": 2.5}, ValueError, "num_classes must be an integer >= 0"),
        ({"dropout": 1.5}, ValueError, "dropout must be a probability between 0 and 1"),
        ({"device": "bogus"}, RuntimeError, "bogus"),
    ],
)
def test_a_bad_argument_is_refused_before_any_checkpoint_is_fetched(http_server, kwargs, error, message):
    url = http_server.add("/models/never-00000000.pth", b"not fetched")
    with pytest.raises(error, match=message):
        vggnet.vgg11(weights=Weights(url=url, sha256="0" * 64), progress=False, **kwargs)
    assert http_server.count("/models/never-00000000.pth") == 0
    with pytest.raises(error, match=message):  # the same refusal without weights
        vggnet.vgg11(**kwargs)


@pytest.mark.slow
def test_end_to_end_over_http_a_wrong_digest_raises_and_keeps_no_file(http_server, vgg16_checkpoints, tmp_path):
    served = vgg16_checkpoints.zip
    url = http_server.add("/models/" + served.name, served.path)
    wrong = "0" * 64
    with pytest.raises(vggnet.ChecksumError, match="no file was kept") as info:
        vggnet.vgg16(weights=Weights(url=url, sha256=wrong), progress=False)
    assert (info.value.expected, info.value.actual, info.value.url) == (wrong, served.sha256, url)
    cache = tmp_path / "cache"
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == []


def test_the_registry_is_built_from_the_functions_in_the_papers_order():
    assert list(BUILDERS) == list(ARCHS) == vggnet.list_models()
    assert all(f.__name__ == name and getattr(vggnet, name) is f for name, f in BUILDERS.items())
    with pytest.raises(ValueError, match=r"^unknown model 'VGG17'; valid: vgg11, vgg11_bn, .*, vgg19_bn$"):
        vggnet.get_model("VGG17")
    with pytest.raises(ValueError, match=r"^unknown model 'vgg17'; valid: vgg11, "):  # the same one message
        vggnet.get_model_weights("vgg17")
    assert vggnet.get_model("VGG11", device="meta").num_classes == 1000  # any case


def test_arch_of_state_names_the_valid_models():
    with torch.device("meta"):
        state = vggnet.vgg16().state_dict()
    del state["classifier.3.bias"]
    with pytest.raises(ValueError, match=r"^my.pth is not a VGG checkpoint: .* vgg11, vgg11_bn, .*, vgg19_bn$"):
        vggnet.models.state_dicts.arch_of_state(state, "my.pth")
    with pytest.raises(ValueError, match=r"^the state dict is not"):
        vggnet.models.state_dicts.arch_of_state(
            {**state, "classifier.3.bias": torch.zeros(4096), "extra": torch.zeros(1)}
        )


# --- drop-in: torchvision conventions ---

tvm = pytest.importorskip("torchvision.models")
TV_MEMBERS = [(arch, name) for arch in vggnet.list_models() for name in tvm.get_model_weights(arch).__members__]


def serve_as_official(monkeypatch, http_server, member, served):
    """Point vggnet's `member` at `served` (digest and size) under its official URL, fetched from loopback
    through VGGNET_MIRROR, the way a mirror of download.pytorch.org would serve it. Returns the served path."""
    official = member.value
    monkeypatch.setattr(member, "_value_", Weights(url=official.url, sha256=served.sha256, size=served.size))
    monkeypatch.setenv("VGGNET_MIRROR", http_server.url("/models"))
    path = "/models/" + official.file_name
    http_server.add(path, served.path)
    return path


@pytest.mark.parametrize(("arch", "name"), TV_MEMBERS)
def test_builders_take_torchvisions_members_for_every_record(arch, name, monkeypatch, http_server, small_checkpoints):
    theirs = tvm.get_model_weights(arch)[name]
    ours = vggnet.get_model_weights(arch)[name]
    path = serve_as_official(monkeypatch, http_server, ours, small_checkpoints.zip)
    assert fingerprint(vggnet.get_model_weights(arch).verify(theirs).get_state_dict(progress=False)) == (
        small_checkpoints.fingerprint
    )
    # The builder fetches the file of the matching record; the small stand-in cannot fill a whole VGG.
    with pytest.raises(RuntimeError, match="checkpoint does not fit the model"):
        vggnet.get_model(arch, weights=theirs, progress=False)
    assert http_server.count(path) == 1  # one download, then the cache


def test_a_torchvision_member_of_another_model_is_refused_before_any_download(http_server):
    with pytest.raises(ValueError, match=r"VGG11_Weights.IMAGENET1K_V1 holds vgg11 weights, not vgg16"):
        vggnet.vgg16(weights=tvm.VGG11_Weights.DEFAULT)
    with pytest.raises(TypeError, match=r"ResNet50_Weights.IMAGENET1K_V2 \(https://.*\) has no vggnet record"):
        vggnet.vgg16(weights=tvm.ResNet50_Weights.DEFAULT)
    assert http_server.log() == []


@pytest.mark.slow
def test_torchvisions_default_loads_the_full_checkpoint(monkeypatch, http_server, vgg16_checkpoints):
    path = serve_as_official(monkeypatch, http_server, vggnet.VGG16_Weights.IMAGENET1K_V1, vgg16_checkpoints.zip)
    model = vggnet.vgg16(weights=tvm.VGG16_Weights.DEFAULT, progress=False)
    assert fingerprint(model.state_dict()) == vgg16_checkpoints.fingerprint
    with pytest.warns(UserWarning) as caught:
        again = vggnet.vgg16(True)  # torchvision's positional pretrained: IMAGENET1K_V1, from the cache now
    assert fingerprint(again.state_dict()) == vgg16_checkpoints.fingerprint
    assert http_server.count(path) == 1
    assert [w.filename for w in caught] == [__file__] * 2  # the warnings point at the caller


@pytest.mark.slow
def test_torchvisions_ssd300_builds_on_a_vggnet_backbone(monkeypatch, http_server, vgg16_checkpoints):
    """ssd300_vgg16 verifies its weights_backbone with torchvision's enum, then calls `vgg16(weights=...)`:
    with vggnet's builder in that place, torchvision's member must resolve to vggnet's record."""
    ssd = pytest.importorskip("torchvision.models.detection.ssd")
    served = vgg16_checkpoints.legacy
    path = serve_as_official(monkeypatch, http_server, vggnet.VGG16_Weights.IMAGENET1K_FEATURES, served)
    calls = []

    def vggnet_vgg16(**kwargs):
        calls.append(kwargs)
        return vggnet.vgg16(**kwargs)

    monkeypatch.setattr(ssd, "vgg16", vggnet_vgg16)
    detector = ssd.ssd300_vgg16(weights_backbone=tvm.VGG16_Weights.IMAGENET1K_FEATURES, num_classes=3).eval()
    assert calls == [{"weights": tvm.VGG16_Weights.IMAGENET1K_FEATURES, "progress": True}]
    assert http_server.count(path) == 1
    state = torch.load(served.path, weights_only=True)
    convs = [m for m in detector.backbone.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 10  # conv1_1 .. conv4_3
    for conv, index in zip(convs, [0, 2, 5, 7, 10, 12, 14, 17, 19, 21], strict=True):
        assert torch.equal(conv.weight, state[f"features.{index}.weight"])
        assert torch.equal(conv.bias, state[f"features.{index}.bias"])
    with torch.no_grad():
        (detections,) = detector([torch.rand(3, 300, 300)])
    assert set(detections) == {"boxes", "scores", "labels"} and detections["boxes"].shape[1:] == (4,)


def _warnings(call):
    """(category, message) of every warning `call` emits, and what it returned or raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            outcome = call()
        except Exception as err:
            outcome = type(err)
    return [(w.category, str(w.message)) for w in caught], outcome


def _as_vggnet_words(message):
    return message.replace("since 0.13", "since torchvision 0.13").replace(
        "a weight enum or `None`", "a weight enum, its name, a vggnet.Weights record or `None`"
    )


LEGACY_CALLS = {
    "vgg11(False)": ((False,), {}),
    "vgg11(True)": ((True,), {}),
    "vgg11(True, False)": ((True, False), {}),
    "vgg11(weights=True)": ((), {"weights": True}),
    "vgg11(weights=False)": ((), {"weights": False}),
    "vgg11(pretrained=True)": ((), {"pretrained": True}),
    "vgg11(pretrained=False)": ((), {"pretrained": False}),
    "vgg11(pretrained=True, progress=False)": ((), {"pretrained": True, "progress": False}),
    "vgg11(member)": (("DEFAULT",), {}),
    "vgg11(None)": ((None,), {}),
    "vgg11(weights=None)": ((), {"weights": None}),
}


@pytest.mark.parametrize("call", LEGACY_CALLS)
def test_legacy_calls_warn_as_torchvision_does(call):
    """Same warnings (UserWarning, torchvision's words naming vggnet's enum) for the same legacy call.
    A bogus keyword stops both builders after the warnings and before any download."""
    args, kwargs = LEGACY_CALLS[call]
    if args and args[0] == "DEFAULT":
        ours_args, their_args = (vggnet.VGG11_Weights.DEFAULT,), (tvm.VGG11_Weights.DEFAULT,)
    else:
        ours_args = their_args = args
    ours, ours_outcome = _warnings(lambda: vggnet.vgg11(*ours_args, **kwargs, bogus=1))
    theirs, their_outcome = _warnings(lambda: tvm.vgg11(*their_args, **kwargs, bogus=1))
    assert their_outcome is TypeError and issubclass(ours_outcome, TypeError)  # caught as torchvision's is
    assert ours == [(category, _as_vggnet_words(message)) for category, message in theirs]
    assert all(category is UserWarning for category, _ in ours)  # shown by default, unlike DeprecationWarning


@pytest.mark.slow
def test_legacy_calls_choose_the_weights_torchvision_chooses(monkeypatch):
    monkeypatch.setenv("VGGNET_OFFLINE", "1")  # a fetch fails at once, naming the file it wanted
    for call in (lambda: vggnet.vgg11(True), lambda: vggnet.vgg11(weights=True), lambda: vggnet.vgg11(pretrained=1)):
        caught, outcome = _warnings(call)
        assert outcome is not None and issubclass(outcome, FileNotFoundError)  # NotCachedError is one
        assert "`weights=VGG11_Weights.IMAGENET1K_V1`" in caught[-1][1]
        assert "You can also use `weights=VGG11_Weights.DEFAULT`" in caught[-1][1]
    with pytest.raises(FileNotFoundError, match=r"vgg11-8a719046\.pth"), pytest.warns(UserWarning):
        vggnet.vgg11(True)
    for call in (lambda: vggnet.vgg11(False), lambda: vggnet.vgg11(pretrained=False), lambda: vggnet.vgg11(None)):
        torch.manual_seed(3)
        caught, model = _warnings(call)
        torch.manual_seed(3)
        assert torch.equal(model.features[0].weight, vggnet.vgg11().features[0].weight)  # random init: weights None
    caught, model = _warnings(lambda: vggnet.get_model("vgg11", pretrained=False))
    assert isinstance(model, vggnet.VGG) and [c for c, _ in caught] == [UserWarning, UserWarning]


def test_positional_progress_is_used_and_bad_positional_calls_are_refused(monkeypatch, http_server, small_checkpoints):
    path = serve_as_official(monkeypatch, http_server, vggnet.VGG11_Weights.IMAGENET1K_V1, small_checkpoints.zip)
    seen = []
    real = vggnet.VGG11_Weights.IMAGENET1K_V1.value.get_state_dict

    def spy(progress=True, **kwargs):
        seen.append(progress)
        return real(progress=progress, **kwargs)

    monkeypatch.setattr(Weights, "get_state_dict", lambda self, **kwargs: spy(**kwargs))
    positional = pytest.warns(UserWarning, match="Using 'weights' and 'progress' as positional")
    with positional, pytest.raises(RuntimeError, match="does not fit"):
        vggnet.vgg11(vggnet.VGG11_Weights.DEFAULT, False)
    assert seen == [False] and http_server.count(path) == 1
    with pytest.raises(TypeError, match=r"vgg11\(\) takes at most 2 positional arguments \(weights, progress\), got 3"):
        vggnet.vgg11(True, False, 3)
    with pytest.raises(TypeError, match=r"got weights both positionally and as weights="):
        vggnet.vgg11(True, weights="DEFAULT")
    with pytest.raises(ValueError, match="either weights= or the deprecated pretrained="), pytest.warns(UserWarning):
        vggnet.vgg11(True, pretrained=True)


# --- real signatures (issue 25) ------------------------------------------------------------------------------

ARGUMENTS = ["weights", "progress", "num_classes", "head", "in_chans", "dropout", "init_weights", "global_pool",
             "features_only", "out_indices", "device"]  # fmt: skip


def documented(doc: str) -> list[str]:
    """The names an Args: section lists (a line "name: ..." or "a, b, c: ..." four spaces in)."""
    args = doc.split("Args:")[1].split("Returns:")[0]
    names = []
    for line in args.splitlines():
        if line.startswith("        ") and not line.startswith("         ") and ":" in line:
            names += [n.strip() for n in line.split(":")[0].split(",") if n.strip()]
    return names


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_builders_show_every_argument_with_its_type_default_and_description(arch):
    builder = BUILDERS[arch]
    params = inspect.signature(builder).parameters  # what help() and IDEs show (functools.wraps keeps it)
    assert list(params) == ARGUMENTS
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY and p.annotation is not inspect.Parameter.empty
               for p in params.values())  # fmt: skip
    assert params["dropout"].default == 0.5 and params["global_pool"].default == "avg"
    assert get_args(params["head"].annotation)[0] == Literal["vgg", "gap", "fc7"]
    assert documented(builder.__doc__) == ARGUMENTS and "Raises:" in builder.__doc__
    assert vggnet.get_model_weights(builder).__name__ in str(params["weights"].annotation)


def test_get_model_shows_the_builders_arguments():
    params = inspect.signature(vggnet.get_model).parameters
    assert list(params) == ["name", *ARGUMENTS, "pretrained"]
    assert all(p.annotation is not inspect.Parameter.empty for p in params.values())
    assert set(documented(vggnet.get_model.__doc__)) == set(params)
    model = vggnet.get_model("vgg11", head="gap", num_classes=3, device="meta", global_pool="avg")
    assert (model.head, model.num_classes) == ("gap", 3)
