"""Inference suite: vggnet eager and optimize_for_inference against torchvision eager and compiled.

    python benchmarks/bench_inference.py [--device cpu|cuda] [--smoke] [--out DIR] [--no-compile]

Every configuration is one `vggnet.deploy.bench.run_bench` call: the candidates share weights and input
and are timed in interleaved rounds (median), with the device's matmul peak measured in the same
run (method: vggnet/bench.py). The suites:

- cuda (bf16): vgg16 at batch 128, 1 and 32, vgg16_bn, vgg11 and vgg19 at batch 128; torch.compile
  on (CUDA graphs at batch 1); torchvision compiled at batch 128 only, where its anchor figure is.
- cpu (fp32, sized for 2 cores): vgg16 and vgg16_bn at batch 1, vgg16 at batch 8, and vgg16 in
  bf16 at batch 1; torch.compile only with --compile (compile times: benchmarks/README.md).
- --smoke: vgg11 at 32x32, batch 1 and 2, two timed calls: checks the machinery, not the speed.

Results go to DIR/inference-<device>-<date>.json (default benchmarks/results/); nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # a checkout without `pip install -e .` (the GPU machines have none)

from harness import Budget, environment, save_results

from vggnet.deploy.bench import format_report, run_bench

# (arch, batch size, timed calls, compile torchvision too, dtype: None for the device's default)
SUITES: dict[str, list[tuple[str, int, int, bool, torch.dtype | None]]] = {
    # in order of importance, so that --budget-s drops the least telling ones
    "cuda": [
        ("vgg16", 128, 30, True, None),
        ("vgg16", 1, 200, False, None),
        ("vgg16_bn", 128, 30, False, None),
        ("vgg16", 32, 50, False, None),
        ("vgg11", 128, 30, False, None),
        ("vgg19", 128, 30, False, None),
    ],
    "cpu": [
        ("vgg16", 1, 10, True, None),
        ("vgg16_bn", 1, 10, False, None),
        ("vgg16", 8, 4, False, None),
        ("vgg16", 1, 10, False, torch.bfloat16),  # opt-in on CPU; fast where there is AVX512_BF16 or AMX
    ],
    "smoke": [("vgg11", 1, 2, True, None), ("vgg11", 2, 2, False, None)],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny model input and iteration counts (CI)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON (default %(default)s)")
    compile_help = "torch.compile the optimized model and torchvision (default: on for CUDA, off for CPU and --smoke)"
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help=compile_help)
    parser.add_argument("--budget-s", type=float, default=None, help="skip the configurations left after this long")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    compile = args.compile if args.compile is not None else (device.type == "cuda" and not args.smoke)
    suite = SUITES["smoke" if args.smoke else device.type]
    image_size = 32 if args.smoke else 224
    data: dict[str, Any] = {"suite": "inference", "smoke": args.smoke, **environment(device), "runs": []}
    budget = Budget(args.budget_s)
    data["skipped"] = budget.skipped
    for arch, batch_size, iters, tv_compile, dtype in suite:
        if budget.skip(arch=arch, batch_size=batch_size):
            continue
        report = run_bench(
            arch,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            compile=compile,
            torchvision_compile=compile and tv_compile,
            iters=iters,
            rounds=min(5, iters),
            image_size=image_size,
        )
        print(format_report(report), end="\n\n", flush=True)
        data["runs"].append(report.to_dict())
        path = save_results("inference" + ("-smoke" if args.smoke else ""), data, args.out)  # after every run
    data["elapsed_s"] = budget.spent()
    path = save_results("inference" + ("-smoke" if args.smoke else ""), data, args.out)
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
