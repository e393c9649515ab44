"""Winograd F(4x4, 3x3) against oneDNN's direct convolution: each vgg16 layer, then the whole model, float32 on CPU.

    python benchmarks/bench_winograd.py [--smoke] [--rounds N] [--out DIR]

Layer by layer: each of vgg16's 13 convolutions (with its ReLU) at 224 px, on 1 and on 8 images, two
ways taking turns: the direct convolution as `optimize_for_inference` calls it (one oneDNN call, its
weight packed for that shape, the ReLU fused) and `vggnet.deploy.winograd`'s Winograd, with the largest
error of each against the float64 convolution, relative to the largest output; and whether the rule
takes Winograd for that layer at that shape (`applies` and `wins`). In the model, float32 batches of 8
at 224 px take the layers before pool3 one image at a time (`images_per_chunk`), so there the batch-1
rows are the calls it makes. Whole model: vgg16 optimized in float32
with Winograd and without (`winograd=False`), each with its oneDNN Graph program, at batch 1 and 8,
each call warm (after 50 ms of idle cores and one untimed call, as `bench_cpu_peers.py` times).

Seeded random weights at He scale; the input of each layer is non-negative (a ReLU's output). The
candidates take turns in interleaved rounds (the median of the rounds; vggnet/deploy/bench.py). Results
go to DIR/winograd-cpu-<date>.json (default benchmarks/results/); nothing is asserted. --smoke: three
layers at 32 px and vgg11 at 32 px, one call each, to check the machinery (CI).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
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

SMOKE_LAYERS = [(3, 64, 32), (128, 128, 16), (512, 512, 4)]
SETTLE_S = 0.05  # idle cores before each whole-model turn


def conv_layers(arch: str, size: int) -> list[tuple[int, int, int]]:
    """Each convolution of `arch`'s features as (input channels, output channels, map size) at `size` px."""
    layers = []
    for m in vggnet.get_model(arch).features:
        if isinstance(m, nn.Conv2d):
            layers.append((m.in_channels, m.out_channels, size))
        elif isinstance(m, nn.MaxPool2d):
            size //= 2
    return layers


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
        "rule_takes_winograd": applies(conv, torch.float32) and wins(x.shape, c_out),
    }
    print(
        f"{row['layer']:22} b{batch:<2} direct {ms['direct']:8.2f} ms  winograd {ms['winograd']:8.2f} ms  "
        f"{row['direct_over_winograd']:5.2f}x  error {errors['winograd']:.1e} (direct {errors['direct']:.1e})"
        f"{'  <- the rule takes it' if row['rule_takes_winograd'] else ''}",
        flush=True,
    )
    return row


def warm_turns(fns: dict[str, Callable[[], object]], *, rounds: int) -> dict[str, list[float]]:
    """Seconds of one warm call of each function per round, taking turns: before each timed call the
    cores idle for `SETTLE_S` and one call goes untimed (the other model's pass has just evicted this
    one's weights from the cache), as `bench_cpu_peers.py` times; every other round in reverse order."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        for name, fn in list(fns.items())[:: -1 if r % 2 else 1]:
            time.sleep(SETTLE_S)
            fn()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


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
        times = warm_turns({name: (lambda m=m: m(x)) for name, m in models.items()}, rounds=rounds)
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
        for c_in, c_out, size in (SMOKE_LAYERS if args.smoke else conv_layers("vgg16", 224))
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
