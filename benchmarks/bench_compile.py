"""Compiled fine-tuning: vggnet against torchvision, epoch by epoch, float32 and bf16 autocast, in one run.

    python benchmarks/bench_compile.py [--device cpu|cuda] [--smoke] [--out DIR] [--budget-s S]
        [--arch A] [--image-size N] [--batch-size N] [--steps N] [--precisions fp32,bf16] [--repeats N]
        [--backend inductor|aot_eager]

A fine-tuning-like loop, the same for both libraries: the same seeded weights, a fixed random batch,
SGD (momentum 0.9), cross-entropy, train mode. Each "epoch" is --steps steps; timed are

1. `head_only_s`: the first compiled epoch with the features frozen (the cold compile included);
   vggnet's `model.freeze()`, torchvision's `model.features.requires_grad_(False)`;
2. `unfreeze_s`: the first compiled epoch after unfreezing the features (`model.unfreeze()`, and
   `requires_grad_(True)`), whatever recompiling that costs (issue 25);
3. `steady_s`: the next compiled epoch;
4. `eager_s`: one epoch of the same (unfrozen) model without compiling, after a warm-up step;

`unfreeze_compile_s` (unfreeze_s - steady_s) is what unfreezing cost beyond the epoch's work, and each run
records the graphs Dynamo compiled in each compiled epoch and the load average when it started.

Each (library, precision) runs in a fresh process with its own empty Inductor cache folder: vggnet's
and torchvision's graphs are nearly the same, and in one process (or with a shared cache) the second to
compile would reuse the first one's kernels.
The runs alternate between the libraries (vggnet first in odd repeats, torchvision first in even ones),
so that a change of load hits both. Defaults: vgg16 at 224x224, batch 4, 3 steps per epoch, float32 and
bf16, one repeat, Inductor. --smoke: vgg11 at 32x32, batch 2, 1 step, float32 only, and the `aot_eager`
backend (Dynamo's graphs and recompiles as with Inductor, without Inductor's minutes of C++ code
generation on two cores): it checks the machinery, not the timings.

Results go to DIR/compile-<device>-<UTC date>.json (default benchmarks/results/), headed by
`harness.environment` (machine, versions, load average), rewritten after each run, with `complete`,
the runs not reached under `pending` and those not started because --budget-s had passed under
`skipped`. Nothing is asserted: a shared machine's figures say little; measure on an idle one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # a checkout without `pip install -e .` (the GPU machines have none)

from harness import Budget, environment, save_results

import vggnet

LIBRARIES = ("vggnet", "torchvision")
PHASES = ("head_only_s", "unfreeze_s", "steady_s", "eager_s")
COLUMNS = (*PHASES, "unfreeze_compile_s")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
BACKENDS = ("inductor", "aot_eager")  # aot_eager: Dynamo and AOTAutograd without code generation (the smoke's)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        print(json.dumps(run_once(args)))
        return 0
    budget = Budget(args.budget_s)
    _defaults(args)
    device = torch.device(args.device)
    runs = _plan(args.precisions.split(","), args.repeats)
    data: dict[str, Any] = {
        "suite": "compile", "smoke": args.smoke, **environment(device), "arch": args.arch, "backend": args.backend,
        "batch_size": args.batch_size, "image_size": [args.image_size] * 2, "steps_per_epoch": args.steps,
        "optimizer": "SGD(lr=1e-3, momentum=0.9)", "budget_s": args.budget_s, "complete": False, "runs": [],
        "pending": [dict(r) for r in runs], "skipped": budget.skipped,
    }  # fmt: skip
    name = "compile" + ("-smoke" if args.smoke else "")
    print(f"{args.arch}, {args.image_size}x{args.image_size}, batch {args.batch_size}, {args.steps} steps an epoch, "
          f"on {data['device_name']}; load average {data['load_average']}", flush=True)  # fmt: skip
    save_results(name, data, args.out)
    for run in runs:
        data["pending"].remove(run)
        if budget.skip(**run):
            continue
        data["runs"].append({**run, "load_average": list(os.getloadavg()), **_in_fresh_process(args, run)})
        save_results(name, data, args.out)
        _print_row(data["runs"][-1])
    data["complete"] = True
    data["elapsed_s"] = round(budget.spent(), 1)
    data["load_average_end"] = list(os.getloadavg())
    path = save_results(name, data, args.out)
    print(_table(data["runs"]))
    print(f"results written to {path}")
    return 0


def run_once(args: argparse.Namespace) -> dict[str, Any]:
    """One library at one precision, in this process: the four epochs' seconds and the graphs compiled."""
    from torch._dynamo.utils import counters

    device = torch.device(args.device)
    model, freeze, unfreeze = _model(args.library, args.arch, device)
    x, y = _batch(args.batch_size, args.image_size, device)
    autocast = PRECISIONS[args.precision]
    freeze(model)
    compiled = _epoch_fn(torch.compile(model, backend=args.backend), model, x, y, autocast, device)
    out: dict[str, Any] = {"graphs": {}}
    for phase in PHASES[:3]:
        if phase == "unfreeze_s":
            unfreeze(model)
        before = counters["stats"]["unique_graphs"]
        out[phase] = compiled(args.steps)
        out["graphs"][phase[:-2]] = counters["stats"]["unique_graphs"] - before
    eager = _epoch_fn(model, model, x, y, autocast, device)
    eager(1)  # warm-up: the allocator's first pass
    out["eager_s"] = eager(args.steps)
    # What unfreezing costs beyond an epoch's work: its recompile, if any (the figure of issue 25)
    out["unfreeze_compile_s"] = out["unfreeze_s"] - out["steady_s"]
    return out


