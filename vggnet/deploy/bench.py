"""Inference throughput and latency, side by side: vggnet eager, vggnet optimized, torchvision.

Method (the same for every figure `vggnet bench` and `benchmarks/` print):

- Every candidate holds the same weights and gets the same random input, in the same dtype.
- Each candidate is called `warmup` times first, at least twice (the first call, which includes any
  compilation, is reported as `first_call_s`; an optimized model makes its oneDNN Graph program on the
  second), then the candidates are timed in interleaved rounds (A B C A B C
  ...) so that a change in machine load hits all of them alike. A round times `iters // rounds`
  consecutive calls, with the device synchronised before and after; the figure is the median
  round, and `latency_ms` is the time of one batch in it.
- The peak is measured in the same interleaved rounds as the models, in the run's dtype: a square
  matmul; on CPU also the same GEMM as a 1x1 convolution and a 3x3 convolution, run by oneDNN,
  whose convolution kernels can outrun the BLAS behind torch.matmul; the fastest counts
  (`peak_kernels`).
- FLOPs are 2 x the multiply-adds of the convolutions and fully connected layers (`summarize`).
- With dtype int8 (CPU only) the float candidates run in float32 and one more, "vggnet int8", is
  `vggnet.deploy.quantize.quantize` calibrated on 8 random images; its report (agreement with float32 on 8
  other random images, quantize and compile times, or the float32 fallback's reason) is `int8`.
  Random weights and images check the machinery; accuracy on real images: benchmarks/bench_int8.py.

The benchmark scripts in `benchmarks/` (outside the wheel) build their suites on `run_bench` and
`time_interleaved`; the figures they measured are in `benchmarks/README.md`.
"""

from __future__ import annotations

import copy
import datetime
import importlib
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from types import ModuleType
from typing import Any

import torch
from torch import nn

from vggnet import __version__, settings
from vggnet.deploy.inference import default_dtype, onednn_computes, optimize_for_inference
from vggnet.deploy.quantize import Int8VGG, quantize
from vggnet.errors import DeviceError, UsageError
from vggnet.models.builders import get_model
from vggnet.models.summary import summarize
from vggnet.models.vgg import VGG

__all__ = [
    "SCHEMA",
    "BenchReport",
    "Result",
    "device_name",
    "format_int8",
    "format_report",
    "kernel_settings",
    "load_average",
    "PeakKernel",
    "best_peak",
    "matmul_peak",
    "peak_kernels",
    "run_bench",
    "time_interleaved",
    "versions",
]

logger = logging.getLogger(__name__)

SCHEMA = "vggnet.deploy.bench/1"
_PEAK = "peak: "
EAGER = "vggnet eager"
BASELINE = "torchvision eager"
INT8 = "vggnet int8"


@dataclass(frozen=True)
class Result:
    """One candidate's figures.

    Attributes:
        name: the candidate ("vggnet eager", "vggnet optimized", "torchvision eager", ...).
        img_per_s: images per second, from the median round.
        latency_ms: one batch, median round.
        latency_ms_min: one batch, fastest round.
        tflops: achieved, from the median round.
        peak_fraction: tflops / the run's measured peak.
        first_call_s: the first call, compilation included.
        max_abs_diff: the largest |logit difference| from vggnet eager on the same input.
    """

    name: str
    img_per_s: float
    latency_ms: float
    latency_ms_min: float
    tflops: float
    peak_fraction: float
    first_call_s: float
    max_abs_diff: float


