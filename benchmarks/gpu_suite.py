"""Everything that needs a CUDA GPU, in one go, sized for about 8 minutes on one H100.

    python benchmarks/gpu_suite.py [--out DIR] [--budget-s 480] [--smoke]

Runs from a plain checkout (vggnet need not be installed; torch, torchvision and pytest must be).

Steps, each a subprocess with its own time limit, so that one that hangs or fails does not cost
the others (the limits shrink to what is left of --budget-s):

1. tests: `pytest -m cuda` (every CUDA-marked test of the project, compile and CUDA graphs included).
2. inference: `bench_inference.py --device cuda` (bf16, compiled; vgg16 at batch 128, 1 and 32,
   vgg16_bn, vgg11, vgg19 at 128; torchvision eager, channels_last and compiled in the same run);
   it stops starting new configurations after its share of the budget.
3. train: `bench_train.py --device cuda` (vgg16, batch 64, bf16 autocast, channels_last, SGD; eager
   and compiled, vggnet and torchvision).
4. finetune: `bench_finetune.py --device cuda` (the fine-tuning work's own figures: activation memory
   with and without gradient checkpointing, `vggnet finetune` linear vs full), last, with what is left.

The benchmarks write their JSON next to this suite's own summary, gpu_suite-<device>-<date>.json
(each step's command, exit status, duration and the tail of its output), in DIR (default: $OUT
when set, else benchmarks/results/). --smoke runs the same steps with the benchmarks' --smoke on
whatever device there is (CPU here): it checks this script, not the GPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # a checkout without `pip install -e .` (the GPU machines have none)

from vggnet.bench import environment, save_results  # noqa: E402

# step -> its share of --budget-s (a step may also use what the steps before it left unused)
SHARES = {"tests": 0.15, "inference": 0.45, "train": 0.27, "finetune": 0.13}


def commands(out: Path, device: str, smoke: bool, budget: dict[str, float]) -> dict[str, list[str]]:
    bench = ["--device", device, "--out", str(out)] + (["--smoke"] if smoke else [])
    return {
        "tests": [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", str(ROOT / "tests")],
        "inference": [
            sys.executable,
            str(HERE / "bench_inference.py"),
            *bench,
            "--budget-s",
            f"{0.6 * budget['inference']:.0f}",  # the rest of its share is for the configuration under way
        ],
        "train": [sys.executable, str(HERE / "bench_train.py"), *bench],
        "finetune": [sys.executable, str(HERE / "bench_finetune.py"), *bench],
    }


def run_step(name: str, cmd: list[str], limit: float) -> dict[str, Any]:
    print(f"== {name} (limit {limit:.0f} s): {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    try:
        run = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=limit)
        rc, output = run.returncode, run.stdout + run.stderr
    except subprocess.TimeoutExpired as err:
        rc = None
        output = (_text(err.stdout) + _text(err.stderr)) + f"\n[killed after {limit:.0f} s]"
    elapsed = time.perf_counter() - start
    print(output[-4000:], flush=True)
    return {"command": cmd, "returncode": rc, "elapsed_s": round(elapsed, 1), "output_tail": output[-6000:]}


def _env() -> dict[str, str]:
    """The environment with this checkout first on PYTHONPATH: vggnet need not be installed."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_out = Path(os.environ["OUT"]) if os.environ.get("OUT") else HERE / "results"
    parser.add_argument("--out", type=Path, default=default_out, help="folder for the JSON (default: $OUT or results/)")
    parser.add_argument("--budget-s", type=float, default=480, help="total seconds for all steps (default 480)")
    smoke_help = "the benchmarks' --smoke on any device (checks this script, not the GPU)"
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    args = parser.parse_args(argv)

    if not torch.cuda.is_available() and not args.smoke:
        print("gpu_suite: no CUDA GPU here; run with --smoke to check the script on CPU", file=sys.stderr)
        return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    budget = {name: share * args.budget_s for name, share in SHARES.items()}
    summary: dict[str, Any] = {"suite": "gpu_suite", "smoke": args.smoke, **environment(torch.device(device))}
    summary["budget_s"] = args.budget_s
    summary["steps"] = {}
    start = time.perf_counter()
    for name, cmd in commands(args.out, device, args.smoke, budget).items():
        left = args.budget_s - (time.perf_counter() - start)
        if left < 20:
            summary["steps"][name] = {"command": cmd, "returncode": None, "skipped": "budget spent"}
            continue
        # A step may use its share plus whatever earlier steps left unused, never more than what is left.
        used = sum(s.get("elapsed_s", 0) for s in summary["steps"].values())
        spare = sum(budget[n] for n in summary["steps"]) - used
        summary["steps"][name] = run_step(name, cmd, min(left, budget[name] + max(0.0, spare)))
        save_results("gpu_suite" + ("-smoke" if args.smoke else ""), summary, args.out)  # after every step
    summary["elapsed_s"] = round(time.perf_counter() - start, 1)
    path = save_results("gpu_suite" + ("-smoke" if args.smoke else ""), summary, args.out)
    failed = [n for n, s in summary["steps"].items() if s.get("returncode") not in (0, 5)]  # 5: no tests collected
    verdict = f"; failed or skipped: {', '.join(failed)}" if failed else ""
    print(f"gpu_suite: {summary['elapsed_s']} s; summary in {path}{verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
