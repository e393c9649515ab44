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
    with pytest.raises(ValueError, match=r"reads 3 channels \(RGB\) or 1 \(gray\), the image has 4.*x\[:3\]"):
        preset(torch.zeros(4, 256, 256))
    with pytest.raises(ValueError, match="crop_size must be a positive integer"):
        ImageClassification(crop_size=0)
    with pytest.raises(ValueError, match="resize_size must be a positive integer"):
        ImageClassification(crop_size=224, resize_size=0)
    with pytest.raises(ValueError, match="one value per channel, got 2 and 3"):
        ImageClassification(crop_size=224, mean=(0.5, 0.5))
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


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64, torch.bool])
def test_integer_tensors_other_than_uint8_and_uint16_are_refused(dtype):
    preset = vggnet.VGG16_Weights.DEFAULT.transforms()
    with pytest.raises(ValueError, match=rf"uint8 \(0-255\), uint16 \(0-65535\) or floating point.*{dtype}.*x.to"):
        preset(torch.zeros(3, 64, 64, dtype=dtype))
    with pytest.raises(ValueError, match="uint8"):
        TrainClassification(crop_size=32)(torch.zeros(3, 64, 64, dtype=dtype))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_uint16_tensors_are_scaled_by_65535_like_torchvision(interpolation):
    x8 = pil_to_tensor(load_image(PHOTOS[0]).resize((120, 100)))
    x16 = x8.to(torch.int64).mul(257).to(torch.uint16)  # the same picture in 16 bits
    ours = ImageClassification(crop_size=64, resize_size=80, interpolation=interpolation)
    theirs = tvm.VGG16_Weights.DEFAULT.transforms(crop_size=64, resize_size=80)
    torch.testing.assert_close(ours(x16), ours(x8), atol=2e-2, rtol=0)
    if interpolation == "bilinear":
        torch.testing.assert_close(ours(x16), theirs(x16), atol=1e-3, rtol=0)


def write_16bit_png(path, values):
    import numpy as np

    Image.fromarray(np.asarray(values, dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")  # "I;16" (or "I" in older Pillow)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    import numpy as np

    values = np.tile(np.array([0, 257, 30000, 32896, 65535], dtype=np.uint16), (40, 8))
    write_16bit_png(tmp_path / "g16.png", values)
    expected = np.round(values / 257).astype(np.uint8)  # 30000 -> 117, mid-gray, not white
    rgb = load_image(tmp_path / "g16.png")
    assert rgb.mode == "RGB" and rgb.getpixel((2, 0)) == (117, 117, 117)
    assert np.array_equal(np.asarray(rgb)[..., 0], expected)
    x = pil_to_tensor(Image.open(tmp_path / "g16.png"))
    assert x.shape == (1, 40, 40) and torch.equal(x[0], torch.from_numpy(expected))
    preset = ImageClassification(crop_size=32, resize_size=40)
    torch.testing.assert_close(preset(Image.open(tmp_path / "g16.png")), preset(rgb), atol=1e-5, rtol=0)
    signed = Image.open(tmp_path / "g16.png").convert("I")  # mode "I": taken as 16-bit as well
    assert np.array_equal(np.asarray(pil_to_tensor(signed))[0], expected)


def test_float_and_out_of_range_32bit_images_are_refused():
    import numpy as np

    with pytest.raises(ValueError, match=r"mode 'F'.*convert it to 8 bits"):
        pil_to_tensor(Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)))
    with pytest.raises(ValueError, match=r"mode 'I'\) with values 0..70000.*16-bit"):
        pil_to_tensor(Image.fromarray(np.array([[0, 70000]], dtype=np.int32)))


def test_palette_images_are_converted_before_resizing():
    rgb = load_image(PHOTOS[0]).resize((150, 120))
    palette = rgb.convert("P")
    preset = ImageClassification(crop_size=64, resize_size=80)
    torch.testing.assert_close(preset(palette), preset(palette.convert("RGB")), atol=1e-5, rtol=0)


