"""The network: layout, parameter and MAC counts, init and output parity with torchvision, refusals."""

import logging

import pytest
import torch
from torch import nn

import vggnet
import vggnet.models.interop
from tests.helpers import HEAD_KINDS, arch_matrix, head_model
from tests.reference import ARCHS, LAYOUT, RECORDS, VGG16_CLASSIFIER_PARAMS, VGG16_CONV_PARAMS, VGG16_FC6_PARAMS
from vggnet.deploy.inference import fold_batchnorm
from vggnet.models.config import MIN_SIZE, arch_config
from vggnet.models.vgg import VGG, make_layers

tvm = pytest.importorskip("torchvision.models")


def meta_model(arch: str, **kwargs) -> VGG:
    with torch.device("meta"):
        return vggnet.get_model(arch, **kwargs)


def macs(model: VGG, height: int, width: int) -> int:
    """Multiply-adds of every conv and linear layer, counted by hand from the shapes."""
    total = 0
    for m in model.features:
        if isinstance(m, nn.Conv2d):
            total += m.in_channels * m.out_channels * 9 * height * width
        elif isinstance(m, nn.MaxPool2d):
            height, width = height // 2, width // 2
    return total + sum(m.in_features * m.out_features for m in model.classifier if isinstance(m, nn.Linear))


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_count_matches_the_record(arch):
    model = meta_model(arch)
    assert sum(p.numel() for p in model.parameters()) == RECORDS[arch][2]


@pytest.mark.parametrize("arch", ARCHS)
def test_macs_at_224_match_the_record_gflops(arch):
    assert round(macs(meta_model(arch), 224, 224) / 1e9, 3) == RECORDS[arch][5]


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_keys_and_shapes_follow_the_checkpoint_layout(arch):
    length, convs, pools = LAYOUT[arch]
    model = meta_model(arch)
    assert len(model.features) == length
    assert [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)] == convs
    assert [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)] == pools
    state = model.state_dict()
    with torch.device("meta"):  # the layout only: no time spent initialising
        reference = tvm.get_model(arch, weights=None).state_dict()
    assert list(state) == list(reference)  # order too: checkpoints load strictly with no renaming
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in reference.items()}
    assert [k for k in state if k.startswith("classifier")] == [
        "classifier.0.weight", "classifier.0.bias", "classifier.3.weight",
        "classifier.3.bias", "classifier.6.weight", "classifier.6.bias",
    ]  # fmt: skip


def test_vgg16_parameter_split_between_classifier_and_convolutions():
    model = meta_model("vgg16")
    classifier = sum(p.numel() for p in model.classifier.parameters())
    assert classifier == VGG16_CLASSIFIER_PARAMS
    assert sum(p.numel() for p in model.classifier[0].parameters()) == VGG16_FC6_PARAMS
    assert sum(p.numel() for p in model.features.parameters()) == VGG16_CONV_PARAMS
    assert round(classifier / (classifier + VGG16_CONV_PARAMS), 2) == 0.89


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("height", "width", "pooled"), [(224, 224, (7, 7)), (97, 161, (3, 5)), (32, 32, (1, 1))])
def test_forward_shapes(arch, height, width, pooled):
    model = meta_model(arch, num_classes=10)
    x = torch.empty(2, 3, height, width, device="meta")
    assert model.forward_features(x).shape == (2, 512, *pooled)
    assert model(x).shape == (2, 10)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 4096)


@pytest.mark.parametrize("arch", arch_matrix(ARCHS))
@pytest.mark.slow
def test_same_seed_gives_torchvisions_parameters_bit_for_bit(arch):
    torch.manual_seed(1234)
    ours = vggnet.get_model(arch).state_dict()
    torch.manual_seed(1234)
    theirs = tvm.get_model(arch, weights=None).state_dict()
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    # and the draws really are random: another seed differs
    torch.manual_seed(4321)
    assert not torch.equal(vggnet.get_model(arch).features[0].weight, ours["features.0.weight"])


@pytest.mark.parametrize("arch", ARCHS)
def test_same_state_dict_gives_torchvisions_outputs(arch):
    """All eight, cheaply: both built on the meta device, filled with one seeded state dict (no init)."""
    with torch.device("meta"):
        reference = tvm.get_model(arch, weights=None)
    reference = reference.to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in reference.state_dict().items():
            if name.endswith("running_var"):  # non-trivial running statistics so BatchNorm matters
                tensor.uniform_(0.5, 1.5, generator=generator)
            elif name.endswith("num_batches_tracked"):
                tensor.zero_()
            else:
                tensor.uniform_(-0.05, 0.05, generator=generator)
    ours = meta_model(arch).to_empty(device="cpu").eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 80, generator=generator)
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))


