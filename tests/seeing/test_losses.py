"""PerceptualLoss: frozen, always eval, normalizes its input, float32 Gram matrices, gradients to the input."""

import hashlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vggnet
from tests.helpers import randomize_batchnorm
from vggnet.data.constants import IMAGENET_MEAN, IMAGENET_STD
from vggnet.seeing.losses import PerceptualLoss, gram_matrix


@pytest.fixture(scope="module")
def vgg11_bn():
    torch.manual_seed(0)
    return randomize_batchnorm(vggnet.vgg11_bn())


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)


@pytest.mark.slow
def test_zero_for_identical_images_and_positive_otherwise(vgg11_bn, images):
    loss = PerceptualLoss(vgg11_bn, layers=["relu1_1", "conv2_1", "relu4_2"], style_layers=["relu3_1"])
    x, y = images
    assert loss(x, x.clone()).item() == 0
    assert loss(x, y).item() > 0
    assert loss(x, y).dtype == torch.float32 and loss(x, y).dim() == 0


def test_gradients_reach_the_input_and_never_the_network(vgg11_bn, images):
    loss = PerceptualLoss(vgg11_bn, layers=["relu2_1"], style_layers=["relu1_1"])
    x, y = images
    x.requires_grad_(True)
    loss(x, y).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in loss.parameters())
    assert all(p.requires_grad for p in vgg11_bn.parameters())  # the caller's model is left alone
    loss.requires_grad_(True)
    assert not any(p.requires_grad for p in loss.parameters())


def test_stays_in_eval_mode_and_batchnorm_statistics_do_not_move(vgg11_bn, images):
    loss = PerceptualLoss(vgg11_bn, layers=["bn2_1"])
    stats = [b.clone() for b in loss.buffers()]
    loss.train()
    assert not loss.training and not any(m.training for m in loss.modules())
    x, y = images
    loss(x, y)
    for before, after in zip(stats, loss.buffers()):
        assert torch.equal(before, after)
    one = PerceptualLoss(vgg11_bn, layers=["bn2_1"])
    assert torch.allclose(loss.taps(x[:1])["bn2_1"], one.taps(x)["bn2_1"][:1], atol=1e-5)  # per sample: running stats


def test_content_term_is_the_mean_distance_of_the_taps(vgg11_bn, images):
    x, y = images
    l1 = PerceptualLoss(vgg11_bn, layers=["relu1_1", "relu2_1"], weights=[1.0, 0.5])
    l2 = PerceptualLoss(vgg11_bn, layers=["relu1_1"], distance="l2")
    with torch.no_grad():
        tx = vgg11_bn.eval().extract(l1.normalize(x), ["relu1_1", "relu2_1"])
        ty = vgg11_bn.extract(l1.normalize(y), ["relu1_1", "relu2_1"])
        expected = F.l1_loss(tx["relu1_1"], ty["relu1_1"]) + 0.5 * F.l1_loss(tx["relu2_1"], ty["relu2_1"])
        assert torch.allclose(l1(x, y), expected)
        assert torch.allclose(l2(x, y), F.mse_loss(tx["relu1_1"], ty["relu1_1"]))


def test_input_ranges_normalize_with_the_imagenet_numbers(vgg11_bn, images):
    x, y = images
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    zero_one = PerceptualLoss(vgg11_bn, layers=["relu2_1"])
    minus_one = PerceptualLoss(vgg11_bn, layers=["relu2_1"], input_range="-1-1")
    normalized = PerceptualLoss(vgg11_bn, layers=["relu2_1"], input_range="normalized")
    with torch.no_grad():
        reference = zero_one(x, y)
        assert torch.allclose(minus_one(x * 2 - 1, y * 2 - 1), reference, rtol=1e-5)
        assert torch.allclose(normalized((x - mean) / std, (y - mean) / std), reference, rtol=1e-5)
        assert not torch.allclose(normalized(x, y), reference)  # normalization really happens
        caffe = PerceptualLoss(vgg11_bn, layers=["relu2_1"], mean=(0.5, 0.5, 0.5), std=(1.0, 1.0, 1.0))
        assert torch.allclose(caffe(x, y), normalized(x - 0.5, y - 0.5))


def test_gram_matrix_is_float32_under_bf16_autocast(vgg11_bn, images):
    x, y = images
    features = (torch.randn(2, 64, 16, 16) * 30).to(torch.bfloat16)
    flat = features.double().reshape(2, 64, -1)
    exact = torch.bmm(flat, flat.transpose(1, 2)) / (64 * 256)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gram = gram_matrix(features)
        naive = torch.bmm(flat.float(), flat.float().transpose(1, 2)) / (64 * 256)
    assert gram.dtype == torch.float32 and naive.dtype == torch.bfloat16  # autocast would have used bf16
    assert torch.allclose(gram.double(), exact, rtol=1e-5, atol=1e-3)
    assert not torch.allclose(naive.double(), exact, rtol=1e-3, atol=1e-3)
    loss = PerceptualLoss(vgg11_bn, layers=[], style_layers=["relu1_1", "relu2_1"])
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(x, y)
        assert loss(x, x.detach().clone()).item() == 0
    assert value.dtype == torch.float32 and value.item() > 0
    value.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_style_term_is_the_gram_distance(vgg11_bn, images):
    x, y = images
    loss = PerceptualLoss(vgg11_bn, layers=[], style_layers=["relu1_1"], style_weights=[10.0])
    with torch.no_grad():
        gx = gram_matrix(vgg11_bn.eval().extract(loss.normalize(x), ["relu1_1"])["relu1_1"])
        gy = gram_matrix(vgg11_bn.extract(loss.normalize(y), ["relu1_1"])["relu1_1"])
        assert torch.allclose(loss(x, y), 10 * F.mse_loss(gx, gy))


