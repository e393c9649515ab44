"""Presets against torchvision's on real photographs (tests/photos/SOURCES.md)."""

from pathlib import Path

import pytest
import torch

import vggnet
from vggnet.data.constants import IMAGENET_MEAN, IMAGENET_STD, MAX_RESIZE, MAX_SIZE
from vggnet.data.decode import load_image, pil_to_tensor
from vggnet.data.transforms import ImageClassification, TrainClassification, resized_size
from vggnet.errors import BadImageError
from vggnet.train.finetune import FinetuneConfig

Image = pytest.importorskip("PIL.Image")
tvm = pytest.importorskip("torchvision.models")
tvt = pytest.importorskip("torchvision.transforms")

PHOTOS = sorted((Path(__file__).parents[1] / "photos").glob("*.[jp][pn]g"))
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


# --- drop-in (issue 12): presets script like torchvision's ----------------------------------------------


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.slow
def test_scripted_eval_preset_gives_eager_outputs(weights, tmp_path):
    preset = vggnet.VGG16_Weights[weights].transforms()
    scripted = torch.jit.script(preset)
    torch.jit.save(scripted, tmp_path / "preset.pt")
    loaded = torch.jit.load(tmp_path / "preset.pt")
    photo = pil_to_tensor(load_image(PHOTOS[0]))
    inputs = [
        photo,  # uint8 (3, H, W)
        torch.stack([photo[:, :240, :320], photo[:, 10:250, 5:325]]).float() / 255,  # float batch
        (photo[:1].to(torch.int32) * 257).to(torch.uint16),  # 16-bit gray, replicated to RGB
        photo[:, :100, :150],  # smaller than the crop: resized up
    ]
    for x in inputs:
        expected = preset(x)
        torch.testing.assert_close(scripted(x), expected, atol=0, rtol=0)
        torch.testing.assert_close(loaded(x), expected, atol=0, rtol=0)
    # torchvision's own scripted preset, as the eager ones are compared above
    theirs = torch.jit.script(tvm.VGG16_Weights[weights].transforms())
    torch.testing.assert_close(scripted(inputs[1]), theirs(inputs[1]), atol=1e-5, rtol=0)


def test_scripted_gray_and_bicubic_preset_gives_eager_outputs():
    preset = ImageClassification(crop_size=64, resize_size=72, mean=[0.5], std=[0.25], interpolation="bicubic")
    scripted = torch.jit.script(preset)
    x = pil_to_tensor(load_image(PHOTOS[1]))[:, :200, :300]
    assert scripted(x).shape == (1, 64, 64)  # colour made luminance, as in eager mode
    torch.testing.assert_close(scripted(x), preset(x), atol=0, rtol=0)
    torch.testing.assert_close(scripted(x[None]), preset(x[None]), atol=0, rtol=0)


def test_scripted_train_preset_draws_what_eager_draws():
    preset = TrainClassification(crop_size=48)
    scripted = torch.jit.script(preset)
    x = pil_to_tensor(load_image(PHOTOS[2]))[:, :160, :200]
    for seed in range(8):  # crops, the fallback box aside, and flips: the same draws from torch's generator
        torch.manual_seed(seed)
        expected = preset(x)
        torch.manual_seed(seed)
        torch.testing.assert_close(scripted(x), expected, atol=0, rtol=0)


def test_eager_presets_still_take_pil_images_and_check_tensors():
    preset = vggnet.VGG16_Weights.DEFAULT.transforms()
    img = load_image(PHOTOS[0])
    assert preset(img).shape == (3, 224, 224)
    assert TrainClassification(crop_size=32)(img).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="uint8"):
        preset(torch.zeros(3, 40, 40, dtype=torch.int32))


# --- hostile images (issue 11 item 6): decode.py checks files, the presets their resizes ---------------


@pytest.mark.slow
def test_an_extreme_aspect_ratio_is_refused_before_the_resize_allocates(tmp_path):
    tall = tmp_path / "tall.png"
    Image.new("L", (1, 60000)).save(tall)
    assert tall.stat().st_size < 1000  # a few hundred bytes that a resize would make 11 GiB of
    img = load_image(tall)  # 60,000 pixels: within the budget to decode
    preset = ImageClassification(crop_size=224)
    with pytest.raises(BadImageError, match=r"60000x1 \(aspect ratio 60,000:1\) .* 15,360,000x256 = 3,932,160,000"):
        preset(img)
    with pytest.raises(BadImageError, match="over the budget"):
        preset(torch.zeros(3, 1, 60000, dtype=torch.uint8))  # tensors take the same path
    assert resized_size(600, 400, 256) == (384, 256)  # ordinary images are untouched
    wide = Image.new("RGB", (2000, 2))  # 1000:1 resized to 256: 65.5 MP, under the budget
    assert preset(wide).shape == (3, 224, 224)


def test_image_sizes_have_an_upper_bound():
    assert (MAX_SIZE, MAX_RESIZE) == (1024, 1170)
    ImageClassification(crop_size=1024).resized(1024)  # the largest allowed
    with pytest.raises(ValueError, match=r"crop_size must be at most 1024 pixels .*, got 1025"):
        ImageClassification(crop_size=1025)
    with pytest.raises(ValueError, match="resize_size must be at most 1170 pixels"):
        ImageClassification(crop_size=224, resize_size=5000)
    with pytest.raises(ValueError, match="crop_size must be at most 1024"):
        TrainClassification(crop_size=5000)
    with pytest.raises(ValueError, match="image_size must be at most 1024"):
        FinetuneConfig("data", image_size=2048)


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
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    reference = tvt.Compose([tvt.Resize(37), tvt.CenterCrop(32), tvt.ToTensor(), tvt.Normalize(mean, std)])
    torch.testing.assert_close(small, reference(img), atol=1e-2, rtol=0)


def test_create_transform_takes_timms_names():
    from vggnet.data.transforms import create_transform

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
