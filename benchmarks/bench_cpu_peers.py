"""vgg16 on CPU against its deployment peers, in one process: interleaved rounds, median, ratios to torchvision.

    python benchmarks/bench_cpu_peers.py [--batch 1 8] [--rounds 7] [--only NAME ...] [--json PATH] [--smoke]

Needs the benchmark extra (`pip install "vggnet[bench]"`: onnxruntime, openvino, nncf) and torchao for
int8; a peer that is missing or fails to build is recorded as skipped, with the reason.

Every candidate holds the same weights (`--weights`, default seeded random ones: the figures are
about speed and agreement, not accuracy) and sees the same real photos: tests/photos, each as its
centre crop plus random resized crops and flips at 224x224, ImageNet normalisation. Per batch size:

- agreement with torchvision float32 eager on every photo crop (fed in chunks of the batch): top-1
  agreement, mean and min logit cosine, max |logit difference|;
- speed: one warm-up call each, then the candidates take turns for `--rounds` rounds, in another
  order each round (drawn from `--seed`, recorded); a turn is 50 ms of idle cores (other runtimes'
  threads spin a while after their calls), one untimed call (which brings the candidate's code, threads
  and address translations back after the others'), then `--calls` timed calls; the figure is the
  median round, and every speed-up is torchvision's median over the candidate's median in the same run;
- the machine: CPU model, ISA (torch's capabilities, OpenVINO's OPTIMIZATION_CAPABILITIES and the
  precision its default compile picks), the load average before and after each batch size.

Candidates (as named in the results):
  torchvision fp32          the baseline: torchvision's VGG, eager, NCHW
  vggnet fp32               optimize_for_inference(dtype=torch.float32), with its oneDNN Graph programs
  vggnet default            optimize_for_inference() (bf16 on CPUs with native bf16, float32 elsewhere)
  vggnet bf16               optimize_for_inference(dtype=torch.bfloat16)
  vggnet fp32 eager         optimize_for_inference(dtype=torch.float32, onednn_graph=False): no programs
  vggnet default eager      optimize_for_inference(onednn_graph=False)
  vggnet int8               vggnet.deploy.quantize.quantize, calibrated on the photos
  onnxruntime fp32          vggnet's ONNX export in an InferenceSession (CPUExecutionProvider)
  openvino f32              ov.convert_model -> compile_model(CPU, INFERENCE_PRECISION_HINT=f32, LATENCY)
  openvino default          compile_model(CPU, LATENCY): its own precision (bf16 on native-bf16 CPUs)
  openvino int8 (nncf)      nncf.quantize on the photos -> compile_model(CPU, LATENCY)

Results go to `--json PATH`, or DIR/cpu_peers-cpu-<date>.json (`--out`, default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # a checkout without `pip install -e .`

from harness import environment, save_run

import vggnet
from vggnet.data.decode import load_image

PHOTOS = ROOT / "tests" / "photos"
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
BASE = "torchvision fp32"

Run = Callable[[torch.Tensor], torch.Tensor]
# name -> (torchvision model, vggnet model, calibration photos, batch, image size) -> a function of a batch
Factory = Callable[[torch.nn.Module, vggnet.VGG, torch.Tensor, int, int], Run]


def photos(per_photo: int, size: int, seed: int = 0) -> torch.Tensor:
    """The bundled photos as (N, 3, size, size) normalised crops: each centre crop, then random crops and flips."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for path in sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")):
        rgb = load_image(path)
        img = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(rgb.height, rgb.width, 3)
        img = img.permute(2, 0, 1).float() / 255  # (3, H, W)
        h, w = img.shape[-2:]
        for k in range(per_photo):
            side = min(h, w) if k == 0 else int(min(h, w) * (0.5 + 0.5 * torch.rand(1, generator=g).item()))
            y0 = (h - side) // 2 if k == 0 else int(torch.randint(0, h - side + 1, (1,), generator=g))
            x0 = (w - side) // 2 if k == 0 else int(torch.randint(0, w - side + 1, (1,), generator=g))
            crop = img[:, y0 : y0 + side, x0 : x0 + side].unsqueeze(0)
            crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
            out.append((crop.flip(-1) if k % 2 else crop).sub(MEAN).div(STD))
    return torch.stack(out)


