"""The network: layout, parameter and MAC counts, init and output parity with torchvision, refusals."""

import pytest
import torch
from torch import nn

import vggnet
from vggnet.config import MIN_SIZE, arch_config
from vggnet.model import VGG, make_layers

from .reference import ARCHS, LAYOUT, RECORDS, VGG16_CLASSIFIER_PARAMS, VGG16_CONV_PARAMS, VGG16_FC6_PARAMS

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


@pytest.mark.parametrize("arch", ARCHS)
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
    torch.manual_seed(0)
    reference = tvm.get_model(arch, weights=None).eval()
    if arch.endswith("_bn"):  # non-trivial running statistics so BatchNorm matters
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ours = vggnet.get_model(arch, init_weights=False).eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 80)
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


def test_building_prints_nothing_and_touches_no_file(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VGGNET_HOME", str(tmp_path / "cache"))
    vggnet.vgg11()
    assert capsys.readouterr() == ("", "")
    assert list(tmp_path.iterdir()) == []


def test_a_custom_features_module_still_trains_and_evaluates():
    # torchvision-style injection of any `features`: train()/eval() must not need the tap table.
    model = VGG(nn.Sequential(nn.Conv2d(3, 512, 3, padding=1), nn.Sequential(nn.ReLU())), num_classes=3)
    model.features = nn.ModuleList(model.features)  # not a make_layers Sequential any more
    assert model.train().training and not model.eval().training