def test_vgg16_outputs_equal_torchvision_at_224():
    torch.manual_seed(0)
    reference = tvm.vgg16().eval()
    ours = vggnet.vgg16(init_weights=False).eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((3, 224, 224), r"4-D batch .* got a 3-D tensor of shape \(3, 224, 224\).*unsqueeze\(0\)"),
        ((1, 1, 224, 224), r"expects 3 input channels, got 1"),
        ((1, 3, 31, 224), r"at least 32x32 pixels .* got 31x224"),
        ((1, 3, 224, 16), r"at least 32x32 pixels .* got 224x16"),
    ],
)
def test_forward_refuses_bad_input_clearly(shape, message):
    model = meta_model("vgg11")
    with pytest.raises(ValueError, match=message):
        model(torch.empty(*shape, device="meta"))


def test_minimum_size_is_what_five_pools_need():
    # One pixel less than MIN_SIZE makes the plain layers fail deep inside; that is what we refuse early.
    features = make_layers(arch_config("vgg11")[0])
    with pytest.raises(RuntimeError):
        features(torch.zeros(1, 3, MIN_SIZE - 1, MIN_SIZE - 1))
    assert features(torch.zeros(1, 3, MIN_SIZE, MIN_SIZE)).shape == (1, 512, 1, 1)


def test_num_classes_and_dropout():
    model = meta_model("vgg11", num_classes=7, dropout=0.2)
    assert model.num_classes == 7 and model.get_classifier().out_features == 7
    assert model.classifier[2].p == 0.2 and model.classifier[5].p == 0.2
    with pytest.raises(ValueError, match="num_classes"):
        meta_model("vgg11", num_classes=-1)  # 0 is timm's headless model since issue 12 (test_dropin)


@pytest.mark.slow
def test_building_prints_nothing_and_touches_no_file(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VGGNET_HOME", str(tmp_path / "cache"))
    vggnet.vgg11()
    assert capsys.readouterr() == ("", "")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_custom_features_module_still_trains_and_evaluates():
    # torchvision-style injection of any `features`: train()/eval() must not need the tap table.
    model = VGG(nn.Sequential(nn.Conv2d(3, 512, 3, padding=1), nn.Sequential(nn.ReLU())), num_classes=3)
    model.features = nn.ModuleList(model.features)  # not a make_layers Sequential any more
    assert model.train().training and not model.eval().training


# --- drop-in (issue 12): TorchScript, FX, export, compile, torchvision's feature extraction, timm ---------

SMALL = (2, 3, 32, 32)  # the smallest input five pools take: keeps the vgg11 checks fast


def dropin_model(kind: str) -> tuple[nn.Module, torch.Tensor]:
    """A seeded eval-mode vgg11 of each kind the tools must handle, and an input for it."""
    torch.manual_seed(0)
    x = torch.randn(SMALL)
    if kind == "plain":
        return vggnet.vgg11().eval(), x
    if kind == "bn":  # trained-looking running statistics, so eval-mode BatchNorm is not an identity
        model = vggnet.vgg11_bn()
        with torch.no_grad():
            model.train()(torch.randn(4, 3, 32, 32))
        return model.eval(), x
    if kind == "folded":
        model, x = dropin_model("bn")
        return fold_batchnorm(model), x
    if kind == "gray":
        return vggnet.vgg11(in_chans=1).eval(), torch.randn(2, 1, 32, 32)
    if kind == "headless":
        return vggnet.vgg11(num_classes=0).eval(), x
    if kind == "checkpointed":  # eval mode, but gradients on: forward takes the checkpointing path
        model = vggnet.vgg11().eval()
        model.set_grad_checkpointing()
        return model, x
    if kind == "features_only":
        return vggnet.vgg11(features_only=True).eval(), x
    raise AssertionError(kind)


DROPIN_KINDS = ["plain", "bn", "folded", "gray", "headless", "checkpointed", "features_only"]


def assert_same_outputs(got, expected) -> None:
    """Bit-for-bit equality: the tools run the same kernels on the same CPU as eager mode."""
    got, expected = (got, expected) if isinstance(expected, list) else ([got], [expected])
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=0, rtol=0)


