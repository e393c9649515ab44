"""Fine-tuning figures: activation memory with and without gradient checkpointing; linear vs full mode time.

    python benchmarks/bench_finetune.py [--device cpu|cuda] [--smoke] [--out DIR] [--budget-s S]

1. Memory: vgg16, batch 32, 224x224, float32, train mode, one forward + backward, with
   `set_grad_checkpointing(False)` and `(True)`. Two figures beyond the weights and the input: what
   the forward leaves stored for backward, and the peak of the whole step (which includes the
   recomputation of the largest block and the 528 MiB of weight gradients, whatever the mode). On
   CUDA from `torch.cuda.memory_allocated`/`max_memory_allocated`, after a batch-1 forward + backward
   that allocates cuBLAS's and cuDNN's lasting buffers (else the first case would count them); on CPU
   each case runs in a fresh child process (glibc told to unmap every freed tensor) from its resident
   set and `ru_maxrss`.
2. Time: `vggnet.train.finetune.finetune` in --mode linear and --mode full for the same number of epochs
   on a generated two-class PNG set (vgg11 at 64x64 by default; random weights, since the figure is
   about time), wall clock of the whole call including reading and decoding the images; the two modes
   take turns twice and the second round is reported.

--smoke: vgg11 at batch 2 and 64x64 for the memory part, 1 epoch on a tiny set, one round of each mode
(checks the machinery).
Results go to DIR/finetune-<device>-<UTC date>.json (default benchmarks/results/; finetune-smoke-...
with --smoke), headed by `harness.environment` as the other suites' are, rewritten after each
part (each memory case, then the timing), with `complete`, the parts not reached yet under `pending`
(what a killed run lacks) and those not started because --budget-s had passed under `skipped`.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # a checkout without `pip install -e .` (the GPU machines have none)
MiB = 1 << 20

from harness import Budget, environment, save_results


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def activation_memory(arch: str, batch: int, size: int, checkpointing: bool, device: str) -> dict[str, Any]:
    """One forward + backward in train mode; bytes the step needed beyond the weights and the input."""
    import vggnet

    torch.manual_seed(0)
    model = vggnet.get_model(arch, device=device).train()
    model.set_grad_checkpointing(checkpointing)
    x = torch.randn(batch, 3, size, size, device=device)
    if device == "cuda":
        # Warm-up: the first matmul allocates cuBLAS's workspace (and cuDNN its handles), which stay
        # allocated; measured, they would be charged to whichever case runs first.
        model(x[:1]).sum().backward()
        model.zero_grad(set_to_none=True)  # the weight gradients belong to the measured step
    tic = time.perf_counter()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        loss = model(x).sum()
        stored = torch.cuda.memory_allocated() - before
        loss.backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        how = "torch.cuda.max_memory_allocated - memory_allocated before the forward"
    else:
        before = _rss_bytes()
        loss = model(x).sum()
        stored = _rss_bytes() - before
        loss.backward()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before  # ru_maxrss is KiB on Linux
        how = "peak RSS (ru_maxrss) of a fresh process - RSS before the forward"
    return {
        "arch": arch, "batch": batch, "size": size, "grad_checkpointing": checkpointing,
        "stored_after_forward_mib": round(stored / MiB, 1),
        "peak_mib": round(peak / MiB, 1), "step_s": round(time.perf_counter() - tic, 2), "measured_as": how,
    }  # fmt: skip


def _memory_in_child(arch: str, batch: int, size: int, checkpointing: bool) -> dict[str, Any]:
    code = (
        "import json, sys; sys.path[:0] = sys.argv[1:]; import bench_finetune as b; "
        f"print(json.dumps(b.activation_memory({arch!r}, {batch}, {size}, {checkpointing}, 'cpu')))"
    )
    # A fixed mmap threshold makes glibc return every freed tensor to the system at once, so the
    # resident set follows the live tensors instead of keeping freed heap pages.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(HERE), str(ROOT)], capture_output=True, text=True, check=True, env=env
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def write_set(root: Path, per_class: dict[str, int], size: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for name, rgb in {"blue": (30, 60, 200), "red": (200, 40, 30)}.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def mode_times(
    arch: str, size: int, epochs: int, per_class: int, batch: int, device: str, rounds: int = 2
) -> list[dict[str, Any]]:
    """Each mode's fine-tuning time, the modes taking turns `rounds` times; the last round is reported."""
    from vggnet.train.finetune import finetune

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_set(data, {"train": per_class, "val": max(per_class // 4, 1)}, size)
        for mode in ("linear", "full") * rounds:  # interleaved; the last round is reported
            result = finetune(
                data, arch=arch, weights=None, epochs=epochs, batch_size=batch, mode=mode,
                image_size=size, out=Path(tmp) / mode, device=device, progress=False,
                overwrite=True,  # the second round replaces the first's run folder
            )  # fmt: skip
            rows.append({
                "mode": mode, "arch": arch, "image_size": size, "epochs": epochs, "train_images": 2 * per_class,
                "batch_size": batch, "seconds": round(result.seconds, 2),
                "epoch_seconds": [round(e.seconds, 2) for e in result.history],
                "final_train_loss": round(result.history[-1].train_loss, 4),
                "final_val_acc": result.history[-1].val_acc,
            })  # fmt: skip
    return rows[-2:]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    budget = Budget(args.budget_s)

    arch, batch, size = ("vgg11", 2, 64) if args.smoke else ("vgg16", 32, 224)
    epochs, per_class, tbatch = (1, 4, 4) if args.smoke else (3, 32, 16)
    report: dict[str, Any] = {
        "suite": "finetune",
        "smoke": args.smoke,
        **environment(torch.device(args.device)),
        "budget_s": args.budget_s, "complete": False,
        "activation_memory": [], "linear_vs_full": [],
        "pending": ["memory, checkpointing off", "memory, checkpointing on", "linear_vs_full"],
        "skipped": budget.skipped,
    }  # fmt: skip
    name = "finetune" + ("-smoke" if args.smoke else "")
    save_results(name, report, args.out)  # a run killed in its first part still leaves a file that says so

    memory = report["activation_memory"]
    for checkpointing in (False, True):
        part = f"memory, checkpointing {'on' if checkpointing else 'off'}"
        if _over_budget(budget, report, part):
            continue
        memory.append(_memory_row(arch, batch, size, checkpointing, args.device))
        if len(memory) == 2:
            off, on = memory
            report["stored_saving"] = round(1 - on["stored_after_forward_mib"] / off["stored_after_forward_mib"], 3)
            report["peak_saving"] = round(1 - on["peak_mib"] / off["peak_mib"], 3)
        report["pending"].remove(part)
        save_results(name, report, args.out)

    if not _over_budget(budget, report, "linear_vs_full"):
        rounds = 1 if args.smoke else 2
        report["linear_vs_full"] = mode_times("vgg11", 64, epochs, per_class, tbatch, args.device, rounds)
        for row in report["linear_vs_full"]:
            print(f"--mode {row['mode']}: {row['epochs']} epochs on {row['train_images']} images: {row['seconds']} s")
        report["pending"].remove("linear_vs_full")

    report["complete"] = True
    report["elapsed_s"] = round(budget.spent(), 1)
    path = save_results(name, report, args.out)
    print(f"saved {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--budget-s", type=float, default=None, help="start no part after this many seconds")
    return parser


def _over_budget(budget: Budget, report: dict[str, Any], part: str) -> bool:
    """True, with `part` moved from pending to skipped and a line printed, once the budget is spent."""
    if not budget.skip(part=part):
        return False
    report["pending"].remove(part)
    print(f"{part}: skipped, over --budget-s {budget.seconds:.0f}", flush=True)
    return True


def _memory_row(arch: str, batch: int, size: int, checkpointing: bool, device: str) -> dict[str, Any]:
    """`activation_memory` on CUDA in this process, on CPU in a fresh child; the figures printed."""
    if device == "cuda":
        row = activation_memory(arch, batch, size, checkpointing, "cuda")
    else:
        row = _memory_in_child(arch, batch, size, checkpointing)
    print(
        f"{arch} batch {batch} at {size}, checkpointing={checkpointing}: {row['stored_after_forward_mib']} MiB "
        f"held after the forward, {row['peak_mib']} MiB peak in the step, {row['step_s']} s",
        flush=True,
    )
    return row


if __name__ == "__main__":
    raise SystemExit(main())