def test_average_pooling_replaces_max_pooling(vgg11_bn, images):
    x, y = images
    avg = PerceptualLoss(vgg11_bn, layers=["conv2_1"], pool="avg")
    plain = PerceptualLoss(vgg11_bn, layers=["conv2_1"])
    assert not any(isinstance(m, nn.MaxPool2d) for m in avg.modules())
    assert sum(isinstance(m, nn.AvgPool2d) for m in avg.modules()) == 1
    assert any(isinstance(m, nn.MaxPool2d) for m in vgg11_bn.modules())  # the caller's model is unchanged
    assert avg(x, y).item() != plain(x, y).item()


def test_only_the_layers_needed_are_kept(vgg11_bn):
    loss = PerceptualLoss(vgg11_bn, layers=["relu1_1"])
    assert len(loss.features) == 3  # conv1_1, bn1_1, relu1_1


def test_bad_arguments_are_refused_clearly(vgg11_bn):
    with pytest.raises(ValueError, match="non-convolutional layers \\['fc7'\\]"):
        PerceptualLoss(vgg11_bn, layers=["fc7"])
    with pytest.raises(ValueError, match="distance must be one of 'l1', 'l2'"):
        PerceptualLoss(vgg11_bn, distance="cos")
    with pytest.raises(ValueError, match="input_range must be one of"):
        PerceptualLoss(vgg11_bn, input_range="0-255")
    with pytest.raises(ValueError, match="one factor per layer"):
        PerceptualLoss(vgg11_bn, layers=["relu1_1"], weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="at least one"):
        PerceptualLoss(vgg11_bn, layers=[])
    loss = PerceptualLoss(vgg11_bn, layers=["relu1_1"])
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 64, 64))


def test_bad_images_and_numbers_are_refused_clearly(vgg11_bn):
    with pytest.raises(ValueError, match=r"mean needs one value per input channel of the model \(3\), got 2"):
        PerceptualLoss(vgg11_bn, layers=["relu1_1"], mean=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"std needs one value per input channel of the model \(3\), got 1"):
        PerceptualLoss(vgg11_bn, layers=["relu1_1"], std=(0.5,))
    loss = PerceptualLoss(vgg11_bn, layers=["relu1_1"])
    rgba = torch.rand(1, 4, 32, 32)
    with pytest.raises(ValueError, match=r"PerceptualLoss expects 3 input channels, got 4 .*x\[:, :3\]"):
        loss(rgba, rgba)
    gray = torch.rand(1, 1, 32, 32)
    with pytest.raises(ValueError, match=r"PerceptualLoss expects 3 input channels, got 1 .*expand"):
        loss(gray, gray)
    uint8 = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"floating-point images in input_range '0-1', got torch.uint8.*/ 255"):
        loss(uint8, uint8)
    with pytest.raises(ValueError, match=r"PerceptualLoss expects a 4-D batch .* shape \(3, 32, 32\).*unsqueeze"):
        loss(torch.rand(3, 32, 32), torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match=r"torch\.uint8"):
        loss.taps(uint8)


def test_a_single_layer_name_is_one_layer(vgg11_bn, images):
    x, y = images
    one = PerceptualLoss(vgg11_bn, layers="relu2_1", style_layers="relu1_1")
    assert one.layers == ["relu2_1"] and one.style_layers == ["relu1_1"]
    listed = PerceptualLoss(vgg11_bn, layers=["relu2_1"], style_layers=["relu1_1"])
    assert torch.equal(one(x, y), listed(x, y))


@pytest.mark.slow
def test_an_arch_name_loads_the_default_weights_and_their_numbers(tmp_path, monkeypatch):
    """With a mirror on disk standing in for download.pytorch.org, "vgg11" loads VGG11_Weights.DEFAULT."""
    torch.manual_seed(5)
    state = vggnet.vgg11().state_dict()
    record = vggnet.VGG11_Weights.DEFAULT.value
    path = tmp_path / "mirror" / record.file_name
    path.parent.mkdir()
    torch.save(state, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    fake = vggnet.Weights(url=str(path), sha256=digest, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    monkeypatch.setattr(vggnet.VGG11_Weights.DEFAULT, "_value_", fake)
    monkeypatch.setenv("VGGNET_HOME", str(tmp_path / "cache"))
    loss = PerceptualLoss("vgg11", layers=["relu1_1"])
    assert torch.equal(loss.features[0].weight, state["features.0.weight"])
    assert loss.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert loss.std.flatten().tolist() == pytest.approx([0.5, 0.5, 0.5])


def test_a_gray_model_normalizes_with_the_rgb_average_like_finetune():
    with torch.device("meta"):
        gray = vggnet.vgg11(in_chans=1)
    loss = PerceptualLoss(gray, layers=["relu1_1"])
    assert loss.mean.flatten().tolist() == pytest.approx([sum(IMAGENET_MEAN) / 3])
    assert loss.std.flatten().tolist() == pytest.approx([sum(IMAGENET_STD) / 3])