@pytest.mark.parametrize("kind", DROPIN_KINDS)
@pytest.mark.slow
def test_torch_jit_script_gives_eager_outputs(kind, tmp_path):
    model, x = dropin_model(kind)
    scripted = torch.jit.script(model)
    assert_same_outputs(scripted(x), model(x))
    torch.jit.save(scripted, tmp_path / "model.pt")  # nothing Python-only was left in the graph
    assert_same_outputs(torch.jit.load(tmp_path / "model.pt")(x), model(x))


@pytest.mark.parametrize("kind", DROPIN_KINDS)
@pytest.mark.slow
def test_fx_symbolic_trace_gives_eager_outputs(kind):
    model, x = dropin_model(kind)
    traced = torch.fx.symbolic_trace(model)
    assert_same_outputs(traced(x), model(x))


@pytest.mark.parametrize("kind", DROPIN_KINDS)
@pytest.mark.slow
def test_torch_export_gives_eager_outputs(kind):
    model, x = dropin_model(kind)
    program = torch.export.export(model, (x,))
    assert_same_outputs(program.module()(x), model(x))


@pytest.mark.slow
def test_torch_compile_fullgraph_has_no_graph_break():
    model, x = dropin_model("plain")
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # fullgraph: a break would raise
    assert_same_outputs(compiled(x), model(x))


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager():
    model, x = dropin_model("bn")
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-4)  # fused kernels: float rounding


@pytest.mark.slow
def test_input_checks_still_guard_eager_calls():
    model = vggnet.vgg11().eval()
    with pytest.raises(ValueError, match="at least 32x32"):
        model(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="expects 3 input channels"):
        vggnet.vgg11(features_only=True)(torch.zeros(1, 1, 32, 32))


def test_node_names_are_torchvisions_modules():
    for arch in ARCHS:
        with torch.device("meta"):  # layouts only: no time spent initialising
            modules = dict(tvm.get_model(arch, weights=None).named_modules())
        names = vggnet.models.interop.node_names(arch)
        assert list(names)[-8:] == ["avgpool", "fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8"]
        kinds = {"conv": nn.Conv2d, "bn": nn.BatchNorm2d, "relu": nn.ReLU, "pool": nn.MaxPool2d, "fc": nn.Linear,
                 "avgpool": nn.AdaptiveAvgPool2d, "drop": nn.Dropout}  # fmt: skip
        for paper, node in names.items():
            kind = paper.rstrip("0123456789_")
            assert isinstance(modules[node], kinds[kind]), (arch, paper, node)
        assert len(names) == len(meta_model(arch).layer_names())
    with pytest.raises(ValueError, match="vgg16_bn"):
        vggnet.models.interop.node_names("vgg17")


@pytest.mark.parametrize("arch", ["vgg11", "vgg11_bn"])
@pytest.mark.slow
def test_create_feature_extractor_with_torchvision_node_names(arch):
    feature_extraction = pytest.importorskip("torchvision.models.feature_extraction")
    torch.manual_seed(0)
    model, reference = vggnet.get_model(arch).eval(), tvm.get_model(arch, weights=None).eval()
    reference.load_state_dict(model.state_dict())
    names = vggnet.models.interop.node_names(arch)
    # Outputs no in-place ReLU overwrites afterwards: ReLUs, pools and the classifier's last layers.
    taps = ["relu1_1", "relu3_2", "pool3", "relu5_2", "pool5", "relu6", "relu7", "fc8"]
    nodes = {names[tap]: tap for tap in taps}
    assert set(nodes) <= set(feature_extraction.get_graph_node_names(model)[1])
    x = torch.randn(SMALL)
    ours = feature_extraction.create_feature_extractor(model, return_nodes=nodes)(x)
    theirs = feature_extraction.create_feature_extractor(reference, return_nodes=nodes)(x)
    expected = model.extract(x, taps)
    for tap in taps:
        assert_same_outputs(ours[tap], expected[tap])
        assert_same_outputs(theirs[tap], expected[tap])
    # A conv node is overwritten by the in-place ReLU after it, in torchvision's VGG as in ours.
    conv = {names["conv5_2"]: "conv5_2"}
    got = feature_extraction.create_feature_extractor(model, return_nodes=conv)(x)["conv5_2"]
    assert_same_outputs(got, feature_extraction.create_feature_extractor(reference, return_nodes=conv)(x)["conv5_2"])


