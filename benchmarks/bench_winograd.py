"""Winograd F(4x4, 3x3) against oneDNN's direct convolution: each vgg16 layer, then the whole model, float32 on CPU.

    python benchmarks/bench_winograd.py [--smoke] [--rounds N] [--out DIR]

Layer by layer: each of vgg16's 13 convolutions (with its ReLU) at 224 px, on 1 and on 8 images, two
ways taking turns: the direct convolution as `optimize_for_inference` calls it (one oneDNN call, its
weight packed for that shape, the ReLU fused) and `vggnet.deploy.winograd`'s Winograd, with the largest
error of each against the float64 convolution, relative to the largest output; and whether the model
takes Winograd for that layer and shape (`applies` and `wins`). Whole model: vgg16 optimized in float32
with Winograd and without (`winograd=False`), each with its oneDNN Graph program, at batch 1 and 8.

Seeded random weights at He scale; the input of each layer is non-negative (a ReLU's output). The
candidates take turns in interleaved rounds (the median of the rounds; vggnet/deploy/bench.py). Results
go to DIR/winograd-cpu-<date>.json (default benchmarks/results/); nothing is asserted. --smoke: three
layers at 32 px and vgg11 at 32 px, one call each, to check the machinery (CI).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # a checkout without `pip install -e .`

from harness import environment, save_results

import vggnet
from vggnet.deploy.bench import time_interleaved
from vggnet.deploy.inference import keep_activations_on_heap, optimize_for_inference
from vggnet.deploy.winograd import WinogradConvReLU, applies, conv3x3_relu, wins

# vgg16's convolutions at 224 px: (input channels, output channels, map size)
VGG16_LAYERS = [
    (3, 64, 224),
    (64, 64, 224),
    (64, 128, 112),
    (128, 128, 112),
    (128, 256, 56),
    (256, 256, 56),
    (256, 256, 56),
    (256, 512, 28),
    (512, 512, 28),
    (512, 512, 28),
    (512, 512, 14),
    (512, 512, 14),
    (512, 512, 14),
]
SMOKE_LAYERS = [(3, 64, 32), (128, 128, 16), (512, 512, 4)]


def relative_error(got: torch.Tensor, exact: torch.Tensor) -> float:
    """The largest difference from `exact`, relative to its largest value."""
    return float((got.double() - exact).abs().max() / exact.abs().max())


def layer_row(c_in: int, c_out: int, size: int, batch: int, *, iters: int, rounds: int) -> dict[str, Any]:
    """One convolution and its ReLU on `batch` images, direct against Winograd, timed in turns."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    with torch.no_grad():
        conv.weight.normal_(0, (2 / (9 * c_in)) ** 0.5)
    x = torch.rand(batch, c_in, size, size).contiguous(memory_format=torch.channels_last)
    weight = conv.weight.contiguous(memory_format=torch.channels_last)
    args = ([1, 1], [1, 1], [1, 1], 1)
    packed = torch.ops.mkldnn._reorder_convolution_weight(weight, *args, list(x.shape))
    w = WinogradConvReLU(conv)  # Winograd for every layer and shape, to show where it pays
    fns: dict[str, Callable[[], torch.Tensor]] = {
        "direct": lambda: torch.ops.mkldnn._convolution_pointwise(x, packed, conv.bias, *args, "relu", [], ""),
        "winograd": lambda: conv3x3_relu(x, w.u, conv.bias, w.b, w.a),
    }
    with torch.inference_mode():
        exact = F.relu(F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1))
        errors = {name: relative_error(fn(), exact) for name, fn in fns.items()}  # also the warm-up call
        times = time_interleaved(fns, device=torch.device("cpu"), iters=iters, rounds=rounds)
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    row = {
        "layer": f"{c_in}->{c_out} @ {size}x{size}",
        "batch_size": batch,
        "ms": ms,
        "direct_over_winograd": ms["direct"] / ms["winograd"],
        "relative_error": errors,
        "model_takes_winograd": applies(conv, torch.float32) and wins(x.shape, c_out),
    }
    print(
        f"{row['layer']:22} b{batch:<2} direct {ms['direct']:8.2f} ms  winograd {ms['winograd']:8.2f} ms  "
        f"{row['direct_over_winograd']:5.2f}x  error {errors['winograd']:.1e} (direct {errors['direct']:.1e})"
        f"{'  <- taken' if row['model_takes_winograd'] else ''}",
        flush=True,
    )
    return row


def model_rows(arch: str, size: int, batch: int, *, iters: int, rounds: int) -> list[dict[str, Any]]:
    """The whole model optimized in float32 with Winograd and without, timed in turns."""
    torch.manual_seed(0)
    model = vggnet.get_model(arch).eval()
    x = torch.randn(batch, 3, size, size)
    models = {
        "winograd": optimize_for_inference(model, dtype=torch.float32, batch_size=batch),
        "direct": optimize_for_inference(model, dtype=torch.float32, batch_size=batch, winograd=False),
    }
    with torch.inference_mode():
        ref = model(x)
        for m in models.values():
            for _ in range(3):  # eager, then the program made, then the program
                out = m(x)
        errors = {name: relative_error(m(x), ref.double()) for name, m in models.items()}
        fns = {name: (lambda m=m: m(x)) for name, m in models.items()}
        times = time_interleaved(fns, device=torch.device("cpu"), iters=iters, rounds=rounds)
    del out
    rows = []
    base = statistics.median(times["direct"])
    for name, t in times.items():
        median = statistics.median(t)
        rows.append(
            {
                "name": name,
                "batch_size": batch,
                "ms": median * 1e3,
                "ms_min": min(t) * 1e3,
                "speedup_vs_direct": base / median,
                "relative_error_vs_eager": errors[name],
                "programs": models[name].onednn_graph,
            }
        )
        print(f"{arch} b{batch:<2} {name:9} {median * 1e3:9.2f} ms  {base / median:5.2f}x  error {errors[name]:.1e}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    smoke = "three small layers and vgg11 at 32 px, one call each (CI)"
    parser.add_argument("--smoke", action="store_true", help=smoke)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default %(default)s)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON (default %(default)s)")
    args = parser.parse_args(argv)
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")):  # type: ignore[no-untyped-call]
        print("this torch has no oneDNN fused ops: nothing to compare", file=sys.stderr)
        return 1
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    rounds = 1 if args.smoke else args.rounds
    keep_activations_on_heap()  # as the optimized model does on its first call: no fresh mmap per activation
    timing = {"iters": rounds, "rounds": rounds}  # one call per candidate per round
    torch.manual_seed(0)
    layers = [
        layer_row(c_in, c_out, size, batch, **timing)
        for batch in (1, 8)
        for c_in, c_out, size in (SMOKE_LAYERS if args.smoke else VGG16_LAYERS)
    ]
    arch, size = ("vgg11", 32) if args.smoke else ("vgg16", 224)
    models = [row for batch in (1, 8) for row in model_rows(arch, size, batch, **timing)]
    data: dict[str, Any] = {
        "suite": "winograd",
        "smoke": args.smoke,
        **environment(torch.device("cpu")),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "arch": arch,
        "image_size": [size, size],
        "dtype": "float32",
        "rounds": rounds,
        "layers": layers,
        "models": models,
    }
    path = save_results("winograd" + ("-smoke" if args.smoke else ""), data, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
