"""Grad-CAM maps against Captum's LayerGradCam called directly, and the heat-map PNG over a real photo."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import vggnet
from tests.helpers import PHOTOS
from vggnet.data.transforms import ImageClassification
from vggnet.seeing.explain import Explanation, explain, last_conv, layer_module
from vggnet.seeing.pictures import jet, overlay

captum_attr = pytest.importorskip("captum.attr")  # the `explain` extra
Image = pytest.importorskip("PIL.Image")

SIDE = 64


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(3))


def _captum_direct(model: vggnet.VGG, x: torch.Tensor, layer: str, targets: list[int]) -> torch.Tensor:
    gradcam = captum_attr.LayerGradCam(model, layer_module(model, layer))
    return gradcam.attribute(x, target=targets, relu_attributions=True).detach()


@pytest.mark.parametrize("layer", ["conv5_2", "relu5_2", "pool4", "conv3_1"])
@pytest.mark.slow
def test_maps_equal_captums_layer_gradcam_on_the_same_layer(vgg11, images, layer):
    got = explain(vgg11, images, layer=layer, target=7)
    want = _captum_direct(vgg11, images, layer, [7, 7, 7])
    assert got.targets == [7, 7, 7] and got.layer == layer and got.method == "gradcam"
    with torch.no_grad():
        probs = vgg11(images).softmax(dim=1)
    assert [(e.name, e.probability) for e in got.explained] == [("class 7", pytest.approx(float(p[7]))) for p in probs]
    torch.testing.assert_close(got.cam, want[:, 0], rtol=0, atol=0)
    upsampled = captum_attr.LayerAttribution.interpolate(want, (SIDE, SIDE), interpolate_mode="bilinear")[:, 0]
    peak = upsampled.amax(dim=(1, 2), keepdim=True)
    # a map with no positive evidence (it happens with random weights) stays all zeros, not 0 / 0
    torch.testing.assert_close(got.heatmap, torch.where(peak > 0, upsampled / peak, 0.0))


def test_shapes_and_range(vgg11, images):
    got = explain(vgg11, images)
    assert got.layer == "conv5_2"  # the last convolution of vgg11
    assert got.cam.shape == (3, SIDE // 16, SIDE // 16) and got.heatmap.shape == (3, SIDE, SIDE)
    assert (got.cam >= 0).all() and (got.heatmap >= 0).all()
    assert torch.allclose(got.heatmap.amax(dim=(1, 2)), torch.ones(3))


@pytest.mark.slow
def test_default_target_is_each_images_top_class(vgg11, images):
    got = explain(vgg11, images, topk=3)
    with torch.no_grad():
        probs = vgg11(images).softmax(dim=1)
    assert got.targets == probs.argmax(dim=1).tolist()
    assert [e.probability for e in got.explained] == pytest.approx(probs.max(dim=1).values.tolist())
    for row, p in zip(got.top, probs):
        assert [c.index for c in row] == p.topk(3).indices.tolist()
        assert [c.probability for c in row] == pytest.approx(p.topk(3).values.tolist())
        assert [c.name for c in row] == [f"class {c.index}" for c in row]
    want = _captum_direct(vgg11, images, "conv5_2", got.targets)
    torch.testing.assert_close(got.cam, want[:, 0], rtol=0, atol=0)


@pytest.mark.slow
def test_the_model_mode_and_batchnorm_statistics_are_left_alone():
    torch.manual_seed(1)
    model = vggnet.vgg11_bn(num_classes=5).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    explain(model, torch.randn(1, 3, 32, 32))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_imagenet_names_for_a_1000_class_model_and_custom_categories():
    torch.manual_seed(2)
    x = torch.randn(1, 3, 32, 32)
    model = vggnet.vgg11().eval()
    got = explain(model, x[0], topk=2)  # a single image (3, H, W) is a batch of one
    assert [c.name for c in got.top[0]] == [vggnet.models.weights.IMAGENET_CATEGORIES[c.index] for c in got.top[0]]
    small = vggnet.vgg11(num_classes=2).eval()
    assert {c.name for c in explain(small, x, categories=["cat", "dog"]).top[0]} == {"cat", "dog"}


def test_errors_name_the_problem_and_the_fix(vgg11, images, monkeypatch):
    with pytest.raises(ValueError, match=r"unknown layer 'fc6'.*valid: conv1_1, relu1_1, pool1"):
        explain(vgg11, images, layer="fc6")
    with pytest.raises(ValueError, match=r"method must be one of 'gradcam', got 'lime'"):
        explain(vgg11, images, method="lime")
    with pytest.raises(ValueError, match="target must be a class index from 0 to 9, got 10"):
        explain(vgg11, images, target=10)
    with pytest.raises(ValueError, match="categories has 3 names for a model with 10 classes"):
        explain(vgg11, images, categories=["a", "b", "c"])
    with pytest.raises(ValueError, match="topk must be a positive integer"):
        explain(vgg11, images, topk=0)
    with pytest.raises(ValueError, match="4-D batch"):
        explain(vgg11, images[0, 0])
    monkeypatch.setitem(sys.modules, "captum.attr", None)  # as if the extra were not installed
    with pytest.raises(ImportError, match=r"need Captum: pip install 'vggnet\[explain\]'"):
        explain(vgg11, images)


def test_jet_colour_map():
    got = jet(torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, -3.0, 7.0]))
    want = [(0, 0, 0.5), (0, 0.5, 1), (0.5, 1, 0.5), (1, 0.5, 0), (0.5, 0, 0), (0, 0, 0.5), (0.5, 0, 0)]
    torch.testing.assert_close(got, torch.tensor(want))


def test_a_heat_map_png_over_a_real_photo(vgg11, tmp_path):
    preset = ImageClassification(crop_size=96, resize_size=110)
    x = preset(Image.open(PHOTOS / "chelsea.png"))
    photo = x * torch.tensor(preset.std).view(3, 1, 1) + torch.tensor(preset.mean).view(3, 1, 1)  # (3, 96, 96)
    got: Explanation = explain(vgg11, x)
    heat = got.heatmap[0]
    path = tmp_path / "cam.png"
    overlay(photo, heat, alpha=0.5).save(path)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (96, 96) and png.mode == "RGB"
        pixels = png.load()
        hot = divmod(int(heat.argmax()), 96)
        cold = divmod(int(heat.argmin()), 96)
        for row, col in (hot, cold, (0, 0), (95, 95)):
            colour = jet(heat[row, col])
            expected = [
                round(255 * (0.5 * float(photo[c, row, col].clamp(0, 1)) + 0.5 * float(colour[c]))) for c in range(3)
            ]
            assert all(abs(a - b) <= 1 for a, b in zip(pixels[col, row], expected)), (row, col)
        assert pixels[hot[1], hot[0]][0] > pixels[hot[1], hot[0]][2]  # the hottest spot is red over the photo


def test_overlay_resizes_the_map_to_a_pil_photo_and_checks_its_arguments():
    photo = Image.open(PHOTOS / "coffee.jpg")
    heat = torch.zeros(4, 4)
    heat[0, 0] = 1
    picture = overlay(photo, heat, alpha=1.0)
    assert picture.size == photo.size
    assert picture.getpixel((photo.width - 1, photo.height - 1)) == (0, 0, 128)  # cold: jet(0), the photo gone
    with pytest.raises(ValueError, match="alpha must be between 0"):
        overlay(photo, heat, alpha=1.5)
    with pytest.raises(ValueError, match=r"one heat map \(H, W\)"):
        overlay(photo, heat[None])


def test_last_conv_by_depth():
    with torch.device("meta"):
        assert [last_conv(vggnet.get_model(a)) for a in ("vgg11", "vgg13_bn", "vgg16", "vgg19_bn")] == [
            "conv5_2",
            "conv5_2",
            "conv5_3",
            "conv5_4",
        ]
    with torch.device("meta"):
        assert last_conv(vggnet.vgg11(), block=3) == "conv3_2" and last_conv(vggnet.vgg16(), block=3) == "conv3_3"
        with pytest.raises(ValueError, match="no convolution in block 6"):
            last_conv(vggnet.vgg16(), block=6)


# --- the command -------------------------------------------------------------------------------------


def _seeded_vgg11(seed: int) -> vggnet.VGG:
    """What `--arch vgg11 --weights none` builds after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return vggnet.vgg11().eval()