def timm_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A vggnet (torchvision) VGG state dict in timm's layout: fc6/fc7 as 7x7/1x1 convs, fc8 as head.fc."""
    renamed = {"classifier.0": "pre_logits.fc1", "classifier.3": "pre_logits.fc2", "classifier.6": "head.fc"}
    out = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if module == "classifier.0" and leaf == "weight":
            value = value.reshape(-1, 512, 7, 7)
        elif module == "classifier.3" and leaf == "weight":
            value = value.reshape(-1, value.shape[1], 1, 1)
        out[f"{renamed.get(module, module)}.{leaf}"] = value
    return out


@pytest.mark.parametrize("arch", ["vgg11", "vgg11_bn", "vgg16"])
@pytest.mark.slow
def test_feature_info_and_widths_are_timms(arch):
    timm = pytest.importorskip("timm")
    theirs = timm.create_model(arch, pretrained=False)
    with torch.device("meta"):
        ours = vggnet.get_model(arch)
    assert ours.feature_info == theirs.feature_info
    assert (ours.num_features, ours.head_hidden_size) == (theirs.num_features, theirs.head_hidden_size) == (512, 4096)


@pytest.mark.parametrize(
    ("arch", "out_indices"), [("vgg11", None), ("vgg11_bn", None), ("vgg13", (1, 3)), ("vgg11", (-1,))]
)
@pytest.mark.slow
def test_features_only_matches_timms(arch, out_indices):
    timm = pytest.importorskip("timm")
    picked = {} if out_indices is None else {"out_indices": out_indices}
    ours = vggnet.get_model(arch, features_only=True, **picked).eval()
    theirs = timm.create_model(arch, features_only=True, pretrained=False, **picked).eval()
    # timm's feature model flattens `features.N` into `features_N`; the tensors are the same.
    theirs.load_state_dict({k.replace("features.", "features_"): v for k, v in ours.state_dict().items()})
    assert ours.feature_info.channels() == theirs.feature_info.channels()
    assert ours.feature_info.reduction() == theirs.feature_info.reduction()
    assert ours.feature_info.module_name() == theirs.feature_info.module_name()
    x = torch.randn(2, 3, 64, 64)
    got, expected = ours(x), theirs(x)
    assert [t.shape for t in got] == [t.shape for t in expected]
    assert_same_outputs(got, expected)
    assert len(got) == (6 if out_indices is None else len(out_indices))


@pytest.mark.slow
def test_features_only_taps_are_the_named_taps():
    torch.manual_seed(0)
    model = vggnet.vgg16().eval()
    features = vggnet.models.vgg.VGGFeatures(model)
    x = torch.randn(SMALL)
    taps = model.extract(x, ["relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3", "pool5"])
    assert_same_outputs(features(x), list(taps.values()))
    assert len(vggnet.models.vgg.VGGFeatures(model, out_indices=[2]).features) == 16  # stops at relu3_3
    assert "classifier.0.weight" not in features.state_dict()
    for bad in ([], [6], [True], ["relu1_2"]):
        with pytest.raises(ValueError, match="out_indices must be stage indices 0-5"):
            vggnet.models.vgg.VGGFeatures(model, out_indices=bad)
    with pytest.raises(TypeError, match="out_indices"):
        vggnet.vgg11(out_indices=[1])  # out_indices only goes with features_only=True
    with pytest.raises(ValueError, match="out_indices"):  # before the checkpoint is fetched: no server here
        vggnet.vgg11(weights=vggnet.Weights(url="http://127.0.0.1:9/x.pth", sha256="0" * 64), features_only=True,
                     out_indices=[7])  # fmt: skip


@pytest.mark.slow
def test_headless_model_gives_timms_pooled_features():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ours = vggnet.vgg11(num_classes=0).eval()
    theirs = timm.create_model("vgg11", num_classes=0, pretrained=False).eval()
    theirs.load_state_dict(timm_state(ours.state_dict()))
    assert "classifier.6.weight" not in ours.state_dict() and ours.num_classes == 0
    x = torch.randn(2, 3, 64, 64)  # at most 224 px timm's conv head sees what the adaptive 7x7 pool gives
    got = ours(x)
    assert got.shape == theirs(x).shape == (2, 4096)
    # timm's fc6/fc7 are convolutions: the same sums in another order, so float rounding differs.
    torch.testing.assert_close(got, theirs(x), atol=1e-5, rtol=1e-4)
    assert_same_outputs(got, ours.forward_head(ours.forward_features(x), pre_logits=True))
    assert_same_outputs(got, ours.classifier[:5](torch.flatten(ours.avgpool(ours.features(x)), 1)))  # relu7


