"""vggnet int8 against OpenVINO's NNCF int8, layer by layer, each timed inside whole forward passes, in one process.

    python benchmarks/bench_int8_layers.py [--batch 1 8] [--rounds 15] [--json PATH] [--smoke]

`bench_cpu_peers.py` says which of the two is faster; this says where. Both models hold the same vgg16
weights and are calibrated on the same photo crops (`bench_cpu_peers.photos`). The two take turns, one
whole forward pass each per round (a layer's time depends on what ran before it: its weights and input
come from whichever cache the layers before left them in), and each layer's figure is its median over
the rounds:

- vggnet: the int8 program `quantize` makes (an FX graph of oneDNN calls, `vggnet.deploy.onednn`), run
  node by node through FX with a clock around each call (a few µs per node more than a plain call);
  the model's own call, which runs the program as a TorchScript function (`vggnet.deploy.torchscript`),
  is timed whole, and both walls are recorded;
- OpenVINO: its own per-node profile (`PERF_COUNT`, `real_time`) of the pass just run.

Layers are matched by kind and order: the 13 convolutions (each with its ReLU and requantization), the
5 max-pools, fc6-fc8; everything else (the input's quantization, OpenVINO's reorders and its 7x7 average
pool, vggnet's flatten and the exported graph's shape guard) is listed as it ran, under `other`.
Needs the benchmark extra (`pip install "vggnet[bench]"`) and torchao; without OpenVINO the OpenVINO
column is empty and the reason recorded under `skipped`.

Results go to `--json PATH`, or DIR/int8_layers-cpu-<date>.json (`--out`, default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from typing import Any

import torch
from bench_cpu_peers import add_run_arguments, ov_config, ov_int8_model, photos, results_header
from harness import save_run
from torch import fx

import vggnet
from vggnet.deploy.quantize import quantize

# vggnet's node names (FX names them after the operator), OpenVINO's node types
KINDS = {"qconv_pointwise": "conv", "max_pool2d": "pool", "qlinear_pointwise": "fc"}
OV_KINDS = {"Convolution": "conv", "MaxPool": "pool", "FullyConnected": "fc", "FullyConnectedQuantizedLegacy": "fc"}


class _Clocked(fx.Interpreter):
    """Runs a graph node by node, adding each call's seconds to `seconds[node name]`."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.seconds: dict[str, list[float]] = defaultdict(list)

    def run_node(self, n: fx.Node) -> Any:
        t0 = time.perf_counter()
        out = super().run_node(n)
        if n.op in ("call_function", "call_module", "call_method"):  # not placeholders, attributes, the output
            self.seconds[n.name].append(time.perf_counter() - t0)
        return out


def vggnet_kind(name: str) -> str:
    """ "conv", "pool", "fc" or "other" for one of vggnet's program nodes."""
    return next((kind for key, kind in KINDS.items() if key in name), "other")


def openvino_kind(name: str) -> str:
    """The same for one of OpenVINO's ("<node type> <node name>": its reorders name the layer they feed)."""
    return OV_KINDS.get(name.split(" ", 1)[0], "other")


def _numbered(names: list[str], kind_of: Any) -> list[tuple[str, str]]:
    """(label, name) in order: "conv 1" ... "fc 3" by kind and order, the rest "other: <name>"."""
    counts: dict[str, int] = defaultdict(int)
    out = []
    for name in names:
        kind = kind_of(name)
        counts[kind] += 1
        out.append((f"{kind} {counts[kind]}" if kind != "other" else f"other: {name}", name))
    return out


def _openvino(vm: vggnet.VGG, images: torch.Tensor, bs: int, size: int) -> Any:
    """OpenVINO's NNCF int8 vgg16 as bench_cpu_peers builds it, with per-node profiling, as an infer request."""
    import openvino as ov
    import torchvision

    tv = torchvision.models.vgg16().eval()
    tv.load_state_dict(vm.state_dict())
    quantized = ov_int8_model(tv, images, bs, size)
    return ov.Core().compile_model(quantized, "CPU", ov_config({"PERF_COUNT": "YES"})).create_infer_request()


def _ov_layers(request: Any) -> list[tuple[str, float]]:
    """(node type and name, ms) of each node the last inference executed, in order."""
    return [
        (f"{p.node_type} {p.node_name}", p.real_time.total_seconds() * 1e3)
        for p in request.profiling_info
        if p.status == p.Status.EXECUTED
    ]