def agreement(got: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Top-1 agreement (%), mean and min logit cosine, max |difference| of `got` against `ref`."""
    got, ref = got.float(), ref.float()
    cos = F.cosine_similarity(got, ref, dim=1)
    return {
        "top1_agreement": 100.0 * (got.argmax(1) == ref.argmax(1)).float().mean().item(),
        "cosine": cos.mean().item(),
        "min_cosine": cos.min().item(),
        "max_abs_diff": (got - ref).abs().max().item(),
    }


# --- the candidates ------------------------------------------------------------------------------------


def _vggnet(dtype: torch.dtype | None, onednn_graph: bool = True) -> Factory:
    def make(tv: torch.nn.Module, vm: vggnet.VGG, calib: torch.Tensor, bs: int, size: int) -> Run:
        from vggnet.deploy.inference import optimize_for_inference

        model = optimize_for_inference(vm, dtype=dtype, batch_size=bs, onednn_graph=onednn_graph)
        for _ in range(2):  # a shape's program is made on its second call: before the timed ones
            model(torch.zeros(bs, 3, size, size))
        return model

    return make


def _int8(tv: torch.nn.Module, vm: vggnet.VGG, calib: torch.Tensor, bs: int, size: int) -> Run:
    from vggnet.deploy.quantize import quantize

    return quantize(vm, calib, batch_size=bs, fallback=False)


def _onnxruntime(tv: torch.nn.Module, vm: vggnet.VGG, calib: torch.Tensor, bs: int, size: int) -> Run:
    import onnxruntime as ort

    from vggnet.deploy.export import export

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="vggnet-peers-") as folder:  # the session holds the model once made
        path = export(vm, Path(folder) / "vgg.onnx", "onnx", dynamic_batch=False, batch_size=bs, image_size=size)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def ov_config(config: dict[str, str]) -> dict[str, str]:
    """OpenVINO's CPU settings for every OpenVINO candidate (latency, this process's threads), plus `config`."""
    return {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": str(torch.get_num_threads()), **config}


def _ov_compile(model: Any, config: dict[str, str]) -> Run:
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", ov_config(config))
    request = compiled.create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        request.infer({0: x.numpy()}, share_inputs=True)
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    run.precision = _ov_type(compiled.get_property("INFERENCE_PRECISION_HINT"))  # type: ignore[attr-defined]
    return run


def _ov_type(value: Any) -> str:
    """An OpenVINO element type as its name ("bf16", "f32"), whatever object the property came back as."""
    name = getattr(value, "get_type_name", None)
    return str(name()) if callable(name) else str(value)


def ov_model(tv: torch.nn.Module, bs: int, size: int) -> Any:
    """torchvision's model `tv` converted to OpenVINO for (bs, 3, size, size) inputs."""
    import openvino as ov

    shape = (bs, 3, size, size)
    return ov.convert_model(tv, example_input=torch.randn(shape), input=[shape])


def _openvino(config: dict[str, str]) -> Factory:
    def make(tv: torch.nn.Module, vm: vggnet.VGG, calib: torch.Tensor, bs: int, size: int) -> Run:
        return _ov_compile(ov_model(tv, bs, size), config)

    return make


def ov_int8_model(tv: torch.nn.Module, calib: torch.Tensor, bs: int, size: int) -> Any:
    """torchvision's model `tv` in OpenVINO, quantized by NNCF on the batches of `bs` images in `calib`."""
    import nncf

    data = [calib[i : i + bs].numpy() for i in range(0, len(calib) - bs + 1, bs)]
    return nncf.quantize(ov_model(tv, bs, size), nncf.Dataset(data), subset_size=len(data) * bs)


def _openvino_int8(tv: torch.nn.Module, vm: vggnet.VGG, calib: torch.Tensor, bs: int, size: int) -> Run:
    return _ov_compile(ov_int8_model(tv, calib, bs, size), {})


CANDIDATES: dict[str, Factory] = {
    BASE: lambda tv, vm, calib, bs, size: tv,
    "vggnet fp32": _vggnet(torch.float32),
    "vggnet default": _vggnet(None),
    "vggnet bf16": _vggnet(torch.bfloat16),
    "vggnet fp32 eager": _vggnet(torch.float32, onednn_graph=False),
    "vggnet default eager": _vggnet(None, onednn_graph=False),
    "vggnet int8": _int8,
    "onnxruntime fp32": _onnxruntime,
    "openvino f32": _openvino({"INFERENCE_PRECISION_HINT": "f32"}),
    "openvino default": _openvino({}),
    "openvino int8 (nncf)": _openvino_int8,
}


