"""Presets against torchvision's on real photographs (tests/photos/SOURCES.md)."""

from pathlib import Path

import pytest
import torch

import vggnet
from vggnet.transforms import ImageClassification, TrainClassification, load_image, pil_to_tensor, resized_size

Image = pytest.importorskip("PIL.Image")
tvm = pytest.importorskip("torchvision.models")
tvt = pytest.importorskip("torchvision.transforms")

PHOTOS = sorted((Path(__file__).parent / "photos").glob("*.[jp][pn]g"))
WEIGHTS = ["IMAGENET1K_V1", "IMAGENET1K_FEATURES"]


def test_there_are_real_photos():
    assert len(PHOTOS) == 4


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.name)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_pil_input_matches_torchvision(photo, weights):
    img = Image.open(photo)
    img = img if img.mode == "RGB" else img.convert("RGB")
    ours = vggnet.VGG16_Weights[weights].transforms()(img)
    theirs = tvm.VGG16_Weights[weights].transforms()(img)
    assert ours.shape == theirs.shape == (3, 224, 224) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.name)
def test_uint8_tensor_input_matches_torchvision(photo):
    x = pil_to_tensor(load_image(photo))
    ours = vggnet.VGG16_Weights.DEFAULT.transforms()(x)
    theirs = tvm.VGG16_Weights.DEFAULT.transforms()(x)
    torch.testing.assert_close(ours, theirs, atol=1e-2, rtol=0)


def test_float_and_batched_tensors_match_torchvision():
    x = torch.stack([pil_to_tensor(load_image(p).resize((320, 240))) for p in PHOTOS])  # (4, 3, 240, 320)
    preset, reference = vggnet.VGG16_Weights.DEFAULT.transforms(), tvm.VGG16_Weights.DEFAULT.transforms()
    batch = preset(x)
    assert batch.shape == (4, 3, 224, 224)
    torch.testing.assert_close(batch, reference(x), atol=1e-2, rtol=0)
    torch.testing.assert_close(preset(x.float() / 255), reference(x.float() / 255), atol=1e-5, rtol=0)
    torch.testing.assert_close(batch[1], preset(x[1]), atol=0, rtol=0)  # a batch is its images


@pytest.mark.parametrize(("height", "width"), [(300, 451), (451, 300), (257, 1000), (256, 256), (100, 700), (199, 201)])
def test_resized_size_and_crop_offsets_round_like_torchvision(height, width):
    assert resized_size(height, width, 256) == tuple(
        tvt.functional._compute_resized_output_size((height, width), [256])
    )
    x = torch.arange(height * width, dtype=torch.float32).reshape(1, 1, height, width).expand(1, 3, -1, -1)
    ours = ImageClassification(crop_size=97, resize_size=min(height, width), mean=(0, 0, 0), std=(1, 1, 1))
    theirs = tvt.Compose([tvt.Resize(min(height, width)), tvt.CenterCrop(97)])
    torch.testing.assert_close(ours(x), theirs(x), atol=0, rtol=0)  # no resize: exactly the same pixels


def test_crop_larger_than_the_image_pads_like_torchvision():
    img = load_image(PHOTOS[0])
    ours = ImageClassification(crop_size=301, resize_size=256)(img)
    theirs = tvt.Compose(
        [
            tvt.Resize(256),
            tvt.CenterCrop(301),
            tvt.ToTensor(),
            tvt.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )(img)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_grayscale_input_is_replicated_to_rgb():
    gray = Image.open(next(p for p in PHOTOS if p.name == "camera.png"))
    assert gray.mode == "L"
    preset = vggnet.VGG16_Weights.DEFAULT.transforms()
    ours = preset(gray)
    torch.testing.assert_close(ours, preset(gray.convert("RGB")), atol=1e-5, rtol=0)
    torch.testing.assert_close(preset(pil_to_tensor(gray)), preset(pil_to_tensor(gray.convert("RGB"))), atol=0, rtol=0)


def test_bad_tensors_are_refused():
    preset = vggnet.VGG16_Weights.DEFAULT.transforms()
    with pytest.raises(ValueError, match=r"\(C, H, W\) or a batch"):
        preset(torch.zeros(224, 224))
    with pytest.raises(ValueError, match="normalizes 3 channels, the image has 4"):
        preset(torch.zeros(4, 256, 256))
    with pytest.raises(ValueError, match="interpolation"):
        ImageClassification(crop_size=224, interpolation="area")


def test_train_preset_is_seeded_random_and_flips():
    img = load_image(PHOTOS[0])
    preset = TrainClassification(crop_size=224)
    torch.manual_seed(0)
    a = preset(img)
    torch.manual_seed(0)
    b = preset(img)
    c = preset(img)
    assert a.shape == (3, 224, 224) and torch.equal(a, b) and not torch.equal(b, c)
    always = TrainClassification(crop_size=64, hflip_prob=1.0, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    never = TrainClassification(crop_size=64, hflip_prob=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    square = pil_to_tensor(img)[:, :200, :200]
    torch.testing.assert_close(always(square), never(square).flip(-1), atol=0, rtol=0)


def test_train_crop_boxes_stay_inside_and_cover_the_scale():
    preset = TrainClassification(crop_size=224)
    torch.manual_seed(0)
    areas = []
    for _ in range(200):
        top, left, h, w = preset.crop_box(300, 451)
        assert top >= 0 and top + h <= 300 and left >= 0 and left + w <= 451
        areas.append(h * w / (300 * 451))
    assert min(areas) < 0.2 and max(areas) > 0.8
