"""The CPU paths optimize_for_inference takes, each against the plain call it replaces, on the same input.

    python benchmarks/bench_cpu_paths.py [--smoke] [--out DIR]

- classifier: fc6-fc8 of vgg16 (eval mode, float32) through `F.linear` (the BLAS: MKL in torch's
  x86 wheels) against oneDNN's linear with the ReLU fused in, at batch 1 and 8.
- features: vgg16's 13 convolutions, ReLUs and pools (float32, channels_last, batch 1, 224x224) as
  module calls against one oneDNN convolution+ReLU call per layer.
- model: vgg16 through optimize_for_inference against the same folded channels_last network run as
  plain modules, at batch 1.

The candidates take turns in interleaved rounds (median, method of vggnet/bench.py). Results go to
DIR/cpu_paths-cpu-<date>.json (default benchmarks/results/); nothing is asserted. --smoke: vgg11
at 32x32, two calls each, to check the machinery (CI).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # a checkout without `pip install -e .`

import vggnet  # noqa: E402
from vggnet.bench import environment, save_results, time_interleaved  # noqa: E402
from vggnet.inference import _fused_steps, _onednn_head, _run_steps  # noqa: E402


def compare(
    what: str, fns: dict[str, Callable[[], object]], *, iters: int, rounds: int, batch: int
) -> list[dict[str, Any]]:
    """Time `fns` in interleaved rounds; one result row per candidate, the first being the baseline."""
    with torch.inference_mode():
        for fn in fns.values():
            fn()  # warm-up: oneDNN picks and caches its kernels on the first call
        times = time_interleaved(fns, device=torch.device("cpu"), iters=iters, rounds=rounds)
    base = statistics.median(next(iter(times.values())))
    rows = []
    for name, t in times.items():
        median = statistics.median(t)
        rows.append(
            {
                "what": what,
                "name": name,
                "batch_size": batch,
                "ms": median * 1e3,
                "ms_min": min(t) * 1e3,
                "speedup_vs_first": base / median,
            }
        )
        print(f"{what:10} b{batch:<3} {name:34} {median * 1e3:9.2f} ms  {base / median:5.2f}x")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="vgg11 at 32x32, two calls each (CI)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON (default %(default)s)")
    args = parser.parse_args(argv)
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")):  # type: ignore[no-untyped-call]
        print("this torch has no oneDNN fused ops: nothing to compare", file=sys.stderr)
        return 1

    arch, size = ("vgg11", 32) if args.smoke else ("vgg16", 224)
    iters, rounds = (2, 2) if args.smoke else (10, 5)
    torch.manual_seed(0)
    model = vggnet.get_model(arch).eval()
    fast = vggnet.optimize_for_inference(model)  # float32, channels_last, folded: the network both sides run
    net = fast.net
    results: list[dict[str, Any]] = []

    for batch in (1, 8):
        x = torch.randn(batch, 512 * 7 * 7)
        results += compare(
            "classifier",
            {
                "F.linear (BLAS)": partial(net.classifier, x),
                "oneDNN linear, ReLU fused": partial(_onednn_head, net.classifier, x),
            },
            iters=iters,
            rounds=rounds,
            batch=batch,
        )

    image = torch.randn(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    steps = _fused_steps(net.features)
    results += compare(
        "features",
        {
            "module calls": lambda: net.features(image),
            "oneDNN conv+ReLU per layer": lambda: _run_steps(steps, image),
        },
        iters=iters,
        rounds=rounds,
        batch=1,
    )

    def plain() -> torch.Tensor:
        out: torch.Tensor = net.classifier(torch.flatten(net.avgpool(net.features(image)), 1))
        return out

    results += compare(
        "model",
        {"folded channels_last modules": plain, "optimize_for_inference": lambda: fast(image)},
        iters=iters,
        rounds=rounds,
        batch=1,
    )

    data: dict[str, Any] = {
        "suite": "cpu_paths",
        "smoke": args.smoke,
        **environment(torch.device("cpu")),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "arch": arch,
        "image_size": [size, size],
        "dtype": "float32",
        "iters": iters,
        "rounds": rounds,
        "results": results,
    }
    path = save_results("cpu_paths" + ("-smoke" if args.smoke else ""), data, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
