"""The CPU paths optimize_for_inference takes, each against the plain module calls it replaces, on the same input.

    python benchmarks/bench_cpu_paths.py [--smoke] [--out DIR]

Every comparison times one float32 VGG two ways, through public calls only: `fast.net(x)`, the
folded channels_last network that `optimize_for_inference` prepared, run as plain modules, against
`fast(x)`, the optimized forward, which on CPU runs each convolution with its ReLU as one oneDNN call
and fc6-fc8 on oneDNN's linear with the ReLU fused in. Three VGGs isolate the paths:

- classifier: fc6-fc8 at batch 1 and 8, `F.linear` (the BLAS: MKL in torch's x86 wheels) against
  oneDNN's linear. The VGG's feature extractor is one 1x1 convolution with stride 5, which maps a
  32x32 image to the (512, 7, 7) map fc6 takes in 75k multiply-adds (fc6-fc8: 124M).
- features: vgg16's 13 convolutions, ReLUs and pools (batch 1, 224x224), with the pool and the
  classifier replaced by identities: module calls against one oneDNN convolution+ReLU call per layer.
- model: the whole vgg16 at batch 1.

The candidates take turns in interleaved rounds (median, method of vggnet/bench.py). Results go to
DIR/cpu_paths-cpu-<date>.json (default benchmarks/results/); nothing is asserted. --smoke: vgg11
at 32x32, two calls each, to check the machinery (CI).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # a checkout without `pip install -e .`

from harness import environment, save_results

import vggnet
from vggnet.deploy.bench import time_interleaved
from vggnet.deploy.inference import optimize_for_inference

# A 1x1 convolution with this stride maps a 32x32 image to the 7x7 map the classifier takes.
HEAD_ONLY_STRIDE = 5


def compare(
    what: str, model: vggnet.VGG, x: torch.Tensor, *, names: tuple[str, str], iters: int, rounds: int
) -> list[dict[str, Any]]:
    """`model` as plain modules (the baseline) against `optimize_for_inference(model)`, in interleaved rounds."""
    # float32 asked for (the default is bf16 on CPUs with native bf16): the folded channels_last network both sides run
    fast = optimize_for_inference(model, dtype=torch.float32)
    x = x.contiguous(memory_format=torch.channels_last)
    plain, optimized = names
    fns: dict[str, Callable[[], object]] = {plain: lambda: fast.net(x), optimized: lambda: fast(x)}
    with torch.inference_mode():
        for fn in fns.values():
            fn()  # warm-up: oneDNN picks and caches its kernels on the first call
        times = time_interleaved(fns, device=torch.device("cpu"), iters=iters, rounds=rounds)
    base = statistics.median(times[plain])
    rows = []
    for name, t in times.items():
        median = statistics.median(t)
        rows.append(
            {
                "what": what,
                "name": name,
                "batch_size": x.shape[0],
                "ms": median * 1e3,
                "ms_min": min(t) * 1e3,
                "speedup_vs_first": base / median,
            }
        )
        print(f"{what:10} b{x.shape[0]:<3} {name:34} {median * 1e3:9.2f} ms  {base / median:5.2f}x")
    return rows


def head_only() -> vggnet.VGG:
    """A VGG whose feature extractor is one 1x1 convolution: (N, 3, 32, 32) -> (N, 512, 7, 7) -> fc6-fc8."""
    return vggnet.VGG(nn.Sequential(nn.Conv2d(3, 512, kernel_size=1, stride=HEAD_ONLY_STRIDE))).eval()


def features_only(model: vggnet.VGG) -> vggnet.VGG:
    """`model` with its pool and classifier replaced by identities: (N, 3, H, W) -> (N, 512 * H/32 * W/32)."""
    model.avgpool = nn.Identity()  # type: ignore[assignment]
    model.classifier = nn.Identity()  # type: ignore[assignment]
    return model


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
    results: list[dict[str, Any]] = []
    timing = {"iters": iters, "rounds": rounds}

    head = head_only()
    for batch in (1, 8):
        names = ("F.linear (BLAS)", "oneDNN linear, ReLU fused")
        results += compare("classifier", head, torch.randn(batch, 3, 32, 32), names=names, **timing)

    image = torch.randn(1, 3, size, size)
    names = ("module calls", "oneDNN conv+ReLU per layer")
    results += compare("features", features_only(vggnet.get_model(arch)), image, names=names, **timing)
    names = ("folded channels_last modules", "optimize_for_inference")
    results += compare("model", vggnet.get_model(arch), image, names=names, **timing)

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