# --- the machine ---------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model, the ISA features that decide the kernels, and what OpenVINO sees."""
    caps = torch.cpu.get_capabilities()
    wanted = ("avx2", "avx512_f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "avx_vnni")
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "isa": sorted(k for k in wanted if caps.get(k)),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "physical_cores": caps.get("num_physical_cores"),
    }
    try:
        import openvino as ov

        core = ov.Core()
        info["openvino"] = ov.__version__
        info["openvino_capabilities"] = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        info["openvino_default_precision"] = _ov_type(core.get_property("CPU", "INFERENCE_PRECISION_HINT"))
    except Exception as err:  # a missing peer is a fact to record
        info["openvino"] = f"unavailable: {type(err).__name__}: {err}"
    return info


def add_run_arguments(parser: argparse.ArgumentParser, *, smoke: str) -> None:
    """The options both CPU scripts take: input size, weights, where the results go, `--smoke` (help: `smoke`)."""
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--weights", default=None, help="vgg16 weights (default: seeded random ones)")
    parser.add_argument("--json", type=Path, default=None, help="the results file (default: in --out)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for the results file")
    parser.add_argument("--smoke", action="store_true", help=smoke)


def results_header(suite: str, args: argparse.Namespace) -> dict[str, Any]:
    """How a CPU script's results file opens: the suite, where and when, the machine, the model and input size."""
    return {
        "suite": suite,
        "smoke": args.smoke,
        **environment(torch.device("cpu")),
        "machine": machine(),
        "arch": "vgg16",
        "weights": args.weights or "seeded random",
        "image_size": args.image_size,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --- measuring -----------------------------------------------------------------------------------------


def build(names: list[str], tv: torch.nn.Module, vm: vggnet.VGG, images: torch.Tensor, bs: int, size: int) -> tuple[
    dict[str, Run], dict[str, dict[str, Any]], list[dict[str, str]]
]:  # fmt: skip
    """Each candidate built and checked against torchvision float32 on every photo crop."""
    with torch.inference_mode():
        ref = torch.cat([tv(images[i : i + bs]) for i in range(0, len(images) - bs + 1, bs)])
    runs: dict[str, Run] = {}
    info: dict[str, dict[str, Any]] = {}
    skipped = []
    for name in names:
        gc.collect()
        t0 = time.perf_counter()
        try:
            run = CANDIDATES[name](tv, vm, images, bs, size)
            built_s = time.perf_counter() - t0
            with torch.inference_mode():
                t0 = time.perf_counter()
                first = run(images[:bs])
                first_s = time.perf_counter() - t0
                rest = [run(images[i : i + bs]) for i in range(bs, len(images) - bs + 1, bs)]
        except Exception as err:  # recorded; the others still run
            skipped.append({"name": name, "reason": f"{type(err).__name__}: {str(err)[:300]}"})
            print(f"  {name}: skipped: {skipped[-1]['reason']}", flush=True)
            continue
        info[name] = {"build_s": built_s, "first_call_s": first_s, **agreement(torch.cat([first, *rest]), ref)}
        for attr in ("precision", "dtype"):
            if hasattr(run, attr):
                info[name]["precision"] = str(getattr(run, attr))
        runs[name] = run
        r = info[name]
        print(
            f"  ready {name:22} build {built_s:6.1f} s, first call {first_s:6.2f} s, "
            f"top-1 {r['top1_agreement']:6.2f}%, cosine {r['cosine']:.6f} (min {r['min_cosine']:.6f})",
            flush=True,
        )
    return runs, info, skipped


# Seconds the cores are left idle before each candidate's turn: the threads of the one before (PyTorch's
# OpenMP, onnxruntime's, OpenVINO's TBB) spin a while waiting for more work, on the same cores.
SETTLE_S = 0.05


def time_rounds(
    runs: dict[str, Run], x: torch.Tensor, rounds: int, calls: int, seed: str = "0"
) -> dict[str, list[float]]:
    """Seconds per call of each candidate, one entry per round, the candidates taking turns.

    Each candidate's turn times it as it runs alone, warm: the cores idle for SETTLE_S seconds, so that no
    other runtime's threads are still spinning on them; one call untimed, which brings its code, threads
    and address translations back after the others' turns (the cost of that call is the in-process
    comparison's, not the runtime's); then `calls` timed calls. Each round takes the candidates in another
    order, drawn from `seed` (the same orders for the same seed), so that whatever a turn leaves behind
    falls on each of them alike.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    orders = random.Random(seed)
    with torch.inference_mode():
        for run in runs.values():
            run(x)
        for _ in range(rounds):
            names = list(runs)
            orders.shuffle(names)
            for name in names:
                time.sleep(SETTLE_S)
                runs[name](x)
                t0 = time.perf_counter()
                for _ in range(calls):
                    runs[name](x)
                times[name].append((time.perf_counter() - t0) / calls)
    return times


def run_batch(
    names: list[str], bs: int, args: argparse.Namespace, models: tuple[Any, Any], images: torch.Tensor
) -> dict[str, Any]:
    """Build, check and time every candidate at batch `bs`; the figures and the load around them."""
    load_before = list(os.getloadavg())
    runs, info, skipped = build(names, *models, images, bs, args.image_size)
    calls = args.calls if args.calls else (3 if bs == 1 else 1)
    seed = f"{args.seed}-{bs}"  # another set of orders for each batch size
    times = time_rounds(runs, images[:bs].contiguous(), args.rounds, calls, seed)
    base = statistics.median(times[BASE]) if BASE in times else None
    rows = []
    for name, ts in times.items():
        median = statistics.median(ts)
        rows.append(
            {
                "name": name,
                "ms": median * 1e3,
                "ms_min": min(ts) * 1e3,
                "img_per_s": bs / median,
                "speedup_vs_torchvision": base / median if base else None,
                **info[name],
            }
        )
    load = {"load_before": load_before, "load_after": list(os.getloadavg())}
    timing = {"order": "shuffled each round", "seed": seed, "settle_s": SETTLE_S, "untimed_calls": 1}
    figures = {"rows": rows, "skipped": skipped}
    return {"batch": bs, "rounds": args.rounds, "calls": calls, "timing": timing, **load, **figures}


def print_batch(r: dict[str, Any], size: int) -> None:
    print(f"\nvgg16 {size}x{size} batch {r['batch']}, {r['rounds']} rounds x {r['calls']} calls, median;", end=" ")
    print(f"load {r['load_before'][0]:.2f} -> {r['load_after'][0]:.2f}")
    print(f"{'candidate':24} {'ms/batch':>9} {'img/s':>7} {'vs tv':>7} {'top1%':>7} {'cosine':>9} {'min cos':>9}")
    for row in r["rows"]:
        speedup = row["speedup_vs_torchvision"]
        print(
            f"{row['name']:24} {row['ms']:9.1f} {row['img_per_s']:7.2f} {speedup or 0:6.2f}x "
            f"{row['top1_agreement']:7.2f} {row['cosine']:9.6f} {row['min_cosine']:9.6f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=None, help="calls per round (default 3 at batch 1, else 1)")
    parser.add_argument("--seed", type=int, default=0, help="draws the rounds' orders (recorded in the results)")
    parser.add_argument("--only", nargs="+", choices=list(CANDIDATES), default=None, help="these (and torchvision)")
    parser.add_argument("--per-photo", type=int, default=8, help="crops per photo (4 photos)")
    add_run_arguments(parser, smoke="64 px, batch 1, one round: checks the machinery")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch, args.rounds, args.calls, args.image_size, args.per_photo = [1], 1, 1, 64, 2
    names = [BASE, *(n for n in (args.only or CANDIDATES) if n != BASE)]
    import torchvision

    torch.manual_seed(0)
    vm = vggnet.vgg16(weights=args.weights).eval()
    tv = torchvision.models.vgg16().eval()
    tv.load_state_dict(vm.state_dict())
    images = photos(args.per_photo, args.image_size)
    results = {**results_header("cpu_peers", args), "images": len(images), "batches": []}
    print(results["machine"], flush=True)
    for bs in args.batch:
        r = run_batch(names, bs, args, (tv, vm), images)
        results["batches"].append(r)
        print_batch(r, args.image_size)
    save_run("cpu_peers", results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
