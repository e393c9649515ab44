"""Named taps (one naming scheme for the model, summary and losses), new heads and other input channels."""

import hashlib
import logging
import re

import pytest
import torch
from torch import nn

import vggnet
from tests.helpers import HEAD_KINDS, HEAD_TAPS, arch_matrix, head_model, randomize_batchnorm, save_seeded_vgg11
from tests.reference import ARCHS, LAYOUT
from vggnet.deploy.inference import fold_batchnorm
from vggnet.models.summary import summarize
from vggnet.models.taps import TapInfo, feature_names, layer_names, module_names
from vggnet.models.vgg import adapt_input_conv
from vggnet.seeing.losses import PerceptualLoss

HEAD = ["avgpool", "fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8"]


pytestmark = pytest.mark.usefixtures("cache")  # VGGNET_HOME in tmp_path/cache; TORCH_HOME is private anyway


def seeded(arch: str, seed: int = 0, **kwargs) -> vggnet.VGG:
    torch.manual_seed(seed)
    model = vggnet.get_model(arch, **kwargs).eval()
    return randomize_batchnorm(model)  # so that BatchNorm taps differ from conv taps


def by_hand(model: vggnet.VGG, x: torch.Tensor, index: int) -> torch.Tensor:
    """Output of tap number `index`, by slicing the plain network (what users do with features[:16])."""
    n = len(model.features)
    if index < n:
        return model.features[: index + 1](x.clone())
    pooled = model.avgpool(model.features(x.clone()))
    if index == n:
        return pooled
    # fc6 -> classifier[:1], relu6 -> [:2], drop6 -> [:3], ..., fc8 -> [:7]
    return model.classifier[: index - n](torch.flatten(pooled, 1))


@pytest.mark.parametrize("arch", ARCHS)
def test_layer_names_are_the_papers(arch):
    model = vggnet.get_model(arch, device="meta")
    assert model.layer_names() == [*feature_names(arch), *HEAD]
    assert len(model.layer_names()) == len(model.features) + 8
    assert model.layer_names()[-9:] == ["pool5", *HEAD]


@pytest.mark.parametrize("arch", list(LAYOUT))
def test_layer_names_follow_the_reference_layout(arch):  # from test_config.py, where config.layer_names was
    length, convs, pools = LAYOUT[arch]
    names = feature_names(arch)
    assert len(names) == length
    assert [i for i, n in enumerate(names) if n.startswith("conv")] == convs
    assert [i for i, n in enumerate(names) if n.startswith("pool")] == pools
    assert names[-1] == "pool5" and names[0] == "conv1_1"
    assert ("bn1_1" in names) == arch.endswith("_bn")


@pytest.mark.parametrize("arch", arch_matrix(ARCHS))
def test_every_tap_equals_slicing_the_plain_network_by_hand(arch):
    model = seeded(arch)
    x = torch.randn(1, 3, 32, 48)
    names = model.layer_names()
    with torch.no_grad():
        taps = model.extract(x, names)  # all at once: every in-place ReLU follows a stored tap
        assert list(taps) == names
        for i, name in enumerate(names):
            assert torch.equal(taps[name], by_hand(model, x, i)), name


@pytest.mark.slow
def test_pre_activation_taps_survive_the_in_place_relu():
    model = seeded("vgg16")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        taps = model.extract(x, ["conv4_3", "relu4_3", "fc6", "relu6"])
        assert taps["conv4_3"].min() < 0 and taps["fc6"].min() < 0  # really pre-activation
        assert torch.equal(taps["conv4_3"].clamp(min=0), taps["relu4_3"])
        assert torch.equal(taps["conv4_3"], model.features[:22](x))  # conv4_3 is features[21] in vgg16
        assert torch.equal(taps["fc6"].clamp(min=0), taps["relu6"])


