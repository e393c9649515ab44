"""Start-up: how long the command line and `import vggnet` take, against `import torch` in the same rounds.

    python benchmarks/bench_startup.py [--repeat 10] [--out DIR] [--smoke]

Every figure is the wall time of a fresh Python process (interpreter start-up included), run in
interleaved rounds (A B C ... A B C ...) so that a change of machine load hits them all alike; the
median over the rounds is reported, with the fastest round. The cases:

- `python -c pass`: the interpreter alone, the floor;
- `python -c "import torch"`: the baseline the targets are stated against;
- `python -c "import vggnet"` and `python -c "import vggnet; vggnet.vgg16"` (the models loaded);
- `vggnet --help`, `vggnet predict --help`, `vggnet summary vgg99` (an argument error) and
  `vggnet summary vgg16` (a command that runs), each as `python -m vggnet ...`.

Targets (issue 23, on 2 idle cores): `vggnet --help` at most 0.5 s; `vggnet summary vgg16` at most
0.5 s more than `import torch`; `import vggnet` (with the models) at most 0.2 s more than `import
torch`, with no `torch._dynamo` imported. Each case's process also reports whether it imported torch
and torch._dynamo. Figures are printed and saved to `results/startup-cpu-<date>.json`; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import harness
import torch

HERE = Path(__file__).resolve().parent
# Run first in every process: at exit it reports on stderr whether torch and its compiler were imported.
REPORT = (
    "import atexit, json, sys\n"
    "atexit.register(lambda: print('#' + json.dumps(['torch' in sys.modules, 'torch._dynamo' in sys.modules]),"
    " file=sys.stderr))\n"
)
RUN_VGGNET = (
    "import runpy, sys\nsys.argv = ['vggnet', *{argv!r}]\n"
    "try:\n    runpy.run_module('vggnet', run_name='__main__')\nexcept SystemExit:\n    pass\n"
)

CASES: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "import torch": ["-c", "import torch"],
    "import vggnet": ["-c", "import vggnet"],
    "import vggnet; vggnet.vgg16": ["-c", "import vggnet; vggnet.vgg16"],
    "vggnet --help": ["-m", "vggnet", "--help"],
    "vggnet predict --help": ["-m", "vggnet", "predict", "--help"],
    "vggnet summary vgg99 (usage error)": ["-m", "vggnet", "summary", "vgg99"],
    "vggnet summary vgg16": ["-m", "vggnet", "summary", "vgg16"],
}


def _run(args: list[str]) -> tuple[float, tuple[bool, bool]]:
    """(wall seconds, (torch imported, torch._dynamo imported)) of one fresh process."""
    body = args[1] if args[0] == "-c" else RUN_VGGNET.format(argv=args[2:])
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", REPORT + body], capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    marker = [line for line in done.stderr.splitlines() if line.startswith("#[")]
    torch_imported, dynamo_imported = json.loads(marker[-1][1:]) if marker else (False, False)
    return seconds, (bool(torch_imported), bool(dynamo_imported))


def _measure(repeat: int) -> dict[str, dict[str, object]]:
    times: dict[str, list[float]] = {name: [] for name in CASES}
    imports: dict[str, tuple[bool, bool]] = {}
    for name, args in CASES.items():  # one warm-up round: the page cache holds torch's files afterwards
        _, imports[name] = _run(args)
    for _ in range(repeat):
        for name, args in CASES.items():
            times[name].append(_run(args)[0])
    return {
        name: {
            "median_s": statistics.median(values),
            "min_s": min(values),
            "imports_torch": imports[name][0],
            "imports_dynamo": imports[name][1],
        }
        for name, values in times.items()
    }


def _print(figures: dict[str, dict[str, object]]) -> None:
    torch_s = float(figures["import torch"]["median_s"])  # type: ignore[arg-type]
    print(f"{'case':38s} {'median':>8s} {'min':>8s} {'- torch':>9s}  torch  dynamo")
    for name, row in figures.items():
        median, fastest = float(row["median_s"]), float(row["min_s"])  # type: ignore[arg-type]
        print(
            f"{name:38s} {median:7.3f}s {fastest:7.3f}s {median - torch_s:+8.3f}s  "
            f"{'yes' if row['imports_torch'] else 'no':5s}  {'yes' if row['imports_dynamo'] else 'no'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=10, help="interleaved rounds (default 10)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where to write the JSON")
    parser.add_argument("--smoke", action="store_true", help="one round: checks the machinery")
    args = parser.parse_args()
    figures = _measure(1 if args.smoke else args.repeat)
    _print(figures)
    results = {**harness.environment(torch.device("cpu")), "repeat": args.repeat, "smoke": args.smoke,
               "cases": figures}  # fmt: skip
    path = harness.save_results("startup-smoke" if args.smoke else "startup", results, args.out)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