@pytest.mark.slow
def test_reset_classifier_zero_and_back():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = vggnet.vgg11().eval()
    reference = timm.create_model("vgg11", pretrained=False).eval()
    reference.load_state_dict(timm_state(model.state_dict()))
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-4)  # logits too
    pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
    model.reset_classifier(0)
    reference.reset_classifier(0)
    assert model.num_classes == 0 and isinstance(model.classifier[6], nn.Identity)
    assert_same_outputs(model(x), pre_logits)
    assert model(x).shape == reference(x).shape
    with pytest.raises(TypeError, match="reset_classifier"):
        model.get_classifier()
    model.reset_classifier(5)
    assert model.num_classes == 5 and model(x).shape == (2, 5)
    assert model.get_classifier().weight.std().item() == pytest.approx(0.01, rel=0.1)  # torchvision's init
    with pytest.raises(ValueError, match="num_classes must be an integer >= 0"):
        model.reset_classifier(-1)


@pytest.mark.slow
def test_pretrained_cfg_has_timms_keys_and_values():
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        model = vggnet.vgg16(num_classes=10)
    theirs = timm.create_model("vgg16", pretrained=False).pretrained_cfg
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg
    for key in ("input_size", "crop_pct", "crop_mode", "mean", "std", "interpolation", "first_conv", "pool_size",
                "fixed_input_size", "license"):  # fmt: skip
        assert cfg[key] == theirs[key], key
    assert cfg["num_classes"] == 10 and cfg["url"] == vggnet.VGG16_Weights.DEFAULT.url
    assert isinstance(model.get_submodule(cfg["classifier"]), nn.Linear)
    assert isinstance(model.get_submodule(cfg["first_conv"]), nn.Conv2d)
    caffe = vggnet.models.vgg.pretrained_cfg(vggnet.VGG16_Weights.IMAGENET1K_FEATURES.value)
    assert caffe["mean"] == vggnet.VGG16_Weights.IMAGENET1K_FEATURES.value.mean and caffe["num_classes"] == 1000
    assert vggnet.vgg11(features_only=True).pretrained_cfg["input_size"] == (3, 224, 224)


# --- every head with every model helper (issue 25) ------------------------------------------------------------

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("kind", HEAD_KINDS)
@pytest.mark.slow
def test_reset_classifier_to_zero_and_to_n_for_every_head(kind):
    model = head_model(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        features = model.forward_features(X)
        pre_logits = model.forward_head(features, pre_logits=True)
        model.reset_classifier(0)
        assert model.num_classes == 0 and torch.equal(model(X), pre_logits)
        assert pre_logits.shape[1] == model.head_hidden_size
        model.reset_classifier(5)  # without pooling ("unpooled"), the classifier brings the pool back
        fc8 = model.get_classifier()
        assert model.num_classes == 5 and (fc8.in_features, fc8.out_features) == (model.head_hidden_size, 5)
        pooled = model.forward_head(features, pre_logits=True)
        assert torch.equal(pooled, pre_logits) or kind == "unpooled"
        assert torch.equal(model(X), nn.functional.linear(pooled, fc8.weight, fc8.bias))
        model.reset_classifier(0, "")  # no pooling, no classifier: the feature map
        assert torch.equal(model(X), features) and model.layer_names()[-1] == "pool5"
    assert torch.count_nonzero(fc8.bias) == 0 and 0.005 < fc8.weight.std().item() < 0.015  # torchvision's init
    fc8_keys = {f"{name}.{leaf}" for name, m in model.named_modules() if m is fc8 for leaf in ("weight", "bias")}
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if k in after and k not in fc8_keys)


@pytest.mark.parametrize("kind", HEAD_KINDS)
@pytest.mark.slow
def test_param_groups_cover_every_head(kind):
    model = head_model(kind)
    groups = model.param_groups(0.1, decay=0.5)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each parameter once
    classifier = {id(p) for p in model.classifier.parameters()}
    assert [g["name"] for g in groups] == [f"block{k}" for k in range(1, 6)] + (["classifier"] if classifier else [])
    assert {id(p) for p in groups[-1]["params"]} == classifier or not classifier
    model.freeze()
    assert [g["name"] for g in model.param_groups(0.1)] == (["classifier"] if classifier else [])


@pytest.mark.parametrize("kind", HEAD_KINDS)
@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_gradients_for_every_head(kind):
    grads = []
    for enable in (False, True):
        model = head_model(kind).train()
        model.set_grad_checkpointing(enable)
        torch.manual_seed(1)  # the same dropout masks
        model(X).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert list(grads[0]) == list(grads[1]) and grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


