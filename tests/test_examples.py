"""examples/: each script as a user runs it (a real process), checked on what it claims."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vggnet

ROOT = Path(__file__).parents[1]
DIGITS = ROOT / "examples" / "train_digits.py"


def train_digits(out: Path, *args: str) -> dict[str, dict[str, int]]:
    """Run examples/train_digits.py into `out`; its two JSON lines: what the script measured, what evaluate said."""
    pytest.importorskip("sklearn")
    pytest.importorskip("safetensors")
    argv = [sys.executable, str(DIGITS), "--out", str(out), "--device", "cpu", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=os.environ.copy())
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {k: v for line in lines for k, v in line.items()}


def evaluate_saved(out: Path) -> dict[str, object]:
    """`vggnet evaluate` on the test folder with the saved file, run here as a separate process."""
    argv = [sys.executable, "-m", "vggnet", "evaluate", str(out / "digits/test"), "--weights",
            str(out / "digits.safetensors"), "--device", "cpu", "--json", "--quiet"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(done.stdout)
    return report


@pytest.mark.slow
def test_train_digits_smoke_mode_agrees_with_vggnet_evaluate(tmp_path):
    said = train_digits(tmp_path, "--epochs", "1", "--smoke")
    assert said["script"] == said["vggnet evaluate"] and said["script"]["images"] == 360  # every fifth of 1,797
    loaded = vggnet.load(tmp_path / "digits.safetensors")
    assert list(loaded.categories) == [str(d) for d in range(10)] and loaded.model.head == "gap"
    assert (loaded.preset.resize_size, loaded.preset.crop_size) == (32, 32) and loaded.info == {"epochs": 1}


@pytest.mark.slow
def test_a_plain_loops_test_accuracy_is_what_vggnet_evaluate_gives_to_the_image(tmp_path):
    """Issue 25's "done when": a plain PyTorch loop on the digits (vgg11_bn, gap head, AdamW, a head-only
    epoch then the whole network, on the CPU), saved with vggnet.save; `vggnet evaluate` on the held-out
    folder, as a separate process, gets the same number of images right as the script counted."""
    said = train_digits(tmp_path, "--epochs", "1")
    right, images = said["script"]["correct"], said["script"]["images"]
    assert images == 360 and right > 0.6 * images  # learnt (chance is 10%), so a wrong preset would show
    report = evaluate_saved(tmp_path)
    assert report["images"] == images and round(float(report["acc1"]) * images) == right
    assert report["layout"] == "classes"  # the folders matched the saved class names