def run_batch(vm: vggnet.VGG, images: torch.Tensor, bs: int, args: argparse.Namespace) -> dict[str, Any]:
    """Both models' layers at batch `bs`: the median ms of each over the rounds, and each side's wall per pass."""
    model = quantize(vm, images, batch_size=bs, fallback=False)
    x = images[:bs].contiguous()
    with torch.inference_mode():
        model(x)  # packs the weights for this batch
    program = model.program.programs[tuple(x.shape)]
    clocked, xi = _Clocked(program), x.float()  # what the program takes (Int8VGG converts the input so)
    skipped, request, ov_passes = [], None, []
    try:
        request = _openvino(vm, images, bs, args.image_size)
    except Exception as err:  # recorded; vggnet's side still runs
        skipped.append({"name": "openvino int8 (nncf)", "reason": f"{type(err).__name__}: {str(err)[:300]}"})
    walls: dict[str, list[float]] = defaultdict(list)
    with torch.inference_mode():
        for r in range(args.rounds + 1):  # the first round warms up and is dropped
            if request is not None:
                t0 = time.perf_counter()
                request.infer({0: x.numpy()}, share_inputs=True)
                walls["openvino"].append(time.perf_counter() - t0)
                ov_passes.append(_ov_layers(request))
            t0 = time.perf_counter()
            model(x)
            walls["vggnet"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            clocked.run(xi)
            walls["vggnet, node by node"].append(time.perf_counter() - t0)
            if r == 0:
                walls.clear()
                ov_passes.clear()
                clocked.seconds.clear()
    ours = {name: statistics.median(s) * 1e3 for name, s in clocked.seconds.items()}
    names = [name for name, _ in ov_passes[0]] if ov_passes else []
    theirs = {name: statistics.median(p[i][1] for p in ov_passes) for i, name in enumerate(names)}
    return {
        "batch": bs,
        "rounds": args.rounds,
        "wall_ms": {k: statistics.median(v) * 1e3 for k, v in walls.items()},
        "layers": _table(ours, theirs),
        "skipped": skipped,
    }


def _table(ours: dict[str, float], theirs: dict[str, float]) -> list[dict[str, Any]]:
    """One row per layer, vggnet's and OpenVINO's ms side by side (matched by kind and order), then the rest."""
    rows: dict[str, dict[str, Any]] = {}
    for side, times, kind_of in (("vggnet", ours, vggnet_kind), ("openvino", theirs, openvino_kind)):
        for label, name in _numbered(list(times), kind_of):
            row = rows.setdefault(label, {"layer": label, "vggnet_ms": None, "openvino_ms": None})
            row[f"{side}_ms"] = times[name]
            row[f"{side}_node"] = name
    return sorted(rows.values(), key=lambda r: (r["layer"].startswith("other"), _order(r["layer"])))


def _order(label: str) -> tuple[int, int]:
    kind, _, n = label.partition(" ")
    return (["conv", "pool", "fc"].index(kind), int(n)) if kind in ("conv", "pool", "fc") else (3, 0)


def print_batch(r: dict[str, Any]) -> None:
    print(f"\nbatch {r['batch']}: wall per pass (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in r["wall_ms"].items()))
    print(f"  {'layer':44} {'vggnet':>8} {'openvino':>9}")
    for row in r["layers"]:
        ours, theirs = (f"{v:.3f}" if v is not None else "-" for v in (row["vggnet_ms"], row["openvino_ms"]))
        print(f"  {row['layer'][:44]:44} {ours:>8} {theirs:>9}")
    for kind in ("conv", "pool", "fc", "other"):
        mine = [row for row in r["layers"] if row["layer"].startswith(kind)]
        sums = [sum(row[k] or 0.0 for row in mine) for k in ("vggnet_ms", "openvino_ms")]
        print(f"  sum of {kind:37} {sums[0]:8.3f} {sums[1]:9.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-photo", type=int, default=8, help="crops per photo (4 photos)")
    add_run_arguments(parser, smoke="64 px, batch 1, two rounds: checks the machinery")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch, args.rounds, args.image_size, args.per_photo = [1], 2, 64, 2
    torch.manual_seed(0)
    vm = vggnet.vgg16(weights=args.weights).eval()
    images = photos(args.per_photo, args.image_size)
    results = {**results_header("int8_layers", args), "images": len(images), "batches": []}
    for bs in args.batch:
        r = run_batch(vm, images, bs, args)
        results["batches"].append(r)
        print_batch(r)
    save_run("int8_layers", results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