@dataclass(frozen=True)
class BenchReport:
    """What `run_bench` measured, and on what: `vggnet bench --json` writes it (schema `SCHEMA`).

    Attributes:
        arch: the builder measured.
        batch_size: images per call.
        image_size: (height, width) of the random input.
        device: where it ran ("cpu", "cuda:0").
        device_name: the GPU's name, or the CPU's model, count, threads and capability.
        dtype: "float32", "bfloat16", "float16" or "int8".
        compile: whether the candidates were compiled.
        iters: calls timed per candidate, spread over the rounds.
        rounds: interleaved rounds; the figures are the median round's.
        threads: torch's CPU threads.
        gflop_per_image: 2 x the multiply-adds of one image.
        matmul_peak_tflops: the fastest dense kernel measured in the same rounds.
        matmul_peak_how: which kernel that was.
        results: one per candidate.
        date: when, in UTC (ISO 8601).
        versions: vggnet's, torch's, Python's, torchvision's, CUDA's.
        load_average: the machine's 1, 5 and 15 minute load averages.
        environment: settings that change which kernels run (e.g. oneDNN capped at AVX2).
        int8: with dtype int8, the `QuantizeReport` as a dict.
        schema: the format of this record.
    """

    arch: str
    batch_size: int
    image_size: tuple[int, int]  # (height, width)
    device: str
    device_name: str
    dtype: str
    compile: bool
    iters: int
    rounds: int
    threads: int
    gflop_per_image: float
    matmul_peak_tflops: float
    matmul_peak_how: str
    results: tuple[Result, ...]
    date: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    )
    versions: Mapping[str, str] = field(default_factory=lambda: versions())
    load_average: tuple[float, ...] = field(default_factory=lambda: load_average())
    # Settings that change which kernels run (e.g. oneDNN capped at AVX2 to stand in for an older CPU).
    environment: Mapping[str, str] = field(default_factory=lambda: kernel_settings())
    # dtype int8: vggnet.deploy.quantize's QuantizeReport as a dict (agreement with float32, times, fallback)
    int8: Mapping[str, Any] | None = None
    schema: str = SCHEMA

    def result(self, name: str) -> Result | None:
        """The figures of one candidate.

        Args:
            name: the candidate's name.

        Returns:
            Its result, or None when it did not run.
        """
        return next((r for r in self.results if r.name == name), None)

    def speedups(self) -> dict[str, float]:
        """img/s of every candidate divided by torchvision eager's (empty without torchvision).

        Returns:
            Candidate name -> speed-up.
        """
        base = self.result(BASELINE)
        if base is None:
            return {}
        return {r.name: r.img_per_s / base.img_per_s for r in self.results}

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON, with `speedup_vs_torchvision_eager` added.

        Returns:
            What `vggnet bench --json` prints.
        """
        data = asdict(self)
        data["versions"] = dict(self.versions)
        data["load_average"] = list(self.load_average)
        data["results"] = [asdict(r) for r in self.results]
        data["int8"] = dict(self.int8) if self.int8 is not None else None
        data["speedup_vs_torchvision_eager"] = self.speedups()
        return data


def versions() -> dict[str, str]:
    """vggnet's, torch's and Python's versions; torchvision's when installed, CUDA's and cuDNN's on CUDA.

    Returns:
        Name -> version.
    """
    found = {"vggnet": __version__, "torch": torch.__version__, "python": platform.python_version()}
    peer = _torchvision()
    if peer is not None:
        found["torchvision"] = str(peer.__version__)
    if torch.cuda.is_available():
        found["cuda"] = str(torch.version.cuda)
        found["cudnn"] = str(torch.backends.cudnn.version())  # type: ignore[no-untyped-call]
    return found


def load_average() -> tuple[float, ...]:
    """The system's 1, 5 and 15 minute load averages (empty where the platform has none).

    Returns:
        The three averages, rounded to 2 decimals.
    """
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except (AttributeError, OSError):  # not on every platform
        return ()


def kernel_settings() -> dict[str, str]:
    """The environment variables set here that change which kernels run (oneDNN's ISA cap, threads).

    Returns:
        Variable -> value.
    """
    return settings.kernel_settings()


def device_name(device: torch.device) -> str:
    """The GPU's name; for a CPU its model, CPU count, torch's threads and torch's CPU capability.

    Args:
        device: the device measured.

    Returns:
        One line, e.g. "AMD EPYC 9R45, 2 CPUs, 2 threads, AVX512".
    """
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: Mapping[str, Callable[[], object]], *, device: torch.device, iters: int, rounds: int
) -> dict[str, list[float]]:
    """Seconds per call of each function, one figure per round, the functions taking turns each round.

    Interleaving means a change of load on a shared machine hits every function alike.

    Args:
        fns: name -> a function to time (called with no argument).
        device: synchronised before and after each function's calls (CUDA runs asynchronously).
        iters: calls per function in all, spread over the rounds (at least one per round).
        rounds: how many rounds.

    Returns:
        Name -> seconds per call, one figure per round.
    """
    per_round = max(1, iters // rounds)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            _synchronize(device)
            start = time.perf_counter()
            for _ in range(per_round):
                fn()
            _synchronize(device)
            times[name].append((time.perf_counter() - start) / per_round)
    return times


@dataclass(frozen=True)
class PeakKernel:
    """A dense kernel whose speed bounds what the network can reach.

    Attributes:
        label: what it is, as reports say it.
        flop: floating-point operations per call.
        run: one call.
    """

    label: str
    flop: int
    run: Callable[[], object]


def peak_kernels(device: torch.device, dtype: torch.dtype, size: int | None = None) -> dict[str, PeakKernel]:
    """The kernels whose fastest defines the peak: a matmul; on CPU also 1x1 and 3x3 convolutions.

    On CPU the same GEMM runs as a 1x1 convolution, and a 3x3 convolution of 256 channels at 56x56 (an
    implicit GEMM) joins them, all run by oneDNN: on AVX-512 CPUs its direct convolution kernels can beat
    any GEMM call, and they are what VGG runs on.

    Args:
        device: where to run them.
        dtype: their dtype.
        size: the matmul's side (default 8192 on CUDA, 2048 on CPU).

    Returns:
        Name ("matmul", "1x1", "3x3") -> kernel.
    """
    size = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    kernels = {"matmul": PeakKernel(f"matmul {size}x{size}", 2 * size**3, lambda: a @ b)}
    if device.type == "cpu":
        conv2d = torch.nn.functional.conv2d
        # (1, K, 1, M) channels_last conv (N, K, 1, 1): the same M x K x N GEMM.
        x1 = a.t().reshape(1, size, 1, size).contiguous(memory_format=torch.channels_last)
        w1 = b.t().reshape(size, size, 1, 1).contiguous()
        kernels["1x1"] = PeakKernel(f"1x1 convolution (oneDNN) {size}x{size}", 2 * size**3, lambda: conv2d(x1, w1))
        if not onednn_computes(dtype):
            # torch's reference kernels would run both GEMMs, far slower than the 3x3 convolution
            # below (timings: benchmarks/README.md).
            del kernels["matmul"], kernels["1x1"]
        side, channels = 56, min(256, size)
        x3 = torch.randn(1, channels, side, side, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w3 = torch.randn(channels, channels, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
        kernels["3x3"] = PeakKernel(
            f"3x3 convolution (oneDNN), {channels} channels at {side}x{side}",
            2 * channels**2 * 9 * side**2,
            lambda: conv2d(x3, w3, padding=1),
        )
    return kernels


def best_peak(
    kernels: Mapping[str, PeakKernel], times: Mapping[str, list[float]], dtype: torch.dtype
) -> tuple[float, str]:
    """(TFLOP/s, how) of the fastest kernel, from its median time.

    Args:
        kernels: what `peak_kernels` returned.
        times: name -> seconds per call, one figure per round.
        dtype: the kernels' dtype, named in `how`.

    Returns:
        (the peak in TFLOP/s, which kernel and dtype reached it).
    """
    speed = {name: kernels[name].flop / statistics.median(times[name]) for name in kernels}
    best = max(speed, key=lambda name: speed[name])
    return speed[best] / 1e12, f"{kernels[best].label}, {dtype_name(dtype)}"


def matmul_peak(
    device: torch.device, dtype: torch.dtype | None = None, *, size: int | None = None, rounds: int | None = None
) -> tuple[float, str]:
    """(TFLOP/s, how) of the fastest of `peak_kernels` (bf16 on CUDA, float32 elsewhere by default).

    Args:
        device: where to measure.
        dtype: the kernels' dtype.
        size: the matmul's side.
        rounds: interleaved rounds (default 3 on CPU, 20 on CUDA).

    Returns:
        (the peak in TFLOP/s, which kernel and dtype reached it).
    """
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    kernels = peak_kernels(device, dtype, size)
    with torch.inference_mode():
        for kernel in kernels.values():
            kernel.run()
        rounds = rounds or (3 if device.type == "cpu" else 20)
        times = time_interleaved({n: k.run for n, k in kernels.items()}, device=device, iters=rounds, rounds=rounds)
    return best_peak(kernels, times, dtype)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _torchvision() -> ModuleType | None:
    """torchvision when installed: the peer the benchmarks compare against, never a dependency."""
    try:
        return importlib.import_module("torchvision")
    except ImportError:
        return None


def _torchvision_model(arch: str) -> nn.Module | None:
    if _torchvision() is None:
        logger.info("torchvision is not installed: no torchvision figures")
        return None
    model: nn.Module = importlib.import_module("torchvision.models").get_model(arch, weights=None)
    return model


def run_bench(
    arch: str = "vgg16",
    *,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    compile: bool | None = None,
    iters: int = 20,
    rounds: int = 5,
    warmup: int = 3,
    image_size: int | tuple[int, int] = 224,
    with_torchvision: bool = True,
    torchvision_compile: bool | None = None,
) -> BenchReport:
    """Measure vggnet eager, vggnet optimized and (when importable) torchvision on one random input.

    On CUDA this turns on `torch.backends.cudnn.benchmark` for the process (the input size is fixed), as any
    benchmark of fixed-size convolutions should; with compile it empties torch.compile's caches first.

    Args:
        arch: the builder to measure (random weights).
        batch_size: images per call.
        device: where to run; default CUDA when available (CPU for int8).
        dtype: default the device's fast dtype (bf16 on recent GPUs, float32 on CPU); torch.int8 (CPU only)
            adds "vggnet int8" to the float32 candidates (the module docstring says how).
        compile: torch.compile the candidates; default on for CUDA, off for CPU.
        iters: timed calls per candidate.
        rounds: interleaved rounds (at most `iters`).
        warmup: untimed calls first, at least 2 made (with CUDA graphs: compile and warm up, record, replay).
        image_size: the input's side, or (height, width).
        with_torchvision: measure torchvision too (eager, channels_last), when it is installed.
        torchvision_compile: measure torchvision compiled too (channels_last + torch.compile, the best it
            does with flags alone); default: as `compile`.

    Returns:
        The figures of every candidate, with the machine, date and versions.

    Raises:
        UsageError: a count under 1.
    """
    _check_counts(iters=iters, rounds=rounds, warmup=warmup, batch_size=batch_size)
    target, dtype, with_int8, compile = _settings(device, dtype, compile)
    rounds = min(rounds, iters)
    size = (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    gflop = 2 * summarize(arch, size).macs / 1e9
    # The peak kernels run in the same interleaved rounds as the models: the same load hits both.
    kernels = peak_kernels(target, dtype)
    tv_compile = torchvision_compile if torchvision_compile is not None else compile
    models, x, int8_report = _models(
        arch, target, dtype, size, batch_size, compile, with_torchvision, tv_compile, with_int8
    )
    first, diffs, times = _measure(models, kernels, x, device=target, warmup=warmup, iters=iters, rounds=rounds)
    peak, how = best_peak(kernels, {name: times.pop(_PEAK + name) for name in kernels}, dtype)
    results = tuple(_result(name, t, batch_size, gflop, peak, first[name], diffs[name]) for name, t in times.items())
    return BenchReport(
        arch=arch, batch_size=batch_size, image_size=size, device=str(target), device_name=device_name(target),
        dtype="int8" if with_int8 else dtype_name(dtype), compile=compile, iters=iters, rounds=rounds,
        threads=torch.get_num_threads(), gflop_per_image=gflop, matmul_peak_tflops=peak, matmul_peak_how=how,
        results=results, int8=int8_report,
    )  # fmt: skip


def _check_counts(**counts: int) -> None:
    """UsageError unless every count is at least 1, naming them all."""
    if min(counts.values()) < 1:
        got = ", ".join(f"{name}={value}" for name, value in counts.items())
        raise UsageError(f"{', '.join(counts)} must be >= 1, got {got}")


def _models(
    arch: str,
    target: torch.device,
    dtype: torch.dtype,
    size: tuple[int, int],
    batch_size: int,
    compile: bool,
    torchvision: bool,
    torchvision_compile: bool,
    with_int8: bool,
) -> tuple[dict[str, Callable[[torch.Tensor], torch.Tensor]], torch.Tensor, dict[str, Any] | None]:
    """The candidates `run_bench` times (seeded random weights), their input, and the int8 model's report."""
    if compile:
        # torch.compile keeps at most 8 compiled versions of one function (dynamo's recompile_limit),
        # and every optimized model shares InferenceVGG._logits: after 8 configurations in one process
        # the next would silently run uncompiled. Each bench starts from an empty cache instead.
        torch.compiler.reset()
    torch.manual_seed(0)
    eager = get_model(arch, device=target).eval().to(dtype)
    x = torch.randn(batch_size, eager.in_channels, *size, device=target, dtype=dtype)
    models = _candidates(
        arch, eager, target, dtype, batch_size=batch_size, compile=compile, torchvision=torchvision,
        torchvision_compile=torchvision_compile,
    )  # fmt: skip
    int8_report = None
    if with_int8:
        models[INT8], int8_report = _int8_candidate(eager, size, batch_size)
    return models, x, int8_report


def _settings(
    device: str | torch.device | None, dtype: torch.dtype | None, compile: bool | None
) -> tuple[torch.device, torch.dtype, bool, bool]:
    """`run_bench`'s (device, dtype of the float candidates and the peak, int8 or not, compile), defaults filled in.

    ValueError or RuntimeError for a device that cannot run the dtype; on CUDA, cuDNN's benchmark mode is turned on.
    """
    on_gpu = torch.cuda.is_available() and dtype != torch.int8
    target = torch.device(device if device is not None else ("cuda" if on_gpu else "cpu"))
    if dtype == torch.int8 and target.type != "cpu":
        raise UsageError(f"int8 runs on CPU only (oneDNN's kernels), got device {target}; use --device cpu")
    if target.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {target} asked for, but CUDA is not available; use --device cpu")
    with_int8 = dtype == torch.int8
    # int8: the others and the peak in float32. On CPU float32 unless asked, as --help says, although
    # optimize_for_inference picks bf16 on CPUs with native bf16: every candidate runs in this one dtype.
    fallback = default_dtype(target) if target.type == "cuda" else torch.float32
    dtype = torch.float32 if with_int8 else dtype or fallback
    if target.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels
    return target, dtype, with_int8, compile if compile is not None else target.type == "cuda"


def _candidates(
    arch: str,
    eager: VGG,
    device: torch.device,
    dtype: torch.dtype,
    *,
    batch_size: int,
    compile: bool,
    torchvision: bool,
    torchvision_compile: bool,
) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """`eager` and its optimized copy; with `torchvision`, torchvision's model holding the same weights, as it
    is, channels_last and (with `torchvision_compile`) channels_last compiled."""
    models: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        EAGER: eager,
        "vggnet optimized": optimize_for_inference(eager, dtype=dtype, batch_size=batch_size, compile=compile),
    }
    reference = _torchvision_model(arch) if torchvision else None
    if reference is not None:
        reference.load_state_dict(eager.state_dict())
        reference.eval().to(device, dtype)
        models[BASELINE] = reference
        models["torchvision channels_last"] = _channels_last(reference)
        if torchvision_compile:
            models["torchvision channels_last+compile"] = _channels_last(reference, compile=True)
    return models


