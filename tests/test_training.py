"""Training helpers on VGG: freeze, per-block learning rates, gradient checkpointing."""

import pytest
import torch
from torch import nn

import vggnet


def seeded(arch: str, **kwargs) -> vggnet.VGG:
    torch.manual_seed(0)
    return vggnet.get_model(arch, **kwargs)


def train_step(model: vggnet.VGG, x: torch.Tensor) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    model.train()
    model(x).sum().backward()
    optimizer.step()


@pytest.mark.slow
def test_freezing_leaves_frozen_weights_and_batchnorm_statistics_unchanged():
    model = seeded("vgg11_bn", num_classes=3)
    model.freeze(upto="conv4_1")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_step(model, torch.randn(4, 3, 32, 32))
    after = model.state_dict()
    first_trained = list(after).index("features.15.weight")  # conv4_1 in vgg11_bn
    for i, (key, value) in enumerate(before.items()):
        if i < first_trained:
            assert torch.equal(after[key], value), key  # weights, running statistics, batch counts
        elif key.endswith(("weight", "running_mean")):
            assert not torch.equal(after[key], value), key  # the rest really trained
    frozen_bn = [m for m in model.features[:15] if isinstance(m, nn.BatchNorm2d)]
    trained_bn = [m for m in model.features[15:] if isinstance(m, nn.BatchNorm2d)]
    assert model.training and frozen_bn and not any(m.training for m in frozen_bn)
    assert all(m.training for m in trained_bn)


@pytest.mark.slow
def test_freeze_defaults_to_all_of_features_and_can_be_undone():
    model = seeded("vgg11_bn")
    model.freeze()
    assert not any(p.requires_grad for p in model.features.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())
    model.train()
    assert not any(m.training for m in model.features) and model.classifier.training
    model.unfreeze()
    model.train()
    assert all(p.requires_grad for p in model.parameters()) and all(m.training for m in model.modules())


def test_freeze_upto_fc8_is_a_linear_probe():
    model = seeded("vgg11")
    model.freeze(upto="fc8")
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.6.weight", "classifier.6.bias"]
    model.train()
    assert not model.classifier[2].training  # dropout before fc7 is off: fc7 is frozen
    assert model.classifier[5].training  # dropout before fc8 stays on
    model.freeze(upto="conv2_1")  # a later call replaces the earlier one
    assert model.classifier[0].weight.requires_grad and not model.features[0].weight.requires_grad
    with pytest.raises(ValueError, match="unknown layer 'conv9_9'; valid: conv1_1"):
        model.freeze(upto="conv9_9")


@pytest.mark.slow
def test_param_groups_give_each_block_its_learning_rate():
    model = seeded("vgg11")
    groups = model.param_groups(0.1, decay=0.5, weight_decay=1e-4)
    assert [g["name"] for g in groups] == ["block1", "block2", "block3", "block4", "block5", "classifier"]
    assert [g["lr"] for g in groups] == pytest.approx([0.1 * 0.5**k for k in (5, 4, 3, 2, 1, 0)])
    assert all(g["weight_decay"] == 1e-4 for g in groups)
    assert [len(g["params"]) for g in groups] == [2, 2, 4, 4, 4, 6]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    model.freeze(upto="conv3_1")
    assert model.param_groups(0.1)[0]["name"] == "block3"  # frozen blocks are left out
    optimizer = torch.optim.SGD(model.param_groups(0.1, decay=0.5), lr=1.0)
    assert optimizer.param_groups[-1]["lr"] == 0.1


@pytest.mark.parametrize("arch", ["vgg11", "vgg11_bn"])
@pytest.mark.slow
def test_checkpointed_gradients_equal_plain_ones(arch):
    x = torch.randn(2, 3, 32, 32)
    plain, checkpointed = seeded(arch), seeded(arch)
    plain.train()
    checkpointed.train()
    checkpointed.set_grad_checkpointing(True)
    torch.manual_seed(1)  # the same dropout masks for both
    plain(x).square().sum().backward()
    torch.manual_seed(1)
    checkpointed(x).square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.equal(p.grad, q.grad), name
    for (name, b), c in zip(plain.named_buffers(), checkpointed.buffers()):
        assert torch.equal(b, c), name  # BatchNorm statistics updated once, not again in the recomputation


@pytest.mark.slow
def test_checkpointing_recomputes_each_block_in_backward():
    model = seeded("vgg11")
    calls = []
    model.features[0].register_forward_hook(lambda *_: calls.append("conv1_1"))
    model.set_grad_checkpointing(True)
    model(torch.randn(1, 3, 32, 32)).sum().backward()
    assert calls == ["conv1_1", "conv1_1"]  # forward, then the recomputation in backward
    calls.clear()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert calls == ["conv1_1"]