@pytest.mark.parametrize("kind", HEAD_KINDS)
@pytest.mark.slow
def test_fx_then_script_gives_eager_outputs_for_every_head(kind):
    model = head_model(kind)
    scripted = torch.jit.script(torch.fx.symbolic_trace(model))
    with torch.no_grad():
        assert_same_outputs(scripted(X), model(X))


def timm_model(arch: str, ours: VGG, **kwargs):
    timm = pytest.importorskip("timm")
    theirs = timm.create_model(arch, pretrained=False, **kwargs).eval()
    theirs.load_state_dict(timm_state(ours.state_dict()))
    return theirs


@pytest.mark.parametrize("indices", [None, 2, [0, 5], [-1], [1, 3]])
@pytest.mark.slow
def test_forward_intermediates_is_timms(indices):
    torch.manual_seed(0)
    ours = vggnet.vgg11_bn().eval()
    randomize_bn = __import__("tests.helpers", fromlist=["randomize_batchnorm"]).randomize_batchnorm
    randomize_bn(ours)
    theirs = timm_model("vgg11_bn", ours)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, taps = ours.forward_intermediates(x, indices=indices)
        their_final, their_taps = theirs.forward_intermediates(x, indices=indices)
        assert_same_outputs(final, their_final)
        assert_same_outputs(taps, their_taps)
        assert_same_outputs(final, ours.forward_features(x))
        early = ours.forward_intermediates(x, indices=indices, stop_early=True, intermediates_only=True)
        assert_same_outputs(early, theirs.forward_intermediates(x, indices=indices, stop_early=True,
                                                                intermediates_only=True))  # fmt: skip
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW'"):
        ours.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.slow
def test_prune_intermediate_layers_keeps_the_taps_and_drops_the_rest():
    torch.manual_seed(0)
    model = vggnet.vgg11().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
        assert model.prune_intermediate_layers([2]) == [2]
        assert model.num_classes == 0 and not any(k.startswith("classifier") for k in model.state_dict())
        assert_same_outputs(model(x), taps[2])  # the model now ends at relu3_2's map
        assert model.num_features == model.head_hidden_size == 256
        assert model.forward_intermediates(x, indices=[2], intermediates_only=True)[0].shape == taps[2].shape


def test_group_matcher_gives_timms_groups():
    timm = pytest.importorskip("timm")
    group_parameters = timm.models.group_parameters
    with torch.device("meta"):
        model = vggnet.vgg11_bn()
    fine = group_parameters(model, model.group_matcher(coarse=False))
    assert len(fine) == 1 + 7 + 8 + 1  # features.0, the other convolutions and the BatchNorms of vgg11_bn, the head
    coarse = group_parameters(model, model.group_matcher(coarse=True))
    blocks = [g for g in model.param_groups(0.1)]
    assert [sorted(params) for params in coarse.values()] == [
        sorted(n for n, p in model.named_parameters() if any(p is q for q in group["params"])) for group in blocks
    ]


def test_default_cfg_is_settable_as_timm_sets_it():
    with torch.device("meta"):
        model = vggnet.vgg11()
    cfg = {"num_classes": 1000, "input_size": (3, 224, 224)}
    model.default_cfg = cfg  # what timm's build_model_with_cfg does
    assert model.pretrained_cfg is cfg and model.default_cfg is cfg
    assert model.in_chans == 3
    assert vggnet.vgg11(head="gap", device="meta").pretrained_cfg["classifier"] == "classifier.0"


def test_global_pool_avg_and_none(caplog):
    model = head_model("unpooled")
    assert model.global_pool == "" and model.num_classes == 0
    with torch.no_grad():
        assert torch.equal(model(X), model.forward_features(X))
    with pytest.raises(ValueError, match=r"global_pool='' \(no pooling\) returns the feature map"):
        vggnet.vgg11(global_pool="", device="meta")  # 1000 classes
    with pytest.raises(ValueError, match="global_pool must be one of 'avg', ''"):
        vggnet.vgg11(global_pool="max", device="meta")
    with pytest.raises(ValueError, match=r"global_pool='' \(no pooling\)"):
        model.reset_classifier(5, "")
    with caplog.at_level(logging.INFO, logger="vggnet.models.vgg"):
        model.reset_classifier(5)  # keeps the pooling, but a classifier needs one
    assert model.global_pool == "avg" and model(X).shape == (2, 5) and "'avg' again" in caplog.text