def test_a_gray_preset_reads_colour_images_as_training_does(tmp_path):
    gray_preset = ImageClassification(crop_size=48, resize_size=56, mean=(0.449,), std=(0.226,))
    rgb = load_image(PHOTOS[0]).resize((90, 70))
    expected = gray_preset(rgb.convert("L"))  # what ImageFolder(gray=True) feeds in training
    assert expected.shape == (1, 48, 48)
    rgba = rgb.copy()
    rgba.putalpha(128)
    for image in (rgb, rgba, rgb.convert("P"), rgb.convert("L").convert("LA")):
        want = gray_preset(image.convert("RGB").convert("L"))
        torch.testing.assert_close(gray_preset(image), want, atol=0, rtol=0)
    torch.testing.assert_close(gray_preset(rgb), expected, atol=0, rtol=0)
    x = pil_to_tensor(rgb)  # the luminance of a uint8 tensor is Pillow's, bit for bit
    unscaled = ImageClassification(crop_size=70, resize_size=70, mean=(0,), std=(1,))  # no resize: pixels / 255
    torch.testing.assert_close(unscaled(x), unscaled(rgb.convert("L")), atol=0, rtol=0)
    torch.testing.assert_close(gray_preset(x), expected, atol=2e-2, rtol=0)  # resized by torch, not Pillow
    torch.testing.assert_close(gray_preset(x.float() / 255), expected, atol=2e-2, rtol=0)
    train = TrainClassification(crop_size=32, mean=(0.449,), std=(0.226,))
    assert train(rgb).shape == (1, 32, 32) and train(x[None]).shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match=r"reads 1 channel \(gray\) or 3 \(RGB\), the image has 4"):
        gray_preset(torch.zeros(4, 64, 64, dtype=torch.uint8))


# --- presets for any size (issue 17) ---------------------------------------------------------------


def test_resize_follows_the_crop_unless_given_and_224_stays_torchvisions():
    assert ImageClassification(crop_size=224).resize_size == 256  # torchvision's default, kept
    assert ImageClassification(crop_size=32).resize_size == 37  # round(32 / 0.875), not 256
    assert ImageClassification(crop_size=32, resize_size=256).resize_size == 256  # given: kept
    theirs = tvm.VGG16_Weights.DEFAULT.transforms()
    ours = vggnet.VGG16_Weights.DEFAULT.transforms()
    assert (ours.crop_size, ours.resize_size) == (theirs.crop_size[0], theirs.resize_size[0])
    img = load_image(PHOTOS[0]).resize((48, 40))
    small = ImageClassification(crop_size=32)(img)  # the shorter side to 37: most of the image survives
    mean, std = vggnet.config.IMAGENET_MEAN, vggnet.config.IMAGENET_STD
    reference = tvt.Compose([tvt.Resize(37), tvt.CenterCrop(32), tvt.ToTensor(), tvt.Normalize(mean, std)])
    torch.testing.assert_close(small, reference(img), atol=1e-2, rtol=0)


def test_create_transform_takes_timms_names():
    from vggnet import create_transform

    preset = create_transform(input_size=64, crop_pct=0.8)
    assert isinstance(preset, ImageClassification) and (preset.crop_size, preset.resize_size) == (64, 80)
    assert create_transform(input_size=(3, 224, 224)).resize_size == 256
    gray = create_transform(input_size=(1, 32, 32))
    assert gray.mean == pytest.approx((0.449,)) and gray(load_image(PHOTOS[0])).shape == (1, 32, 32)
    train = create_transform(input_size=48, train=True, hflip=0.0, scale=(0.5, 1.0))
    assert isinstance(train, TrainClassification) and train.scale == (0.5, 1.0) and train.hflip_prob == 0.0
    assert train(load_image(PHOTOS[0])).shape == (3, 48, 48)
    with pytest.raises(ValueError, match="crop_pct must be in"):
        create_transform(input_size=32, crop_pct=1.5)
    with pytest.raises(ValueError, match="input_size must be N or"):
        create_transform(input_size=(3, 32, 40))
