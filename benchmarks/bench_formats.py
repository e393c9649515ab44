"""Weight formats and exported graphs, side by side in one run, on CPU.

    python benchmarks/bench_formats.py [--arch vgg16] [--rounds 5] [--out DIR | --json PATH] [--smoke]

1. Load time from a warm page cache of the same seeded weights as safetensors and as PyTorch's zip
   (pickle) format, into a model built on the meta device (`load_state_dict(assign=True)`):
   safetensors (`safetensors.torch.load_file`, memory-mapped), zip with `torch.load(mmap=True)`, zip
   with a plain `torch.load`. Memory-mapped tensors are read on first use, so the time after touching
   every weight once (a sum over each) is reported too. Median of `--repeat` rounds, paths interleaved.
2. The exported artifacts (ONNX, pt2, TorchScript; `vggnet.deploy.export`): export time, and the time
   to load each as a deployment would (an onnxruntime session, `torch.export.load(...).module()`,
   `torch.jit.load`), median of `--repeat` rounds.
3. Latency at batch 1 (224x224, float32): each artifact (onnxruntime's CPU provider, the pt2 program,
   TorchScript) against vggnet's `optimize_for_inference(dtype=float32)` and plain eager, interleaved
   rounds, median round, with each one's largest logit difference from eager.

Figures are printed and saved as `formats-cpu-<date>.json` (`formats-smoke-cpu-...` with --smoke: vgg11,
64x64 images, one round); nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # a checkout without `pip install -e .`

from harness import environment, save_run

import vggnet
from vggnet import hub
from vggnet.deploy.export import export
from vggnet.deploy.inference import optimize_for_inference
from vggnet.models.layouts import write_state_dict


def build_meta(arch: str) -> vggnet.VGG:
    with torch.device("meta"):
        return vggnet.get_model(arch, init_weights=False)


def load_paths(arch: str, st: Path, pth: Path) -> dict[str, Callable[[], vggnet.VGG]]:
    def assign(state: dict[str, torch.Tensor]) -> vggnet.VGG:
        model = build_meta(arch)
        model.load_state_dict(state, assign=True)
        return model

    return {
        "safetensors (mmap)": lambda: assign(hub.load_safetensors(st)),
        "zip, torch.load(mmap=True)": lambda: assign(torch.load(pth, weights_only=True, mmap=True)),
        "zip, torch.load": lambda: assign(torch.load(pth, weights_only=True)),
    }


def touch(model: vggnet.VGG) -> float:
    with torch.no_grad():
        return float(sum(p.sum() for p in model.parameters()))


def time_loads(arch: str, st: Path, pth: Path, repeat: int) -> dict[str, dict[str, float]]:
    paths = load_paths(arch, st, pth)
    for load in paths.values():  # warm the page cache
        touch(load())
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    for _ in range(repeat):
        for name, load in paths.items():
            t0 = time.perf_counter()
            model = load()
            t1 = time.perf_counter()
            touch(model)
            times[name].append((t1 - t0, time.perf_counter() - t0))
            del model
    return {
        name: {"load_s": statistics.median(a for a, _ in ts), "load_and_touch_s": statistics.median(b for _, b in ts)}
        for name, ts in times.items()
    }


def time_latency(candidates: dict[str, Callable[[], object]], rounds: int, iters: int) -> dict[str, dict[str, float]]:
    first: dict[str, float] = {}
    for name, call in candidates.items():
        t0 = time.perf_counter()
        call()
        first[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, call in candidates.items():
            t0 = time.perf_counter()
            for _ in range(iters):
                call()
            times[name].append((time.perf_counter() - t0) / iters)
    return {
        name: {
            "latency_ms": statistics.median(ts) * 1000,
            "latency_ms_min": min(ts) * 1000,
            "first_call_s": first[name],
        }
        for name, ts in times.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vgg16", choices=vggnet.list_models())
    parser.add_argument("--repeat", "--rounds", type=int, default=5, help="rounds per measurement")
    parser.add_argument("--iters", type=int, default=3, help="batch-1 calls per latency round")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON file")
    parser.add_argument("--json", type=Path, default=None, help="the results file (default: in --out)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the files go (default: a temp dir)")
    parser.add_argument("--smoke", action="store_true", help="vgg11, 64x64, one round: checks the machinery")
    args = parser.parse_args()
    if args.smoke:
        args.arch, args.repeat, args.iters, args.image_size = "vgg11", 1, 1, 64

    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return run(args, args.workdir)
    with tempfile.TemporaryDirectory(prefix="vggnet-bench-formats-") as tmp:
        return run(args, Path(tmp))


def run(args: argparse.Namespace, workdir: Path) -> int:
    torch.manual_seed(0)
    model = vggnet.get_model(args.arch).eval()
    st, pth = workdir / f"{args.arch}.safetensors", workdir / f"{args.arch}.pth"
    write_state_dict(model.state_dict(), st)
    write_state_dict(model.state_dict(), pth)

    results: dict[str, object] = {
        "suite": "formats",
        "smoke": args.smoke,
        **environment(torch.device("cpu")),
        "arch": args.arch,
        "repeat": args.repeat,
        "file_bytes": {"safetensors": st.stat().st_size, "zip": pth.stat().st_size},
    }
    loads = time_loads(args.arch, st, pth, args.repeat)
    results["load"] = loads
    print(f"== load {args.arch} from a warm page cache, median of {args.repeat}")
    for name, r in loads.items():
        print(
            f"  {name:28s} {r['load_s'] * 1000:9.1f} ms   + touch every weight {r['load_and_touch_s'] * 1000:9.1f} ms"
        )

    artifacts = {fmt: export_timed(model, workdir, args, fmt, results) for fmt in ("onnx", "pt2", "torchscript")}
    runners = time_artifact_loads(artifacts, args.repeat, results)
    x = torch.randn(1, 3, args.image_size, args.image_size)
    fast = optimize_for_inference(model, device="cpu", dtype=torch.float32)
    candidates: dict[str, Callable[[], object]] = {name: partial(run, x) for name, run in runners.items()}
    candidates["vggnet optimize_for_inference (float32)"] = partial(fast, x)
    candidates["vggnet eager"] = partial(model, x)
    with torch.inference_mode():
        latency = time_latency(candidates, args.repeat, args.iters)
        reference = model(x)
        results["max_abs_diff"] = {
            name: (torch.as_tensor(call()) - reference).abs().max().item() for name, call in candidates.items()
        }
    results["latency_batch1"] = latency
    print(f"== batch 1, {args.image_size}x{args.image_size} float32, median of {args.repeat} rounds of {args.iters}")
    eager = latency["vggnet eager"]["latency_ms"]
    for name, r in latency.items():
        ratio = eager / r["latency_ms"]
        print(f"  {name:40s} {r['latency_ms']:9.1f} ms  {ratio:5.2f}x eager  (fastest round {r['latency_ms_min']:.1f})")

    save_run("formats", results, args)
    return 0


def export_timed(model: vggnet.VGG, workdir: Path, args: argparse.Namespace, fmt: str, results: dict) -> Path:
    """`model` exported as `fmt` (static batch 1), its export time recorded under `export_s`."""
    suffix = {"onnx": "onnx", "pt2": "pt2", "torchscript": "pt"}[fmt]
    t0 = time.perf_counter()
    path = export(model, workdir / f"{args.arch}.{suffix}", fmt, dynamic_batch=False, image_size=args.image_size)
    results.setdefault("export_s", {})[fmt] = time.perf_counter() - t0
    return path


def time_artifact_loads(artifacts: dict[str, Path], repeat: int, results: dict) -> dict[str, Callable]:
    """Load each artifact `repeat` times, the formats interleaved; record the median; return a runner each."""
    import onnxruntime

    def onnx(path: Path) -> Callable:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])

    loaders: dict[str, tuple[str, Callable[[Path], Callable]]] = {
        "onnxruntime (ONNX)": ("onnx", onnx),
        "pt2 (torch.export.load)": ("pt2", lambda path: torch.export.load(path).module()),
        "TorchScript (torch.jit.load)": ("torchscript", lambda path: torch.jit.load(str(path))),
    }
    times: dict[str, list[float]] = {name: [] for name in loaders}
    runners: dict[str, Callable] = {}
    for _ in range(repeat):
        for name, (fmt, load) in loaders.items():
            t0 = time.perf_counter()
            runners[name] = load(artifacts[fmt])
            times[name].append(time.perf_counter() - t0)
    results["artifact_load_s"] = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"== artifacts: export s {results['export_s']}")
    for name, seconds in results["artifact_load_s"].items():
        print(f"  load {name:30s} {seconds * 1000:9.1f} ms")
    return runners


if __name__ == "__main__":
    raise SystemExit(main())