@pytest.mark.slow
def test_pre_activation_taps_survive_on_a_batchnorm_folded_model():
    # fold_batchnorm leaves an Identity between each conv and its in-place ReLU
    model = seeded("vgg11_bn")
    folded = fold_batchnorm(model)
    assert isinstance(folded.features[1], nn.Identity) and folded.layer_names()[:3] == ["conv1_1", "bn1_1", "relu1_1"]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        taps = folded.extract(x, ["conv1_1", "bn1_1", "relu1_1", "conv2_1"])
        assert taps["conv1_1"].min() < 0 and torch.equal(taps["conv1_1"], folded.features[:1](x))
        assert torch.equal(taps["bn1_1"], taps["conv1_1"])
        assert torch.equal(taps["conv1_1"].clamp(min=0), taps["relu1_1"])
        torch.testing.assert_close(taps["conv1_1"], model.extract(x, ["bn1_1"])["bn1_1"], atol=1e-5, rtol=1e-5)
        assert folded.extract(x, ["bn1_1", "conv2_1"])["bn1_1"].min() < 0
        loss = PerceptualLoss(folded, layers=["conv1_1"], input_range="normalized")
        reference = PerceptualLoss(model, layers=["bn1_1"], input_range="normalized")
        y = torch.randn(1, 3, 32, 32)
        torch.testing.assert_close(loss(x, y), reference(x, y), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_taps_come_back_in_the_order_asked_and_gradients_flow():
    model = seeded("vgg11")
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    taps = model.extract(x, ["fc7", "relu1_1", "conv3_1"])
    assert list(taps) == ["fc7", "relu1_1", "conv3_1"]
    taps["conv3_1"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.slow
def test_extract_stops_after_the_last_tap_asked_for():
    model = seeded("vgg11")
    called = []
    for name, module in [("conv5_2", model.features[18]), ("fc6", model.classifier[0])]:
        module.register_forward_hook(lambda *_, name=name: called.append(name))
    model.extract(torch.randn(1, 3, 32, 32), ["relu1_1", "pool4"])
    assert called == []
    model.extract(torch.randn(1, 3, 32, 32), ["conv5_2"])
    assert called == ["conv5_2"]


def test_unknown_taps_are_refused_with_the_valid_names():
    model = vggnet.vgg11(device="meta")
    x = torch.empty(1, 3, 32, 32, device="meta")
    with pytest.raises(ValueError, match=r"unknown layers \['conv4_3'\]; valid: conv1_1, relu1_1, pool1"):
        model.extract(x, ["conv4_3"])
    with pytest.raises(
        ValueError, match=r"no layers asked; pass a list of layer names, e.g. \['relu1_2'\]; valid: conv1_1"
    ):
        model.extract(x, [])
    with pytest.raises(ValueError, match=r"unknown layers \['fc9'\]"):  # one name, not ['f', 'c', '9']
        model.extract(x, "fc9")


@pytest.mark.slow
def test_a_single_layer_name_is_a_list_of_one():
    model = seeded("vgg11")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        one = model.extract(x, "fc6")
        assert list(one) == ["fc6"] and torch.equal(one["fc6"], model.extract(x, ["fc6"])["fc6"])


@pytest.mark.parametrize("arch", ARCHS)
def test_tap_info_channels_match_the_outputs(arch):
    model = vggnet.get_model(arch, device="meta")  # shapes only
    info = model.tap_info()
    assert [t.name for t in info] == model.layer_names()
    with torch.no_grad():
        taps = model.extract(torch.empty(1, 3, 64, 64, device="meta"), model.layer_names())
    for t in info:
        assert taps[t.name].shape[1] == t.channels, t.name
        if t.stride is not None:
            assert taps[t.name].shape[-1] == 64 // t.stride, t.name


def test_vgg16_receptive_fields_are_the_known_ones():
    info = {t.name: t for t in vggnet.vgg16(device="meta").tap_info()}
    assert info["conv1_1"] == TapInfo("conv1_1", 64, 1, 3)
    assert info["relu1_2"] == TapInfo("relu1_2", 64, 1, 5)
    assert info["pool1"] == TapInfo("pool1", 64, 2, 6)
    assert info["conv3_3"] == TapInfo("conv3_3", 256, 4, 40)
    assert info["conv5_3"] == TapInfo("conv5_3", 512, 16, 196)
    assert info["pool5"] == TapInfo("pool5", 512, 32, 212)
    assert info["fc7"] == TapInfo("fc7", 4096, None, None)
    assert info["fc8"].channels == 1000


@pytest.mark.slow
def test_receptive_field_is_where_a_pixel_stops_mattering():
    """Numerically: the gradient of one conv3_1 output reaches exactly receptive_field pixels per side."""
    model = seeded("vgg11")
    field = {t.name: t.receptive_field for t in model.tap_info()}["conv3_1"]
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    model.extract(x, ["conv3_1"])["conv3_1"][0, 0, 8, 8].backward()
    rows = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 3)))
    assert int(rows.max() - rows.min() + 1) == field == 18


# --- one naming scheme: the model, the summary and the losses agree ------------------------------


def variant(arch: str, kind: str) -> vggnet.VGG:
    """Shapes only: a meta-device model, plain, BatchNorm-folded or with one input channel."""
    if kind == "folded":
        return fold_batchnorm(vggnet.get_model(arch, device="meta"))
    return vggnet.get_model(arch, device="meta", in_chans=1 if kind == "gray" else 3)


