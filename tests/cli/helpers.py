"""What the command-line tests share: the photos, the installed script, stand-in records, expected predictions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vggnet
from tests.helpers import file_sha256 as sha256
from vggnet.data.decode import load_image
from vggnet.models.weights import IMAGENET_CATEGORIES, Weights, WeightsEnum

PHOTOS = Path(__file__).parents[1] / "photos"
PHOTO_NAMES = ["camera.png", "chelsea.png", "coffee.jpg", "rocket.jpg"]
VENV_BIN = Path(sys.executable).parent


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def save_hub_style(state: dict[str, torch.Tensor], folder: Path, stem: str) -> Path:
    """Save as `stem-<sha256[:8]>.pth`, the torch.hub naming the official files use."""
    tmp = folder / f"{stem}.tmp"
    torch.save(state, tmp)
    return tmp.rename(folder / f"{stem}-{sha256(tmp)[:8]}.pth")


def make_enum(name: str, records: dict[str, Weights]) -> type[WeightsEnum]:
    members = {**records, "DEFAULT": next(iter(records.values()))}
    return WeightsEnum(name, members)  # type: ignore[return-value]


def expected_topk(checkpoint: Path, paths: list[Path], k: int, crop: int = 224) -> list[list[tuple[int, float]]]:
    """What predict must print: the same weights and the ImageNet preset, computed here."""
    model = vggnet.vgg11(init_weights=False)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    preset = vggnet.data.transforms.ImageClassification(crop_size=crop, resize_size=round(crop * 256 / 224))
    with torch.inference_mode():
        probs = model.eval()(torch.stack([preset(load_image(p)) for p in paths])).softmax(dim=1)
    top = probs.topk(k, dim=1)
    return [list(zip(i, v)) for i, v in zip(top.indices.tolist(), top.values.tolist())]


def check_predictions(results: list[dict], expected: list[list[tuple[int, float]]], paths: list[Path]) -> None:
    assert [r["image"] for r in results] == [str(p) for p in paths]
    for result, want in zip(results, expected):
        got = [(p["index"], p["probability"]) for p in result["predictions"]]
        assert [i for i, _ in got] == [i for i, _ in want]
        assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-4)
        assert [p["label"] for p in result["predictions"]] == [IMAGENET_CATEGORIES[i] for i, _ in want]


SMALL = ["--image-size", "32", "--workers", "0", "--batch-size", "4"]
