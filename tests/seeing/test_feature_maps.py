"""The strongest feature maps of a layer and their labelled grid, from a real photo."""

from __future__ import annotations

import json

import pytest
import torch

import vggnet
from tests.helpers import PHOTOS
from vggnet.data.transforms import ImageClassification
from vggnet.seeing.feature_maps import feature_maps
from vggnet.seeing.pictures import jet

Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    return ImageClassification(crop_size=64, resize_size=73)(Image.open(PHOTOS / "chelsea.png"))


@pytest.mark.parametrize("layer", ["relu1_1", "conv3_2", "pool4"])
@pytest.mark.slow
def test_the_strongest_channels_by_mean_activation(vgg11, photo, layer):
    got = feature_maps(vgg11, photo, layer=layer, count=5)
    with torch.no_grad():
        out = vgg11.extract(photo[None], [layer])[layer][0]
    means = out.mean(dim=(1, 2))
    assert got.channels == sorted(range(out.shape[0]), key=lambda c: -means[c])[:5]
    assert got.means == pytest.approx(means[got.channels].tolist())
    assert torch.equal(got.maps, out[got.channels])
    assert got.layer == layer and got.means == sorted(got.means, reverse=True)


def test_the_grid_png_shows_each_tile_coloured_and_labelled(vgg11, photo, tmp_path):
    maps = feature_maps(vgg11, photo, layer="conv2_1", count=6)
    path = tmp_path / "grid.png"
    maps.grid(tile=48, columns=3).save(path)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (3 * 50 - 2, 2 * 50 - 2)
        pixels = png.convert("RGB").load()
        for i, m in enumerate(maps.maps):
            left, top = (i % 3) * 50, (i // 3) * 50
            scaled = (m - m.min()) / (m.max() - m.min())
            corner = [round(255 * float(v)) for v in jet(scaled[-1, -1])]  # bottom right: no label there
            assert all(abs(a - b) <= 1 for a, b in zip(pixels[left + 47, top + 47], corner))
            assert pixels[left, top] == (0, 0, 0)  # the label's box
            label = {pixels[left + x, top + y] for x in range(2, 20) for y in range(1, 12)}
            assert max(min(p) for p in label) > 200  # white (anti-aliased) text "#channel"
        assert pixels[48, 10] == (0, 0, 0)  # the gap between tiles


@pytest.mark.slow
def test_fewer_channels_than_asked_and_a_training_model(photo):
    torch.manual_seed(3)
    model = vggnet.vgg11_bn(num_classes=3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = feature_maps(model, photo, layer="relu1_1", count=100)
    assert sorted(got.channels) == list(range(64))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_errors(vgg11, photo):
    with pytest.raises(ValueError, match="fc7 has no spatial maps"):
        feature_maps(vgg11, photo, layer="fc7")
    with pytest.raises(ValueError, match=r"unknown layers \['conv9_9'\]"):
        feature_maps(vgg11, photo, layer="conv9_9")
    with pytest.raises(ValueError, match="feature_maps shows one image"):
        feature_maps(vgg11, torch.stack([photo, photo]))
    with pytest.raises(ValueError, match="count must be a positive integer"):
        feature_maps(vgg11, photo, count=0)
    with pytest.raises(ValueError, match="tile must be an integer >= 16"):
        feature_maps(vgg11, photo).grid(tile=8)


def test_the_default_layer_is_the_last_convolution_of_block_3(vgg11, photo):
    assert feature_maps(vgg11, photo, count=2).layer == "conv3_2"


# --- the command -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_command_writes_the_grid_of_the_strongest_maps(tmp_path, capsys):
    from vggnet.cli import main
    from vggnet.data.decode import load_image

    out = tmp_path / "grid.png"
    photo = PHOTOS / "rocket.jpg"
    argv = ["features", str(photo), "--arch", "vgg11", "--weights", "none"]
    torch.manual_seed(6)
    assert (
        main(
            [*argv, "--layer", "conv2_1", "--count", "6", "--tile", "40", "--columns", "3", "--out", str(out), "--json"]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    torch.manual_seed(6)
    model = vggnet.vgg11().eval()
    want = feature_maps(model, ImageClassification(crop_size=224)(load_image(photo)), layer="conv2_1", count=6)
    assert data["channels"] == want.channels and data["means"] == pytest.approx(want.means)
    assert data["layer"] == "conv2_1" and data["map_size"] == [112, 112]
    with Image.open(out) as png:
        assert png.size == (3 * 42 - 2, 2 * 42 - 2)
        assert png.convert("RGB").tobytes() == want.grid(tile=40, columns=3).tobytes()
    assert main([*argv, "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{photo}: the 16 strongest of conv3_2's maps (56x56)"  # vgg11's block 3 ends at conv3_2
    assert len(lines) == 3 + 16
    assert main([*argv, "--out", str(tmp_path / "grid.svg")]) == 2