@pytest.mark.parametrize("kind", ["plain", "folded", "gray"])
@pytest.mark.parametrize("arch", ARCHS)
def test_one_scheme_names_every_module_in_the_model_summary_and_losses(arch, kind):
    model = variant(arch, kind)
    names = layer_names(arch)  # from the config table
    assert names == [*feature_names(arch), *HEAD] == layer_names(model) == model.layer_names()
    leaves = [path for path, m in model.named_modules() if not list(m.children())]
    paths = module_names(model)
    assert list(paths) == leaves and list(paths.values()) == names  # every module, in forward order
    if kind == "folded" and arch.endswith("_bn"):
        assert all(type(model.get_submodule(p)) is nn.Identity for p, n in paths.items() if n.startswith("bn"))
    info = model.tap_info()
    assert [t.name for t in info] == names
    rows = summarize(arch).layers
    assert [(row.module, row.name) for row in rows] == list(paths.items())
    assert [row.output_shape[1] for row in rows] == [t.channels for t in info]

    x = torch.empty(1, model.in_channels, 32, 32, device="meta")
    with torch.no_grad():
        taps = model.extract(x, names)
    assert list(taps) == names and [taps[t.name].shape[1] for t in info] == [t.channels for t in info]
    convs = feature_names(model.features)
    loss = PerceptualLoss(model, layers=convs, input_range="normalized")
    with torch.no_grad():
        ours = loss.taps(x)
    assert list(ours) == convs and all(ours[n].shape == taps[n].shape for n in convs)
    with pytest.raises(ValueError, match=r"unknown or non-convolutional layers \['fc6'\]; valid: conv1_1, .*, pool5$"):
        PerceptualLoss(model, layers=["fc6"], input_range="normalized")


@pytest.mark.slow
def test_avgpool_and_the_dropouts_are_taps_too():
    model = seeded("vgg11")
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        taps = model.extract(x, ["avgpool", "relu6", "drop6", "drop7"])
        assert taps["avgpool"].shape == (2, 512, 7, 7)
        assert torch.equal(taps["avgpool"], model.avgpool(model.features(x)))
        assert torch.equal(taps["drop6"], taps["relu6"])  # eval mode: dropout is the identity
        model.train()
        taps = model.extract(x, ["relu6", "drop6"])
    dropped = taps["drop6"] == 0
    assert dropped.any() and (taps["relu6"] > 0).logical_and(dropped).any()  # really dropped out
    torch.testing.assert_close(taps["drop6"][~dropped], 2 * taps["relu6"][~dropped])  # kept ones scaled by 1/(1-p)


def test_freeze_keeps_a_dropout_training_with_the_linear_after_it():
    model = vggnet.vgg11(device="meta")
    for upto, drop6_on in (("drop6", True), ("fc7", True), ("relu7", False), ("fc8", False)):
        model.freeze(upto=upto)
        model.train()
        assert not model.classifier[1].training and model.classifier[2].training == drop6_on, upto
        assert model.classifier[3].weight.requires_grad == (upto in ("drop6", "fc7")), upto


def test_names_refuse_what_is_not_a_make_layers_network():
    model = vggnet.vgg11(device="meta")
    with pytest.raises(TypeError, match=r"features\[1\] is a Tanh, which has no VGG layer name"):
        feature_names(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Tanh()))
    model.features = nn.ModuleList(model.features)
    with pytest.raises(TypeError, match="named taps need `features` to be a make_layers Sequential, not ModuleList"):
        model.layer_names()
    with pytest.raises(ValueError, match="unknown model 'vgg17'; valid: vgg11, "):
        layer_names("vgg17")


