"""Where a vgg16 call's time goes on CPU: oneDNN's own time for each layer against the call's wall time.

    python benchmarks/bench_cpu_layers.py [--batch 1 8] [--calls 20] [--only default int8] [--json PATH] [--smoke]

For each path (`fp32`, `default`: bf16 where the CPU computes it natively, both with their oneDNN Graph
programs; `eager`: the default without them, `onednn_graph=False`; `int8`: needs torchao) and batch
size, in one process:

- wall: the median of `--calls` timed calls, after two warm-up calls;
- oneDNN: as many calls again, taking turns with the timed ones, each with oneDNN's verbose mode on
  (`torch.backends.mkldnn.verbose`) and the process's standard output captured: each primitive's own
  execution time as oneDNN reports it (median over the calls, in call order), their sum by kind
  (convolution, matmul or inner product, reorder, ...) and in all;
- outside oneDNN: the wall time less oneDNN's: ATen's kernels (the pools, the input's conversion or
  quantization), and what PyTorch does around each oneDNN call (building the primitive descriptor,
  allocating the output, dispatch) and Python.

Then the fixed cost of one oneDNN call from PyTorch: a 3x3 convolution of 16 channels on a 4x4 map,
whose arithmetic takes a few microseconds, in float32, bf16 (where oneDNN computes it) and int8, its
median wall time against oneDNN's execution time; in float32 and bf16 also as a oneDNN Graph program
(`vggnet.deploy.onednn_graph`), the way `optimize_for_inference` runs a batch from its shape's second call.

oneDNN writes its verbose lines with C's stdio, so they are read from a file that standard output is
pointed at during each verbose call; POSIX only. The verbose calls are slower than the timed ones (the
printing), which is why the wall time comes from the timed calls alone.

Results go to `--json PATH`, or DIR/cpu_layers-cpu-<date>.json (`--out`, default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # a checkout without `pip install -e .`

from bench_cpu_peers import add_run_arguments, photos, results_header
from harness import save_run

import vggnet

Run = Callable[[torch.Tensor], torch.Tensor]
PATHS = ("fp32", "default", "eager", "int8")
TINY = (16, 4)  # channels, map size of the fixed-cost probe


# --- oneDNN's own figures --------------------------------------------------------------------------


@contextlib.contextmanager
def stdout_to(path: Path) -> Iterator[None]:
    """Point the process's standard output (file descriptor 1, C's stdio included) at `path` meanwhile."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.dup2(target, 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(target)
        os.close(saved)


def parse_verbose(text: str) -> list[dict[str, Any]]:
    """The primitives one call executed, in order: kind, implementation, problem and ms, from oneDNN's lines.

    A line reads `onednn_verbose[,timestamp],v1,primitive,exec,cpu,<kind>,<impl>,...,<problem>,<ms>`;
    lines of other kinds (creation, info) are skipped, and so are a oneDNN Graph partition's `graph,exec`
    lines, whose time is that of the primitives they ran, which have lines of their own.
    """
    done = []
    for line in text.splitlines():
        fields = line.strip().split(",")
        if not fields[0].startswith("onednn_verbose") or "exec" not in fields[:5]:
            continue
        at = fields.index("exec")
        if fields[at - 1] != "primitive":
            continue
        done.append({"kind": fields[at + 2], "impl": fields[at + 3], "problem": fields[-2], "ms": float(fields[-1])})
    return done


def verbose_call(run: Callable[[], object], folder: Path) -> list[dict[str, Any]]:
    """The primitives one call of `run` executed, as oneDNN reports them."""
    log = folder / "verbose.log"
    with stdout_to(log), torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        run()
    return parse_verbose(log.read_text(errors="replace"))