def _model(library: str, arch: str, device: torch.device) -> tuple[nn.Module, Callable[..., Any], Callable[..., Any]]:
    """(the model with seed-0 weights, in train mode, its freeze, its unfreeze): each library's own way."""
    torch.manual_seed(0)
    state = vggnet.get_model(arch).state_dict()  # keys are torchvision's: both load the same weights
    if library == "vggnet":
        model: nn.Module = vggnet.get_model(arch)
        freeze, unfreeze = (lambda m: m.freeze()), (lambda m: m.unfreeze())
    else:
        import torchvision.models  # the peer this script compares against

        model = torchvision.models.get_model(arch)
        freeze = lambda m: m.features.requires_grad_(False)  # noqa: E731
        unfreeze = lambda m: m.features.requires_grad_(True)  # noqa: E731
    model.load_state_dict(state)
    return model.to(device).train(), freeze, unfreeze


def _batch(batch_size: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(batch_size, 3, size, size, device=device), torch.randint(0, 1000, (batch_size,), device=device)


def _epoch_fn(
    net: nn.Module,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    autocast: torch.dtype | None,
    device: torch.device,
) -> Callable[[int], float]:
    """A function running `steps` training steps of `net` (updating `model`'s weights) and returning their seconds."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)  # frozen ones get no gradient: skipped

    def epoch(steps: int) -> float:
        _synchronize(device)
        tic = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            ctx = torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext()
            with ctx:
                loss = F.cross_entropy(net(x), y)
            torch.autograd.backward(loss)
            optimizer.step()
        _synchronize(device)
        return time.perf_counter() - tic

    return epoch


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _plan(precisions: list[str], repeats: int) -> list[dict[str, Any]]:
    """The runs in order: per repeat and precision both libraries, the first alternating between repeats."""
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise SystemExit(f"unknown precisions {unknown}; valid: {', '.join(PRECISIONS)}")
    runs = []
    for repeat in range(1, repeats + 1):
        order = LIBRARIES if repeat % 2 else LIBRARIES[::-1]
        runs += [{"library": lib, "precision": p, "repeat": repeat} for p in precisions for lib in order]
    return runs


def _in_fresh_process(args: argparse.Namespace, run: dict[str, Any]) -> dict[str, Any]:
    """`run_once` in a child process with an empty Inductor cache folder of its own."""
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": str(Path(cache) / "triton")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), env.get("PYTHONPATH")]))
        options = {"--library": run["library"], "--precision": run["precision"], "--device": args.device,
                   "--arch": args.arch, "--image-size": args.image_size, "--batch-size": args.batch_size,
                   "--steps": args.steps, "--backend": args.backend}  # fmt: skip
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *(str(v) for o in options.items() for v in o)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _print_row(r: dict[str, Any]) -> None:
    if "error" in r:
        print(f"{r['library']:12} {r['precision']:5} failed: {r['error']}", flush=True)
        return
    cells = "  ".join(f"{phase[:-2]} {r[phase]:7.2f} s" for phase in COLUMNS)
    print(f"{r['library']:12} {r['precision']:5} {cells}  graphs {r['graphs']}", flush=True)


def _table(runs: list[dict[str, Any]]) -> str:
    """Median seconds per epoch over the repeats, per library and precision, and vggnet / torchvision."""
    lines = [f"{'':12} {'':5} " + " ".join(f"{p[:-2]:>16}" for p in COLUMNS) + "   (s per epoch, median)"]
    medians: dict[tuple[str, str], list[float]] = {}
    for lib, precision in dict.fromkeys((r["library"], r["precision"]) for r in runs if "error" not in r):
        same = [r for r in runs if (r["library"], r["precision"]) == (lib, precision) and "error" not in r]
        medians[lib, precision] = [statistics.median(r[p] for r in same) for p in COLUMNS]
        lines.append(f"{lib:12} {precision:5} " + " ".join(f"{v:16.2f}" for v in medians[lib, precision]))
    for precision in dict.fromkeys(p for _, p in medians):
        ours, theirs = medians.get(("vggnet", precision)), medians.get(("torchvision", precision))
        if ours and theirs:
            ratio = " ".join(f"{a / b:15.2f}x" for a, b in zip(ours, theirs))
            lines.append(f"{'vggnet/tv':12} {precision:5} {ratio}")
    return "\n".join(lines)


def _defaults(args: argparse.Namespace) -> None:
    smoke = args.smoke
    args.arch = args.arch or ("vgg11" if smoke else "vgg16")
    args.image_size = args.image_size or (32 if smoke else 224)
    args.batch_size = args.batch_size or (2 if smoke else 4)
    args.steps = args.steps or (1 if smoke else 3)
    args.precisions = args.precisions or ("fp32" if smoke else "fp32,bf16")
    args.backend = args.backend or ("aot_eager" if smoke else "inductor")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="vgg11, 32x32, batch 2, 1 step, fp32, aot_eager (CI)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON (default %(default)s)")
    parser.add_argument("--arch", default=None, help="default vgg16 (vgg11 with --smoke)")
    parser.add_argument("--image-size", type=int, default=None, help="default 224 (32 with --smoke)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 4 (2 with --smoke)")
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch (default 3, 1 with --smoke)")
    parser.add_argument("--precisions", default=None, help="comma-separated, of fp32,bf16 (default both)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per library and precision (default 1)")
    parser.add_argument("--backend", choices=BACKENDS, default=None, help="default inductor (aot_eager with --smoke)")
    parser.add_argument("--budget-s", type=float, default=None, help="start no run after this many seconds")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one run, in a child process
    parser.add_argument("--library", choices=LIBRARIES, help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=list(PRECISIONS), help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