@pytest.mark.slow
def test_forward_features_and_pre_logits_are_the_taps():
    model = seeded("vgg11", num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        taps = model.extract(x, ["pool5", "relu7", "fc8"])
        features = model.forward_features(x)
        assert torch.equal(features, taps["pool5"])
        assert torch.equal(model.forward_head(features, pre_logits=True), taps["relu7"])
        assert torch.equal(model.forward_head(features), taps["fc8"]) and taps["fc8"].shape == (2, 7)


@pytest.mark.slow
def test_reset_classifier_changes_fc8_only():
    model = seeded("vgg11_bn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.reset_classifier(5)
    after = model.state_dict()
    assert list(after) == list(before)  # the same keys, in the same order
    for key, value in before.items():
        if key.startswith("classifier.6."):
            assert after[key].shape[0] == 5
        else:
            assert torch.equal(after[key], value), key
    fc8 = model.get_classifier()
    assert fc8 is model.classifier[6] and fc8.out_features == model.num_classes == 5
    assert torch.count_nonzero(fc8.bias) == 0 and 0.005 < fc8.weight.std().item() < 0.015
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    for bad in (-1, 2.5, True, "10", None):  # 0 removes fc8 since issue 12 (timm's headless model)
        message = rf"num_classes must be an integer >= 0 \(the outputs of fc8, .*\), got {re.escape(repr(bad))}"
        with pytest.raises(ValueError, match=message):
            model.reset_classifier(bad)
    assert model.num_classes == 5  # untouched by the refused calls


def test_reset_classifier_keeps_device_and_dtype():
    model = vggnet.vgg11(device="meta").to(torch.float64)
    model.reset_classifier(3)
    assert model.get_classifier().weight.dtype == torch.float64
    assert model.get_classifier().weight.device.type == "meta"


# --- other input channels --------------------------------------------------------------------------


def test_one_channel_adaptation_answers_a_gray_image_like_its_rgb_copy():
    torch.manual_seed(0)
    weight = torch.randn(64, 3, 3, 3)
    gray = adapt_input_conv(weight, 1)
    x = torch.randn(2, 1, 16, 16)
    assert torch.allclose(
        nn.functional.conv2d(x, gray, padding=1), nn.functional.conv2d(x.expand(-1, 3, -1, -1), weight, padding=1),
        atol=1e-5,
    )  # fmt: skip


@pytest.mark.parametrize("in_chans", [2, 3, 4, 6, 7])
def test_n_channel_adaptation_keeps_the_response_to_equal_channels(in_chans):
    torch.manual_seed(0)
    weight = torch.randn(8, 3, 3, 3)
    adapted = adapt_input_conv(weight, in_chans)
    assert adapted.shape == (8, in_chans, 3, 3)
    if in_chans % 3 == 0 or in_chans == 2:  # exact for multiples of 3 and for 2 (documented)
        assert torch.allclose(adapted.sum(1), weight.sum(1), atol=1e-5)
    if in_chans >= 3:
        assert torch.allclose(adapted[:, :3], weight * 3 / in_chans)  # colour channels keep their roles


def test_adaptation_refuses_what_it_cannot_adapt():
    with pytest.raises(ValueError, match=r"\(O, 3, k, k\)"):
        adapt_input_conv(torch.zeros(8, 1, 3, 3), 3)
    with pytest.raises(ValueError, match="positive"):
        adapt_input_conv(torch.zeros(8, 3, 3, 3), 0)


@pytest.fixture(scope="module")
def vgg11_file(module_folders):
    path = module_folders.mktemp("vgg11") / "vgg11-own.pth"
    state = save_seeded_vgg11(path, seed=3)
    return state, vggnet.Weights(url=str(path), sha256=hashlib.sha256(path.read_bytes()).hexdigest())


@pytest.mark.slow
def test_gray_model_from_weights_equals_the_original_on_the_rgb_copy(vgg11_file, caplog):
    state, record = vgg11_file
    original = vggnet.vgg11(weights=record).eval()
    with caplog.at_level(logging.INFO, logger="vggnet"):
        gray = vggnet.vgg11(weights=record, in_chans=1).eval()
    assert "from 3 to 1 input channels" in caplog.text
    assert gray.in_channels == 1
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        ours, theirs = gray(x), original(x.expand(-1, 3, -1, -1))
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    for key, value in state.items():  # only the first conv's weight changed
        if key != "features.0.weight":
            assert torch.equal(gray.state_dict()[key], value), key


@pytest.mark.slow
def test_own_record_with_another_head_and_channels(vgg11_file):
    state, record = vgg11_file
    model = vggnet.vgg11(weights=record, num_classes=4, in_chans=5)
    assert model.num_classes == 4 and model.in_channels == 5
    assert model(torch.rand(1, 5, 32, 32)).shape == (1, 4)
    assert torch.equal(model.classifier[3].weight, state["classifier.3.weight"])


def test_in_chans_without_weights_builds_that_many_inputs():
    model = vggnet.vgg13_bn(in_chans=4, device="meta")
    assert model.features[0].weight.shape == (64, 4, 3, 3) and model.in_channels == 4
    with pytest.raises(ValueError, match="expects 4 input channels, got 3"):
        model(torch.empty(1, 3, 32, 32, device="meta"))


# --- every head with every tap helper (issue 25): the names follow the head ------------------------------

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def forward_values(model: vggnet.VGG, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """model(x), and each named module's output as the forward computed it (cloned before any in-place ReLU)."""
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str, output: torch.Tensor) -> None:  # returns None: a hook's return value replaces the output
        seen[name] = output.clone()

    hooks = [
        model.get_submodule(path).register_forward_hook(lambda m, i, o, name=name: keep(name, o))
        for path, name in module_names(model).items()
    ]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return out, seen


@pytest.mark.parametrize("kind", HEAD_KINDS)
@pytest.mark.slow
def test_layer_names_follow_the_head(kind):
    model = head_model(kind)
    names = model.layer_names()
    assert names == [*feature_names(model.features), *HEAD_TAPS[kind]]
    assert list(module_names(model).values()) == names
    for path in module_names(model):
        model.get_submodule(path)  # every name is a module of the model


@pytest.mark.parametrize("kind", HEAD_KINDS)
@pytest.mark.slow
def test_extract_gives_the_forwards_own_values_for_every_head(kind):
    model = head_model(kind)
    out, seen = forward_values(model, X)
    names = model.layer_names()
    with torch.no_grad():
        taps = model.extract(X, names)
    assert list(taps) == names == list(seen)
    for name in names:
        assert torch.equal(taps[name], seen[name]), name
    assert torch.equal(taps[names[-1]].flatten(1), out.flatten(1))  # the last tap is the output


@pytest.mark.parametrize("kind", HEAD_KINDS)
@pytest.mark.slow
def test_tap_info_matches_the_taps_for_every_head(kind):
    model = head_model(kind)
    info = model.tap_info()
    with torch.no_grad():
        taps = model.extract(X, model.layer_names())
    assert [t.name for t in info] == list(taps)
    assert [t.channels for t in info] == [taps[t.name].shape[1] for t in info]
    head = info[len(feature_names(model.features)) :]
    assert all(t.stride is None and t.receptive_field is None for t in head)


def trainable(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def params_from(model: vggnet.VGG, upto: str) -> set[str]:
    """What freeze(upto=...) leaves trainable: the parameters of the named layers from `upto` on, and those of
    no named layer (fc6 and fc7 of a model without pooling, which the forward does not run)."""
    paths = list(module_names(model))
    start = list(module_names(model).values()).index(upto)

    def params(chosen: list[str]) -> set[str]:
        return {f"{path}.{name}" for path in chosen for name, _ in model.get_submodule(path).named_parameters()}

    return params(paths[start:]) | ({name for name, _ in model.named_parameters()} - params(paths))


@pytest.mark.parametrize("kind", HEAD_KINDS)
@pytest.mark.slow
def test_freeze_and_unfreeze_by_name_for_every_head(kind):
    model = head_model(kind)
    last = model.layer_names()[-1]
    for upto in ("conv4_1", last):
        model.freeze(upto=upto)
        assert trainable(model) == params_from(model, upto), upto
    model.freeze()
    head = {n for n, _ in model.named_parameters() if not n.startswith("features.")}
    assert trainable(model) == head
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert not any(m.training for m in model.features)  # frozen BatchNorm keeps its statistics
    out = model(X)
    used = head if model.global_pool else set()  # without pooling fc6 and fc7 are kept but not run
    if used:  # no fc8, an Identity or no pooling leave nothing to train
        out.sum().backward()
    assert all(p.grad is None for p in model.features.parameters())
    assert all(p.grad is not None for n, p in model.named_parameters() if n in used)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items() if k.startswith("features."))
    model.unfreeze()
    assert trainable(model) == {n for n, _ in model.named_parameters()}
    assert all(m.training for m in model.modules())


def test_the_gap_head_takes_every_tap_helper():
    """The quick representative of the matrix above: the head the README recommends for small data."""
    model = head_model("gap")
    assert model.layer_names()[-3:] == ["pool5", "gap", "fc"]
    out, seen = forward_values(model, X)
    with torch.no_grad():
        taps = model.extract(X, ["relu5_2", "gap", "fc"])
    assert torch.equal(taps["gap"], seen["gap"]) and torch.equal(taps["fc"], out)
    assert [(t.name, t.channels) for t in model.tap_info()[-2:]] == [("gap", 512), ("fc", 10)]
    model.freeze(upto="conv4_1")
    assert trainable(model) == params_from(model, "conv4_1")
    model.freeze(upto="fc")
    assert trainable(model) == {"classifier.0.weight", "classifier.0.bias"}
    model.reset_classifier(0)
    assert model.layer_names()[-1] == "gap" and model(X).shape == (2, 512)
