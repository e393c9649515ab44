"""Fine-tuning step: vggnet against torchvision, eager and compiled, on the same weights and batch.

    python benchmarks/bench_train.py [--device cpu|cuda] [--smoke] [--out DIR] [--no-compile] [--budget-s S]
                                     [--bf16 | --no-bf16]

One step = forward, cross-entropy on random labels, backward, SGD (momentum 0.9) update, in train
mode (dropout on). On CUDA: bf16 autocast, channels_last weights and input, cuDNN benchmark on,
vgg16 at batch 64. On CPU (sized for 2 cores): float32, channels_last, vgg16 at batch 4, compile
only with --compile; and, where the CPU computes bf16 natively (`vggnet.deploy.inference.cpu_has_native_bf16`,
or with --bf16), "vggnet bf16": vggnet's step as `vggnet finetune` takes it there (bf16 autocast,
channels_last) against torchvision's float32 eager step. --smoke: vgg11 at 32x32, batch 2, two steps.
The candidates take turns in interleaved rounds (median, method of vggnet/bench.py); img/s = batch /
step time. The file also records the load average after the rounds and the share of the CPUs the
process had while timing (`cpu_use`: CPU seconds / wall seconds / threads; near 1 on an idle machine).

The candidates are added one at a time, eager ones first (cheap, and the baseline), the compiled
ones last (a cold torch.compile of forward + backward is slow: benchmarks/README.md). Each time one is
ready, all ready candidates are timed again, together, and the JSON is rewritten: a run killed
during a compile leaves the figures measured so far, with the candidates not reached listed under
`pending`. After --budget-s seconds no further candidate is started; those go under `skipped`.

Results go to DIR/train-<device>-<date>.json (default benchmarks/results/); nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # a checkout without `pip install -e .` (the GPU machines have none)

from harness import Budget, environment, save_results

import vggnet
from vggnet.deploy.bench import load_average, time_interleaved
from vggnet.deploy.inference import cpu_has_native_bf16

# name -> (builder, compiled, autocast dtype or None for the suite's own)
Candidates = dict[str, tuple[Callable[[str], nn.Module], bool, torch.dtype | None]]


def make_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, autocast: torch.dtype | None, compile: bool
) -> Callable[[], torch.Tensor]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def forward_loss(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ctx = torch.autocast(x.device.type, dtype=autocast) if autocast else contextlib.nullcontext()
        with ctx:
            loss: torch.Tensor = loss_fn(model(inputs), labels)
        return loss

    forward = torch.compile(forward_loss) if compile else forward_loss

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = forward(x, y)
        torch.autograd.backward(loss)  # typed, unlike Tensor.backward
        optimizer.step()
        return loss.detach()

    return step


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    budget = Budget(args.budget_s)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    arch = args.arch or ("vgg11" if args.smoke else "vgg16")
    batch_size = args.batch_size or (2 if args.smoke else 64 if cuda else 4)
    iters = args.iters or (2 if args.smoke else 30 if cuda else 5)
    size = 32 if args.smoke else 224
    compile = args.compile if args.compile is not None else (cuda and not args.smoke)
    autocast = torch.bfloat16 if cuda else None
    if cuda:
        torch.backends.cudnn.benchmark = True
    bf16 = not cuda and (args.bf16 if args.bf16 is not None else cpu_has_native_bf16())
    candidates = _candidates(compile, bf16)
    state, x, y = _inputs(arch, batch_size, size, device)
    data: dict[str, Any] = {
        "suite": "train", "smoke": args.smoke, **environment(device), "arch": arch, "batch_size": batch_size,
        "image_size": [size, size], "precision": "bf16 autocast" if autocast else "float32",
        "memory_format": "channels_last", "optimizer": "SGD(lr=1e-3, momentum=0.9)", "iters": iters,
        "bf16_candidate": bf16, "budget_s": args.budget_s, "complete": False, "results": [],
        "pending": list(candidates),  # not reached yet: what a killed run lacks
        "skipped": budget.skipped,  # not started: over --budget-s
    }  # fmt: skip
    name = "train" + ("-smoke" if args.smoke else "")
    also = ", vggnet bf16 in bf16 autocast" if bf16 else ""
    print(f"{arch} training step, batch {batch_size}, {data['precision']}{also}, channels_last, {data['device_name']}")
    steps: dict[str, Callable[[], torch.Tensor]] = {}
    first: dict[str, float] = {}
    losses: dict[str, float] = {}
    save_results(name, data, args.out)  # a run killed in its first candidate still leaves a file that says so
    for candidate, (build, compiled, dtype) in candidates.items():
        if budget.skip(name=candidate):
            data["pending"].remove(candidate)
            print(f"{candidate:22} skipped: over --budget-s {args.budget_s:.0f}", flush=True)
            continue
        # Each candidate trains its own copy: the same starting weights, its own optimizer state.
        model = build(arch)
        steps[candidate], losses[candidate], first[candidate] = _ready(model, state, x, y, dtype or autocast, compiled)
        # All the candidates ready so far, timed together again (a few seconds at most): the file
        # always holds figures from one set of interleaved rounds.
        _time_all(data, steps, device, iters, first, losses)
        for row in data["results"]:
            row["precision"] = "bf16 autocast" if (candidates[row["name"]][2] or autocast) else "float32"
        data["pending"].remove(candidate)
        path = save_results(name, data, args.out)
        print(f"{candidate:22} ready; first step {data['results'][-1]['first_step_s']:.1f} s; saved {path}", flush=True)

    data["complete"] = True
    data["elapsed_s"] = round(budget.spent(), 1)
    path = save_results(name, data, args.out)
    _print_rows(data["results"])
    print(f"load average {data['load_average']} before, {data.get('load_average_after')} after; "
          f"this process had {data.get('cpu_use', 0):.0%} of {torch.get_num_threads()} threads' CPU time")  # fmt: skip
    print(f"results written to {path}")
    return 0


def _time_all(
    data: dict[str, Any],
    steps: dict[str, Callable[[], torch.Tensor]],
    device: torch.device,
    iters: int,
    first: dict[str, float],
    losses: dict[str, float],
) -> None:
    """Time `steps` in interleaved rounds into data["results"], with the load after and the CPU share we had."""
    wall, cpu = time.perf_counter(), time.process_time()
    times = time_interleaved(steps, device=device, iters=iters, rounds=min(5, iters))
    data["cpu_use"] = round((time.process_time() - cpu) / (time.perf_counter() - wall) / torch.get_num_threads(), 2)
    data["load_average_after"] = list(load_average())
    data["results"] = _rows(times, data["batch_size"], first, losses)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny model input and iteration counts (CI)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON (default %(default)s)")
    parser.add_argument("--arch", default=None, help="default vgg16 (vgg11 with --smoke)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 on CUDA, 4 on CPU, 2 with --smoke")
    parser.add_argument("--iters", type=int, default=None, help="timed steps per candidate")
    compile_help = "also time torch.compile'd steps (default: on for CUDA, off for CPU and --smoke)"
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help=compile_help)
    parser.add_argument("--budget-s", type=float, default=None, help="start no candidate after this many seconds")
    bf16_help = "on CPU, also time vggnet's bf16 autocast step (default: where bf16 is native, as finetune does)"
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help=bf16_help)
    return parser


def _candidates(compile: bool, bf16: bool) -> Candidates:
    """name -> (builder, compiled, autocast). Eager first: cheap, and the baseline, so that a run cut short
    during a compile still has them; "vggnet bf16" (CPU) right after the float32 baseline it is compared to."""
    import torchvision.models  # the peer; this script compares against it

    vgg, tv = vggnet.get_model, torchvision.models.get_model
    candidates: Candidates = {"vggnet eager": (vgg, False, None), "torchvision eager": (tv, False, None)}
    if bf16:
        candidates["vggnet bf16"] = (vgg, False, torch.bfloat16)
    if compile:
        candidates |= {"vggnet compile": (vgg, True, None), "torchvision compile": (tv, True, None)}
    return candidates


def _inputs(
    arch: str, batch_size: int, size: int, device: torch.device
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The starting weights every candidate copies (seed 0), a channels_last batch of random images, random labels."""
    torch.manual_seed(0)
    state = vggnet.get_model(arch).state_dict()
    x = torch.randn(batch_size, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch_size,), device=device)
    return state, x, y


