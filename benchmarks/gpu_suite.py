"""Everything that needs a CUDA GPU, in one go, within a time budget (--budget-s, default 480 s).

    python benchmarks/gpu_suite.py [--out DIR] [--budget-s 480] [--smoke]

Not yet run on a GPU: the budget and the shares below are estimates, not measurements. Run it with
a time limit of at least --budget-s + 60 s (540 s for the default; the device `run` call's
timeout_s): the steps stay within the budget, the rest is for start-up and the last kill.
Runs from a plain checkout (vggnet need not be installed; torch, torchvision and pytest must be).

Steps, each a subprocess (in its own process group) with its own time limit, its share of the
budget plus what the steps before it left unused, so that one that hangs or fails does not cost
the others; at its limit the whole group is killed and what it printed until then is kept:

1. tests: `pytest -m cuda` (every CUDA-marked test of the project, compile and CUDA graphs included),
   with a per-test `--timeout` of half the step's limit when pytest-timeout is installed, so that
   one slow compile fails one test, not the step.
2. inference: `bench_inference.py --device cuda` (bf16, compiled; vgg16 at batch 128, 1 and 32,
   vgg16_bn, vgg11, vgg19 at 128; torchvision eager, channels_last and compiled in the same run).
3. train: `bench_train.py --device cuda` (vgg16, batch 64, bf16 autocast, channels_last, SGD; eager
   first, then compiled, vggnet and torchvision).
4. finetune: `bench_finetune.py --device cuda` (the fine-tuning work's own figures: activation memory
   with and without gradient checkpointing, `vggnet finetune` linear vs full), last.

Each benchmark gets --budget-s of 60% of its step's limit, after which it starts no new
configuration, candidate or part (the rest is for the one under way), and rewrites its JSON after
each one, so a step killed at its limit still leaves what it measured (the parts not reached are
listed in the file). The JSON goes next to this suite's own summary, gpu_suite-<device>-<date>.json
(each step's command, exit status, duration and the tail of its output; rewritten before and after
every step), in DIR (default: $OUT when set, else benchmarks/results/). --smoke runs the same
steps with the benchmarks' --smoke on whatever device there is (CPU here): it checks this script,
not the GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # a checkout without `pip install -e .` (the GPU machines have none)

from harness import environment, save_results

# step -> its share of --budget-s (a step may also use what the steps before it left unused). Estimates:
# tests holds two cold inductor compiles (one with CUDA graphs) and a fixture that writes and hashes
# ~1 GB of checkpoints; train two cold compiles of vgg16 forward + backward.
SHARES = {"tests": 0.25, "inference": 0.38, "train": 0.25, "finetune": 0.12}


def command(name: str, out: Path, device: str, smoke: bool, limit: float) -> list[str]:
    """The command of one step, given its time limit in seconds."""
    if name == "tests":
        cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "--durations=10"]
        if importlib.util.find_spec("pytest_timeout") is not None:  # else pytest would refuse the option
            cmd.append(f"--timeout={max(10, limit / 2):.0f}")
        return [*cmd, str(ROOT / "tests")]
    bench = ["--device", device, "--out", str(out)] + (["--smoke"] if smoke else [])
    # It starts nothing new after 60% of its limit: the rest is for the configuration under way.
    return [sys.executable, str(HERE / f"bench_{name}.py"), *bench, "--budget-s", f"{0.6 * limit:.0f}"]


def run_step(name: str, cmd: list[str], limit: float) -> dict[str, Any]:
    print(f"== {name} (limit {limit:.0f} s): {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    # A process group of its own: at the limit, its compile workers and data loaders die with it
    # instead of holding the GPU (or the output pipe) during the next step.
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    rc: int | None
    try:
        output = _text(proc.communicate(timeout=limit)[0])
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:  # communicate() again returns everything printed, what was read before the timeout included
            output = _text(proc.communicate(timeout=10)[0])
        except subprocess.TimeoutExpired as err:  # something left the group and holds the pipe open
            output = _text(err.output)
            proc.wait()  # killed with its group: reap it without waiting for the pipe
        rc = None
        output += f"\n[killed after {limit:.0f} s]"
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
    suite = "gpu_suite" + ("-smoke" if args.smoke else "")
    start = time.perf_counter()
    for name in SHARES:
        left = args.budget_s - (time.perf_counter() - start)
        if left < 20:
            cmd = command(name, args.out, device, args.smoke, budget[name])
            summary["steps"][name] = {"command": cmd, "returncode": None, "skipped": "budget spent"}
            continue
        # A step may use its share plus whatever earlier steps left unused, never more than what is left.
        used = sum(s.get("elapsed_s", 0) for s in summary["steps"].values())
        spare = sum(budget[n] for n in summary["steps"]) - used
        limit = min(left, budget[name] + max(0.0, spare))
        cmd = command(name, args.out, device, args.smoke, limit)
        summary["steps"][name] = {"command": cmd, "returncode": None, "running": f"since {time.time():.0f}"}
        save_results(suite, summary, args.out)  # a suite killed during this step still says which it was
        summary["steps"][name] = run_step(name, cmd, limit)
        save_results(suite, summary, args.out)  # after every step
    summary["elapsed_s"] = round(time.perf_counter() - start, 1)
    path = save_results(suite, summary, args.out)
    failed = [n for n, s in summary["steps"].items() if s.get("returncode") not in (0, 5)]  # 5: no tests collected
    verdict = f"; failed or skipped: {', '.join(failed)}" if failed else ""
    print(f"gpu_suite: {summary['elapsed_s']} s; summary in {path}{verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
