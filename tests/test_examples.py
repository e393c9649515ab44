"""The examples run: each script of examples/ in a fresh process with --smoke, offline, on real data.

The documentation includes these files (`--8<--`), so the code a reader sees is the code run here. The
data are scikit-learn's digits and the photos in tests/photos; the weights are random or trained by the
example itself. Every file in examples/ must have a run below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vggnet
from tests.helpers import offline_env

ROOT = Path(__file__).parents[1]
EXAMPLES = ROOT / "examples"
DIGITS = EXAMPLES / "train_digits.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]

# name -> (the command, with {tmp} for a scratch folder; what its output must hold)
RUNS: dict[str, tuple[list[str], str]] = {
    "make_digits.py": ([sys.executable, "examples/make_digits.py", "{tmp}/digits", "--per-class", "5"], "'test': 10"),
    "train_ddp.py": ([sys.executable, "examples/train_ddp.py", "--smoke", "--bf16", "--out", "{tmp}/d.pth"], "val acc"),
    "train_ddp.py under torchrun": (
        [*TORCHRUN, "examples/train_ddp.py", "--smoke", "--out", "{tmp}/d.pth"],
        "saved",
    ),
    "finetune_evaluate.sh": (["bash", "examples/finetune_evaluate.sh", "--smoke", "{tmp}/run"], "acc@1"),
    "perceptual_restoration.py": (
        [sys.executable, "examples/perceptual_restoration.py", "--weights", "none", "--smoke"],
        "held-out PSNR after 2 steps",
    ),
    "embeddings_search.py": (
        [sys.executable, "examples/embeddings_search.py", "--weights", "none", "--smoke"],
        "nearest-neighbour accuracy",
    ),
    "int8_deploy.py": ([sys.executable, "examples/int8_deploy.py", "--smoke"], "same top-1 class"),
    "onnx_export.py": (
        [sys.executable, "examples/onnx_export.py", "--smoke", "--out", "{tmp}/vgg11.onnx"],
        "largest difference from PyTorch",
    ),
}


def test_every_example_has_a_run():
    files = {p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".sh")}
    covered = {name.split(" ")[0] for name in RUNS} | {DIGITS.name}  # train_digits.py: its own tests below
    assert files - covered == set(), "add a --smoke run of the new example to RUNS"
    assert covered - files == set()


def run_example(name: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    command, _ = RUNS[name]
    env = offline_env(tmp_path)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # `vggnet` itself
    return subprocess.run(
        [part.replace("{tmp}", str(tmp_path)) for part in command],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_example_runs(name, tmp_path):
    run = run_example(name, tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    assert RUNS[name][1] in run.stdout + run.stderr
    if name == "finetune_evaluate.sh":
        check_tutorial_outputs(tmp_path / "run")


def check_tutorial_outputs(out: Path) -> None:
    """What the fine-tuning tutorial shows: three pictures, one prediction per test image."""
    for picture in ("curves.png", "confusion.png", "cam.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == len(list((out / "digits" / "test").rglob("*.png")))
    assert {"image", "predictions"} <= set(json.loads(lines[0]))


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
def test_a_plain_loops_test_accuracy_is_what_vggnet_evaluate_gives_to_the_image(tmp_path):
    """Issue 25's "done when": a plain PyTorch loop on the digits (vgg11_bn, gap head, AdamW, a head-only
    epoch then the whole network, on the CPU), saved with vggnet.save; `vggnet evaluate` on the held-out
    folder, as a separate process, gets the same number of images right as the script counted. The script
    runs `vggnet evaluate` itself too (the line a reader sees); both must agree with its own count."""
    said = train_digits(tmp_path, "--epochs", "1")
    right, images = said["script"]["correct"], said["script"]["images"]
    assert images == 360 and right > 0.6 * images  # learnt (chance is 10%), so a wrong preset would show
    assert said["vggnet evaluate"] == said["script"]
    report = evaluate_saved(tmp_path)
    assert report["images"] == images and round(float(report["acc1"]) * images) == right
    assert report["layout"] == "classes"  # the folders matched the saved class names
    loaded = vggnet.load(tmp_path / "digits.safetensors")
    assert list(loaded.categories) == [str(d) for d in range(10)] and loaded.model.head == "gap"
    assert (loaded.preset.resize_size, loaded.preset.crop_size) == (32, 32) and loaded.info == {"epochs": 1}
