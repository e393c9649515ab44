"""Receptive fields: the recurrence against what a gradient actually reaches, for every builder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vggnet
from vggnet.models.config import ARCHS
from vggnet.models.receptive import ReceptiveField, receptive_fields

SIDE = 384  # input side for the gradient check: every VGG field (at most 268 px) fits around the centre


def _one_channel_replica(features: nn.Sequential) -> list[nn.Module]:
    """The same geometry with one channel and all-ones weights; pools average (max-pool's gradient picks one pixel)."""
    layers: list[nn.Module] = []
    for m in features:
        if isinstance(m, nn.Conv2d):
            conv = nn.Conv2d(1, 1, m.kernel_size, m.stride, m.padding, m.dilation, bias=False)
            nn.init.ones_(conv.weight)
            layers.append(conv)
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            layers.append(nn.AvgPool2d(m.kernel_size, m.stride, m.padding))
        else:  # ReLU and BatchNorm change no geometry
            layers.append(nn.Identity())
    return layers


def _extent(grad: torch.Tensor) -> tuple[int, int]:
    """First and last index where a 1-D profile of the input gradient is nonzero."""
    nonzero = grad.nonzero().flatten()
    lo, hi = int(nonzero[0]), int(nonzero[-1])
    assert lo > 0 and hi < SIDE - 1, "the field touches the border: the check needs a larger SIDE"
    return lo, hi


def _measured(features: nn.Sequential) -> list[tuple[int, float, int]]:
    """Per layer, from the input gradient of one unit (row i, column i + 1) of a real forward pass:
    (the field's side, unit 0's centre, the distance between neighbouring units' centres)."""
    x = torch.ones(1, 1, SIDE, SIDE, requires_grad=True)
    h, found, last = x, [], None
    for layer in _one_channel_replica(features):
        out = layer(h)
        if out is h and last is not None:  # an Identity: the same tensor, the same field
            found.append(last)
            continue
        h = out
        i = out.shape[-1] // 2
        (grad,) = torch.autograd.grad(out[0, 0, i, i + 1], x, retain_graph=True)
        rows, cols = _extent(grad[0, 0].sum(dim=1)), _extent(grad[0, 0].sum(dim=0))
        size, centre_i, centre_next = rows[1] - rows[0] + 1, sum(rows) / 2, sum(cols) / 2
        assert cols[1] - cols[0] + 1 == size
        jump = centre_next - centre_i
        last = (size, centre_i - i * jump, round(jump))
        found.append(last)
    return found


def _meta_model(arch: str) -> vggnet.VGG:
    with torch.device("meta"):  # only the layers' geometry is read
        return vggnet.get_model(arch)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_the_recurrence_matches_the_extent_of_a_units_gradient(arch):
    model = _meta_model(arch)
    fields = receptive_fields(model)
    measured = _measured(model.features)
    assert [f.name for f in fields] == model.layer_names()[: len(model.features)]
    assert [(f.size, f.start, f.jump) for f in fields] == measured


@pytest.mark.parametrize("arch", list(ARCHS))
def test_a_builder_name_gives_what_its_model_gives_and_agrees_with_tap_info(arch):
    fields = receptive_fields(arch)
    model = _meta_model(arch)
    assert fields == receptive_fields(model)
    taps = {t.name: t for t in model.tap_info()}
    assert [(f.size, f.jump) for f in fields] == [(taps[f.name].receptive_field, taps[f.name].stride) for f in fields]


def test_vgg16_numbers():
    fields = {f.name: f for f in receptive_fields("vgg16")}
    assert fields["conv1_1"] == ReceptiveField("conv1_1", 3, 1, 0.0)
    assert fields["pool1"] == ReceptiveField("pool1", 6, 2, 0.5)
    assert fields["conv5_3"] == ReceptiveField("conv5_3", 196, 16, 7.5)
    assert fields["pool5"] == ReceptiveField("pool5", 212, 32, 15.5)
    assert receptive_fields("vgg19")[-1].size == 268 and receptive_fields("vgg11")[-1].size == 150


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown model 'vgg17'; valid: vgg11"):
        receptive_fields("vgg17")
    model = _meta_model("vgg11")
    model.features[0] = nn.Conv2d(3, 64, 3, padding="same")
    with pytest.raises(ValueError, match="conv1_1: padding 'same' is not a number"):
        receptive_fields(model)
    model.features[0] = nn.Conv2d(3, 64, (3, 5), padding=1)
    with pytest.raises(ValueError, match="conv1_1 is not square"):
        receptive_fields(model)
