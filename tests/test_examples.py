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

from tests.helpers import offline_env

ROOT = Path(__file__).parents[1]
EXAMPLES = ROOT / "examples"
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
    covered = {name.split(" ")[0] for name in RUNS}
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