def _ready(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    autocast: torch.dtype | None,
    compile: bool,
) -> tuple[Callable[[], torch.Tensor], float, float]:
    """`model` with `state`, on x's device, channels_last, in train mode: its step (warmed up), first loss and
    first step's seconds (a compile included)."""
    model.load_state_dict(state)
    model.to(x.device).to(memory_format=torch.channels_last).train()
    step = make_step(model, x, y, autocast=autocast, compile=compile)
    tic = time.perf_counter()
    loss = step().item()  # .item() waits for the GPU
    seconds = time.perf_counter() - tic
    step()  # warm-up
    return step, loss, seconds


def _print_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        speedup = r.get("speedup_vs_torchvision_eager")
        print(f"{r['name']:22} {r['img_per_s']:10.1f} img/s {r['step_ms']:10.2f} ms/step  "
              f"{f'{speedup:.2f}x' if speedup else '-':>5}  first step {r['first_step_s']:.1f} s  "
              f"{r.get('precision', '')}")  # fmt: skip


def _rows(
    times: dict[str, list[float]], batch_size: int, first: dict[str, float], losses: dict[str, float]
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for name, t in times.items():
        median = statistics.median(t)
        results.append(
            {
                "name": name,
                "img_per_s": batch_size / median,
                "step_ms": median * 1e3,
                "step_ms_min": min(t) * 1e3,
                "first_step_s": first[name],
                "first_loss": losses[name],
            }
        )
    base = next((r for r in results if r["name"] == "torchvision eager"), None)
    for r in results:
        if base is not None:  # absent until torchvision eager has run (or when it was skipped)
            r["speedup_vs_torchvision_eager"] = r["img_per_s"] / base["img_per_s"]
    return results


if __name__ == "__main__":
    raise SystemExit(main())