@pytest.mark.slow
def test_the_command_writes_the_map_over_the_photo_and_names_the_classes(tmp_path, capsys):
    from vggnet.cli import main
    from vggnet.data.decode import load_image

    out = tmp_path / "cam.png"
    photo = PHOTOS / "chelsea.png"
    argv = ["explain", str(photo), "--arch", "vgg11", "--weights", "none", "--layer", "conv4_2", "--topk", "3"]
    torch.manual_seed(5)
    assert main([*argv, "--out", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    preset = ImageClassification(crop_size=224)
    x = preset(load_image(photo))
    want = explain(_seeded_vgg11(5), x, layer="conv4_2", topk=3)
    assert data["layer"] == "conv4_2" and data["method"] == "gradcam" and data["arch"] == "vgg11"
    assert [p["index"] for p in data["predictions"]] == [p.index for p in want.top[0]]
    assert data["class"]["index"] == want.targets[0] == data["predictions"][0]["index"]
    assert data["class"]["label"] == vggnet.models.weights.IMAGENET_CATEGORIES[want.targets[0]]
    seen = x * torch.tensor(preset.std).view(3, 1, 1) + torch.tensor(preset.mean).view(3, 1, 1)
    expected = overlay(seen, want.heatmap[0]).crop((0, 40, 224, 224))  # below the label
    with Image.open(out) as png:
        assert png.size == (224, 224) and png.format == "PNG"
        assert png.convert("RGB").crop((0, 40, 224, 224)).tobytes() == expected.tobytes()
        assert max(png.convert("L").crop((0, 0, 60, 14)).tobytes()) > 200  # the label's white text


@pytest.mark.slow
def test_the_command_explains_another_class_and_refuses_bad_arguments(tmp_path, capsys):
    from vggnet.cli import main

    photo, out = str(PHOTOS / "coffee.jpg"), str(tmp_path / "cam.png")
    common = ["--arch", "vgg11", "--weights", "none"]
    assert main(["explain", photo, *common, "--class", "281", "--out", out]) == 0
    stdout = capsys.readouterr().out
    tabby = vggnet.models.weights.IMAGENET_CATEGORIES[281]
    assert stdout.startswith(f"{photo}: gradcam of {tabby} (281) at conv5_2\n")
    assert len(stdout.splitlines()) == 6  # and the top 5
    assert main(["explain", photo, *common, "--out", str(tmp_path / "cam.jpg")]) == 2
    assert "ending in .png" in capsys.readouterr().err
    assert main(["explain", photo, *common, "--layer", "fc7", "--out", out]) == 2
    assert "unknown layer 'fc7'" in capsys.readouterr().err
    assert main(["explain", photo, *common, "--class", "1000", "--out", out]) == 2
    assert "target must be a class index from 0 to 999" in capsys.readouterr().err