def _int8_candidate(eager: VGG, size: tuple[int, int], batch_size: int) -> tuple[Int8VGG, dict[str, Any] | None]:
    """`quantize`d `eager`, calibrated on 8 random images and compared on 8 others; its report as a dict."""
    images = torch.randn(16, eager.in_channels, *size)
    quantized = quantize(eager, images[:8], held_out=images[8:], batch_size=batch_size)
    return quantized, asdict(quantized.report) if quantized.report is not None else None


def _measure(
    models: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
    kernels: Mapping[str, PeakKernel],
    x: torch.Tensor,
    *,
    device: torch.device,
    warmup: int,
    iters: int,
    rounds: int,
) -> tuple[dict[str, float], dict[str, float], dict[str, list[float]]]:
    """(first call's seconds, max |logit difference| from vggnet eager's, seconds per call in each round).

    Each model is called `warmup` times, at least twice (the first call timed), then the models and the peak kernels
    (named `_PEAK` + name) take turns in `time_interleaved`.
    """
    first: dict[str, float] = {}
    diffs: dict[str, float] = {}
    with torch.inference_mode():
        expected = models[EAGER](x).float()
        for name, model in models.items():
            _synchronize(device)
            start = time.perf_counter()
            out = model(x)
            _synchronize(device)
            first[name] = time.perf_counter() - start
            diffs[name] = (out.float() - expected).abs().max().item()
            for _ in range(max(warmup, 2) - 1):  # an optimized model makes its oneDNN Graph program on the 2nd
                model(x)
        calls: dict[str, Callable[[], object]] = {name: partial(model, x) for name, model in models.items()}
        for name, kernel in kernels.items():
            kernel.run()
            calls[_PEAK + name] = kernel.run
        times = time_interleaved(calls, device=device, iters=iters, rounds=rounds)
    return first, diffs, times