def per_primitive(calls: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each primitive's median time over the calls that executed the most common sequence of primitives."""
    sizes = [len(c) for c in calls]
    common = max(set(sizes), key=sizes.count)
    same = [c for c in calls if len(c) == common]
    return [
        {**{k: same[0][i][k] for k in ("kind", "impl", "problem")}, "ms": statistics.median(c[i]["ms"] for c in same)}
        for i in range(common)
    ]


# --- one path at one batch size --------------------------------------------------------------------


def profile(run: Callable[[], object], calls: int) -> dict[str, Any]:
    """Wall time against oneDNN's own time for `calls` timed and as many verbose calls, taking turns."""
    walls: list[float] = []
    traces: list[list[dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="vggnet-layers-") as tmp, torch.inference_mode():
        for _ in range(2):
            run()
        for _ in range(calls):
            t0 = time.perf_counter()
            run()
            walls.append((time.perf_counter() - t0) * 1e3)
            traces.append(verbose_call(run, Path(tmp)))
    wall = statistics.median(walls)
    onednn = statistics.median(sum(p["ms"] for p in trace) for trace in traces)
    primitives = per_primitive(traces)
    by_kind: dict[str, float] = {}
    for p in primitives:
        by_kind[p["kind"]] = by_kind.get(p["kind"], 0.0) + p["ms"]
    return {
        "wall_ms": wall,
        "onednn_ms": onednn,
        "outside_onednn_ms": wall - onednn,
        "primitives_per_call": len(primitives),
        "onednn_ms_by_kind": by_kind,
        "primitives": primitives,
    }


def build(path: str, vm: vggnet.VGG, calib: torch.Tensor, bs: int) -> Run:
    """The model `path` names, prepared for batches of `bs`."""
    from vggnet.deploy.inference import optimize_for_inference

    if path == "fp32":
        return optimize_for_inference(vm, dtype=torch.float32, batch_size=bs)
    if path == "default":
        return optimize_for_inference(vm, batch_size=bs)
    if path == "eager":  # the default dtype without oneDNN Graph programs
        return optimize_for_inference(vm, batch_size=bs, onednn_graph=False)
    from vggnet.deploy.quantize import quantize

    return quantize(vm, calib, batch_size=bs, fallback=False)


# --- the fixed cost of one call --------------------------------------------------------------------


def tiny_calls() -> dict[str, Callable[[], object]]:
    """One small convolution+ReLU per dtype, called the way vggnet calls oneDNN, packed weights included."""
    channels, size = TINY
    shape = [1, channels, size, size]
    one = [1, 1]
    calls: dict[str, Callable[[], object]] = {}
    dtypes = [torch.float32] + ([torch.bfloat16] if torch.ops.mkldnn._is_mkldnn_bf16_supported() else [])
    for dtype in dtypes:
        x = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(channels, channels, 3, 3).to(dtype).contiguous(memory_format=torch.channels_last)
        packed = torch.ops.mkldnn._reorder_convolution_weight(w, one, one, one, 1, shape)
        calls[str(dtype).removeprefix("torch.")] = lambda x=x, packed=packed: torch.ops.mkldnn._convolution_pointwise(
            x, packed, None, one, one, one, 1, "relu", [], ""
        )
        graph = _tiny_graph(x)
        if graph is not None:
            calls[f"{str(dtype).removeprefix('torch.')} oneDNN Graph"] = graph
    if hasattr(torch.ops.onednn, "qconv_pointwise"):
        calls["int8"] = _tiny_int8(shape)
    return calls


def _tiny_graph(x: torch.Tensor) -> Callable[[], object] | None:
    """The same convolution+ReLU as a oneDNN Graph program, as `optimize_for_inference` runs one."""
    from vggnet.deploy import onednn_graph

    if not onednn_graph.onednn_graph_available():
        return None
    channels = x.shape[1]
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    module = torch.nn.Sequential(conv, torch.nn.ReLU()).eval().to(x.dtype)
    program = onednn_graph.make_program(module, x)
    return None if program is None else lambda: program(x)


def _tiny_int8(shape: list[int]) -> Callable[[], object]:
    """The int8 probe: uint8 activations, int8 weights per output channel, uint8 out, as vggnet's int8 runs."""
    channels = shape[1]
    w = torch.randint(-127, 128, (channels, channels, 3, 3), dtype=torch.int8)
    scales = torch.full((channels,), 0.01)
    zeros = torch.zeros(channels, dtype=torch.int64)
    one = [1, 1]
    packed = torch.ops.onednn.qconv_prepack(w, scales, 0.02, 0, one, one, one, 1, shape)
    x = torch.randint(0, 256, shape, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    bias = torch.zeros(channels)
    op = torch.ops.onednn.qconv_pointwise.default
    return lambda: op(x, 0.02, 0, packed, scales, zeros, bias, one, one, one, 1, 0.05, 0, torch.uint8, "relu", [], "")


def fixed_costs(calls: int) -> dict[str, dict[str, float]]:
    """Per dtype: the small convolution's median wall time, oneDNN's execution time, and the difference (µs)."""
    out = {}
    for name, run in tiny_calls().items():
        r = profile(run, calls)
        out[name] = {
            "wall_us": r["wall_ms"] * 1e3,
            "onednn_us": r["onednn_ms"] * 1e3,
            "outside_onednn_us": r["outside_onednn_ms"] * 1e3,
        }
    return out


# --- the run ---------------------------------------------------------------------------------------


def run_paths(args: argparse.Namespace, images: torch.Tensor) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Every asked path at every batch size; a path that cannot be built is recorded as skipped, with why."""
    torch.manual_seed(0)
    vm = vggnet.vgg16(weights=args.weights).eval()
    rows, skipped = [], []
    for bs in args.batch:
        x = images.repeat(-(-bs // len(images)), 1, 1, 1)[:bs].contiguous()
        for path in args.only:
            try:
                model = build(path, vm, images, bs)
            except Exception as err:  # a missing extra (torchao) or a CPU without the kernels is a fact to record
                skipped.append({"path": path, "batch": str(bs), "reason": f"{type(err).__name__}: {err}"})
                continue
            r = profile(lambda model=model, x=x: model(x), args.calls)
            rows.append({"path": path, "batch": bs, "dtype": _dtype(model), **r})
            print_row(rows[-1])
            del model
    return rows, skipped


def _dtype(model: Any) -> str:
    """The dtype a built model computes in ("int8" for a quantized one)."""
    if getattr(model, "int8", False):
        return "int8"
    return str(getattr(model, "dtype", "?")).removeprefix("torch.")


def print_row(r: dict[str, Any]) -> None:
    kinds = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["onednn_ms_by_kind"].items(), key=lambda kv: -kv[1]))
    print(
        f"{r['path']:8} {r['dtype']:9} batch {r['batch']:3}: wall {r['wall_ms']:8.2f} ms, oneDNN {r['onednn_ms']:8.2f} "
        f"({r['primitives_per_call']} primitives: {kinds}), outside oneDNN {r['outside_onednn_ms']:7.2f} ms",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--calls", type=int, default=20, help="timed calls, and as many verbose ones, per path")
    parser.add_argument("--only", nargs="+", choices=PATHS, default=list(PATHS))
    add_run_arguments(parser, smoke="64 px, batch 1, two calls: checks the machinery")
    args = parser.parse_args(argv)
    if os.name != "posix":
        parser.error("reading oneDNN's verbose lines needs a POSIX process (file descriptor 1)")
    if min(args.batch) < 1 or args.calls < 1:
        parser.error("--batch and --calls take positive numbers")
    if args.smoke:
        args.batch, args.calls, args.image_size = [1], 2, 64
    images = photos(1, args.image_size)
    results = {**results_header("cpu_layers", args), "calls": args.calls}
    results["rows"], results["skipped"] = run_paths(args, images)
    results["fixed_cost_probe"] = {"channels": TINY[0], "map": TINY[1], "by_dtype": fixed_costs(10 * args.calls)}
    for name, r in results["fixed_cost_probe"]["by_dtype"].items():
        print(f"one small convolution, {name}: wall {r['wall_us']:.1f} µs, oneDNN {r['onednn_us']:.1f} µs")
    save_run("cpu_layers", results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
