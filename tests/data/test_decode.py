"""One image file -> checked pixels: 16-bit and float images, the pixel budget, files that are not images."""

from pathlib import Path

import pytest
import torch

from tests.helpers import png_declaring
from vggnet.data.decode import DEFAULT_MAX_PIXELS, load_image, max_image_pixels, pil_to_tensor
from vggnet.data.transforms import ImageClassification
from vggnet.errors import BadImageError
from vggnet.settings import ENV_MAX_PIXELS

Image = pytest.importorskip("PIL.Image")


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


# --- hostile images (issue 11 item 6) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (30000, 30000, "its header declares 900,000,000 pixels, over the budget of 89,478,485"),  # Pillow's own error
        (10000, 10000, "its header declares 10000x10000 = 100,000,000 pixels, over the budget"),  # Pillow's warning
        (1, 100_000_000, "its header declares 1x100000000 = 100,000,000 pixels"),
    ],
)
def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, width, height, message):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(width, height))
    assert bomb.stat().st_size < 100
    with pytest.raises(BadImageError, match=rf"^{bomb}: {message}.*VGGNET_MAX_IMAGE_PIXELS.*nothing was decoded"):
        load_image(bomb)
    with pytest.raises(BadImageError) as info:
        load_image(str(bomb))
    assert info.value.path == str(bomb) and isinstance(info.value, ValueError)


def test_the_pixel_budget_is_configurable(tmp_path, monkeypatch):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (300, 200), "red").save(photo)
    assert load_image(photo).size == (300, 200)
    with pytest.raises(BadImageError, match=r"300x200 = 60,000 pixels, over the budget of 59,999"):
        load_image(photo, max_pixels=59_999)
    monkeypatch.setenv(ENV_MAX_PIXELS, "50_000")
    assert max_image_pixels() == 50_000
    with pytest.raises(BadImageError, match="over the budget of 50,000"):
        load_image(photo)
    monkeypatch.setenv(ENV_MAX_PIXELS, "lots")
    with pytest.raises(ValueError, match=r"VGGNET_MAX_IMAGE_PIXELS='lots' is not a positive whole number"):
        load_image(photo)
    monkeypatch.delenv(ENV_MAX_PIXELS)
    assert max_image_pixels() == DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS  # Pillow's default


def test_files_that_are_not_images_name_themselves(tmp_path):
    import io
    import os

    text = tmp_path / "notes.jpg"
    text.write_text("this is not a JPEG")
    buf = io.BytesIO()
    Image.new("RGB", (300, 300), "blue").save(buf, "JPEG")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(buf.getvalue()[:400])
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    cases = [
        (text, "not an image Pillow can identify"),
        (truncated, r"not a readable image \(.+\)"),
        (fifo, "is a FIFO, not an image file; nothing was read"),  # without the check, the read blocks for ever
        (tmp_path, "is a folder, not an image file"),
        (Path("/dev/zero"), "is a device or socket, not an image file"),  # would be read for ever
    ]
    for path, message in cases:
        with pytest.raises(BadImageError, match=rf"^{path}: {message}"):
            load_image(path)
    with pytest.raises(FileNotFoundError):  # not an image problem: the OSError open gives
        load_image(tmp_path / "missing.png")