def _result(
    name: str, times: list[float], batch_size: int, gflop: float, peak: float, first: float, diff: float
) -> Result:
    median = statistics.median(times)
    tflops = gflop * batch_size / median / 1e3
    return Result(
        name=name,
        img_per_s=batch_size / median,
        latency_ms=median * 1e3,
        latency_ms_min=min(times) * 1e3,
        tflops=tflops,
        peak_fraction=tflops / peak,
        first_call_s=first,
        max_abs_diff=diff,
    )


def _channels_last(model: nn.Module, compile: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """A copy with channels_last weights, fed channels_last input (what a torchvision user can do with flags)."""
    # A copy: converting in place would hand channels_last weights to the NCHW baseline as well.
    converted = copy.deepcopy(model).to(memory_format=torch.channels_last)
    forward: Callable[[torch.Tensor], torch.Tensor] = torch.compile(converted) if compile else converted

    def run(x: torch.Tensor) -> torch.Tensor:
        return forward(x.contiguous(memory_format=torch.channels_last))

    return run


def format_report(report: BenchReport) -> str:
    """A table of the candidates with img/s, latency, speed-up over torchvision eager and peak share.

    Args:
        report: what `run_bench` returned.

    Returns:
        The text `vggnet bench` prints.
    """
    speedups = report.speedups()
    lines = [
        f"{report.arch}, batch {report.batch_size}, {report.image_size[0]}x{report.image_size[1]}, {report.dtype}, "
        f"compile={'on' if report.compile else 'off'} on {report.device} ({report.device_name})",
        f"{report.gflop_per_image:.1f} GFLOP/image; matmul peak {_tflops(report.matmul_peak_tflops)} "
        f"({report.matmul_peak_how}); median of {report.rounds} interleaved rounds, {report.iters} calls each"
        + (f"; load average {', '.join(f'{x:.2f}' for x in report.load_average)}" if report.load_average else "")
        + "".join(f"; {k}={v}" for k, v in report.environment.items()),
        "",
        f"{'':36} {'img/s':>10} {'ms/batch':>10} {'vs tv':>7} {'of peak':>8} {'1st call':>9} {'max|diff|':>10}",
    ]
    for r in report.results:
        speedup = f"{speedups[r.name]:.2f}x" if r.name in speedups else "-"
        lines.append(
            f"{r.name:36} {r.img_per_s:10.2f} {r.latency_ms:10.3f} {speedup:>7} {r.peak_fraction:8.1%} "
            f"{r.first_call_s:8.2f}s {r.max_abs_diff:10.2e}"
        )
    if report.int8 is not None:
        lines += ["", format_int8(report.int8)]
    return "\n".join(lines)


def format_int8(q: Mapping[str, Any]) -> str:
    """One paragraph from a QuantizeReport dict: what ran, how close to float32, what it cost.

    Args:
        q: a `QuantizeReport` as a dict (`BenchReport.int8`).

    Returns:
        One line of text.
    """
    if not q["int8"]:
        return f"vggnet int8: float32 fallback: {q['fallback_reason']}"
    accuracy = (
        f"; accuracy {q['accuracy_int8']:.2f}% (float32 {q['accuracy_fp32']:.2f}%)"
        if q["accuracy_int8"] is not None
        else ""
    )
    return (
        f"vggnet int8 on {q['instructions']}{' (7-bit activations)' if q['reduce_range'] else ''}, calibrated on "
        f"{q['calibration_images']} images: top-1 agreement with float32 {q['top1_agreement']:.2f}%, logit cosine "
        f"{q['cosine']:.5f} (min {q['min_cosine']:.5f}) on {q['evaluated_images']} {q['evaluated_on']} images"
        f"{accuracy}; quantize {q['quantize_s']:.1f} s, first call {q['compile_s']:.1f} s"
    )


def _tflops(value: float) -> str:
    return f"{value:.1f} TFLOP/s" if value >= 1 else f"{value * 1e3:.0f} GFLOP/s"
