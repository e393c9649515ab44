"""The option blocks the commands share (vggnet.cli.args): how --resize, --crop, --mean, --std make the preset."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest

from vggnet.cli.args import add_preset, check_preset, run_preset
from vggnet.data.transforms import ImageClassification
from vggnet.errors import UsageError

IMAGENET = ImageClassification(crop_size=224)  # resize 256


def preset_for(argv: list[str], preset: ImageClassification = IMAGENET, channels: int = 3, image_size=None):
    parser = argparse.ArgumentParser()
    add_preset(parser)
    args = parser.parse_args(argv)
    args.image_size = image_size
    check_preset(args)
    loaded = SimpleNamespace(preset=preset, model=SimpleNamespace(in_channels=channels))
    return run_preset(args, loaded, image_size)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("argv", "resize", "crop"),
    [
        ([], 256, 224),  # the weights' own
        (["--resize", "32", "--crop", "32"], 32, 32),  # both as given: resize to 32, no crop
        (["--crop", "32"], 37, 32),  # alone: the preset's ratio 224/256 kept, as --image-size 32 gives
        (["--resize", "64"], 64, 56),
        (["--resize", "40", "--crop", "36"], 40, 36),
    ],
)
def test_resize_and_crop_replace_the_weights_sizes(argv, resize, crop):
    preset = preset_for(argv)
    assert (preset.resize_size, preset.crop_size) == (resize, crop)
    assert preset.mean == list(IMAGENET.mean) and preset.interpolation == "bilinear"


def test_one_alone_keeps_the_ratio_of_the_checkpoints_own_preset():
    square = ImageClassification(crop_size=32, resize_size=32, mean=[0.3] * 3, std=[0.2] * 3, interpolation="bicubic")
    preset = preset_for(["--crop", "64"], square)
    assert (preset.resize_size, preset.crop_size, preset.mean, preset.interpolation) == (64, 64, [0.3] * 3, "bicubic")
    assert preset_for(["--crop", "32"], image_size=None).resize_size == IMAGENET.resized(32).resize_size


def test_mean_and_std_replace_the_normalization_one_value_per_channel():
    preset = preset_for(["--mean", "0.3", "0.3", "0.3", "--std", "0.2", "0.25", "0.3"])
    assert (preset.mean, preset.std, preset.crop_size) == ([0.3] * 3, [0.2, 0.25, 0.3], 224)
    gray = ImageClassification(crop_size=32, mean=[0.5], std=[0.5])
    assert preset_for(["--mean", "0.1", "--std", "0.4"], gray, channels=1).mean == [0.1]


@pytest.mark.parametrize(
    ("argv", "image_size", "message"),
    [
        (["--resize", "32"], 40, "give either it or --resize/--crop"),
        (["--crop", "64", "--resize", "40"], None, "--crop 64 is larger than --resize 40: the crop would be padded"),
        (["--resize", "32"], None, "crops 28 px, under VGG's 32; give --crop too (--resize 32 --crop 32: no crop)"),
        (["--mean", "0.5"], None, "--mean takes 3 value(s), one per input channel of the model; got 1"),
    ],
)
def test_combinations_that_cannot_be_are_refused_naming_the_fix(argv, image_size, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        preset_for(argv, image_size=image_size)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--resize", "8"], "expected 32 to 1170 px"),
        (["--crop", "2000"], "at most 1024 px per side"),
        (["--std", "0"], "expected a number above 0, got '0'"),
        (["--mean", "nan"], "expected a finite number, got 'nan'"),
    ],
)
def test_bad_values_are_refused_by_the_parser(argv, message, capsys):
    parser = argparse.ArgumentParser()
    add_preset(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(argv)
    assert message in capsys.readouterr().err
