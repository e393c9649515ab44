"""Static int8 on CPUs: calibrated, checked against float32, run as oneDNN calls; float32 without int8 kernels.

`vggnet.deploy.quantize.quantize(model, calibration)` runs PyTorch's PT2E flow with torchao's x86 Inductor quantizer
(`pip install "vggnet[int8]"`), then lowers the converted graph to oneDNN's int8 operators itself:

    torch.export -> prepare_pt2e(X86InductorQuantizer) -> calibrate -> convert_pt2e -> vggnet.deploy.onednn.lower

Every convolution and fully connected layer becomes oneDNN's int8 kernel: weights int8 per output
channel (symmetric), activations uint8 per tensor with ranges observed on the calibration images
(histogram observer). The weights are packed for oneDNN once per batch size (without packing, the same
graph ran slower than float32: issue 16). The calls and packed weights are the ones Inductor's int8
lowering (`torch.compile` with freezing) produces, and so are the logits, bit for bit with 8-bit
activations (with 7 bits the lowering keeps the converted graph's clamp, which Inductor drops); but nothing is
compiled, so a model is ready in the time packing takes instead of seconds to minutes of compilation in
every process, with nothing cached on disk (issue 27).

The int8 kernels are fastest on CPUs with int8 dot-product instructions (AMX, AVX-512 VNNI,
AVX-VNNI: `int8_instructions`). On AVX2 without them oneDNN multiplies through 16-bit intermediate
sums, which can saturate, so activations get 7 bits there (torchao's `reduce_range`); measured on a shared
2-core AVX2 EPYC, it still ran vgg16 at batch 1 1.8x faster than the float32 optimized path
(benchmarks/README.md), so it is used there too. Where oneDNN has no int8 kernels worth running (not
an x86 CPU, or no AVX2), `quantize` returns the float32 `optimize_for_inference` model, with the
reason in `fallback_reason` and a logged warning; `fallback=False` raises instead.

The result carries a `QuantizeReport`: top-1 agreement and logit cosine with the float32 model,
accuracy of both when the evaluation images have labels, calibration size, time to quantize and the
time of the first call (which packs the weights for its batch size).
"""

from __future__ import annotations

import copy
import importlib
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vggnet import settings
from vggnet.checks import check_int
from vggnet.data.decode import load_image
from vggnet.data.images import IMAGE_SUFFIXES, ImageFolder
from vggnet.data.transforms import ImageClassification
from vggnet.deploy.inference import keep_activations_on_heap, mark_non_finite, optimize_for_inference
from vggnet.deploy.onednn import Int8Program
from vggnet.deploy.packed import PackedModel
from vggnet.errors import MissingDependency, NoImages, UnsupportedError, UsageError, UsageTypeError
from vggnet.models.config import MIN_SIZE
from vggnet.models.saved import preset_of
from vggnet.models.vgg import VGG, check_images

__all__ = [
    "GRAPH_BATCHES", "INT8_INSTRUCTIONS", "Calibration", "Int8VGG", "QuantizeReport", "int8_instructions", "quantize",
]  # fmt: skip

logger = logging.getLogger(__name__)

# torch.cpu.get_capabilities() names of what oneDNN's int8 kernels run on, fastest first; all but
# avx2 have int8 dot products.
INT8_INSTRUCTIONS = ("amx_int8", "avx512_vnni", "avx_vnni", "avx2")
# The batch sizes the int8 weights are packed for (powers of two, largest first): see _graph_batches.
GRAPH_BATCHES = (8, 4, 2, 1)
_X86 = ("x86_64", "amd64", "i386", "i686")
# oneDNN's ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA) caps -> the fastest of INT8_INSTRUCTIONS each allows
# (None: no int8 kernels worth running); the AMX caps, "all" and values not listed here cap nothing.
_ISA_CAPS: dict[str, str | None] = {
    "sse41": None, "avx": None, "avx2": "avx2", "avx512_core": "avx2",
    "avx2_vnni": "avx_vnni", "avx2_vnni_2": "avx_vnni",
    "avx512_core_vnni": "avx512_vnni", "avx512_core_bf16": "avx512_vnni", "avx512_core_fp16": "avx512_vnni",
    "avx10_1_512": "avx512_vnni",
}  # fmt: skip

# Images: an (N, C, H, W) tensor; batches: tensors or (images, labels) pairs (a DataLoader); or a folder.
Calibration = (
    torch.Tensor
    | Iterable[torch.Tensor | tuple[torch.Tensor, torch.Tensor] | list[torch.Tensor]]
    | str
    | os.PathLike[str]
)
_Batch = tuple[torch.Tensor, torch.Tensor | None]  # (images, labels or None)


def int8_instructions() -> str | None:
    """What oneDNN's int8 kernels run on here.

    A cap set in ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA) is honoured, as oneDNN honours it.

    Returns:
        The fastest of "amx_int8", "avx512_vnni", "avx_vnni" (int8 dot products) and "avx2" (16-bit
        sums) this CPU has; None where there is none of them (not x86, or no AVX2): no int8 then.
    """
    if platform.machine().lower() not in _X86:
        return None
    cap = settings.onednn_isa_cap()
    fastest = _ISA_CAPS[cap] if cap in _ISA_CAPS else INT8_INSTRUCTIONS[0]
    if fastest is None:
        return None
    capabilities = torch.cpu.get_capabilities()
    allowed = INT8_INSTRUCTIONS[INT8_INSTRUCTIONS.index(fastest) :]
    return next((name for name in allowed if capabilities.get(name)), None)


@dataclass(frozen=True)
class QuantizeReport:
    """What `quantize` did and how close int8 stays to float32 (percentages in 0-100).

    Attributes:
        int8: False where the float32 fallback runs (see `fallback_reason`).
        fallback_reason: why int8 does not run here, or None.
        instructions: `int8_instructions()` of this CPU.
        cpu_capability: torch's ATen kernels: "AVX2", "AVX512", ...
        reduce_range: 7-bit activations, for CPUs without int8 dot products (their 16-bit sums saturate).
        calibration_images: how many images calibrated the ranges.
        image_size: (height, width): the int8 model takes this size only.
        batch_size: the batch the weights were packed for first; pieces of other sizes pack theirs on first use.
        evaluated_on: "held_out", or "calibration" (no held-out set given: a weaker check).
        evaluated_images: how many images the figures below come from.
        top1_agreement: % of the evaluated images whose int8 top-1 class is float32's.
        cosine: mean cosine similarity of the int8 and float32 logits.
        min_cosine: the worst image's.
        accuracy_fp32: % top-1 against the labels, where the evaluation images have them.
        accuracy_int8: the same for int8.
        quantize_s: seconds of export, calibration and conversion.
        compile_s: seconds of the first call, which lowers the graph to oneDNN calls, packs the weights for
            its batch size and writes the program out as a TorchScript function, checked against the graph
            (Inductor compiles nothing: see the module's docstring).
    """

    int8: bool  # False: the float32 fallback runs (see fallback_reason)
    fallback_reason: str | None
    instructions: str | None  # int8_instructions() of this CPU
    cpu_capability: str  # torch's ATen kernels: "AVX2", "AVX512", ...
    reduce_range: bool  # 7-bit activations, for CPUs without int8 dot products (their 16-bit sums saturate)
    calibration_images: int
    image_size: tuple[int, int]  # (height, width): the int8 model takes this size only
    batch_size: int  # the batch packed first; the weights for pieces of 1, 2, 4 and 8 images are packed on first use
    evaluated_on: str  # "held_out" or "calibration" (no held-out set given: a weaker check)
    evaluated_images: int
    top1_agreement: float  # % of the evaluated images whose int8 top-1 class is float32's
    cosine: float  # mean cosine similarity of the int8 and float32 logits
    min_cosine: float  # the worst image's
    accuracy_fp32: float | None  # % top-1 against the labels, where the evaluation images have them
    accuracy_int8: float | None
    quantize_s: float  # export, calibration and conversion
    compile_s: float  # the first call: the graph lowered and the weights packed for its batch size


class Int8VGG(PackedModel):
    """A quantized (or, on fallback, float32-optimized) VGG for inference on CPU; `report` says which and how close.

    Takes float images of the calibration size (`report.image_size`) on any device; returns float32
    logits on the CPU. Built by `quantize`. Its weights are packed: converting it (`.half()`, `.to(...)`),
    loading a state dict into it or pickling it is refused with the fix (`vggnet.deploy.packed`);
    `copy.deepcopy` works.

    Args:
        program: the int8 program (`vggnet.deploy.onednn.Int8Program`), or the float32 `InferenceVGG` of a fallback.
        in_channels: the channels the input images have.
        int8: whether `program` is int8 (False: the float32 fallback).
    """

    def __init__(self, program: nn.Module, *, in_channels: int, int8: bool) -> None:
        super().__init__()
        self.program = program  # the Int8Program, or the float32 InferenceVGG
        self.in_channels = in_channels
        self.int8 = int8
        self.fallback_reason: str | None = None
        self.report: QuantizeReport | None = None  # set by quantize
        self.image_size: tuple[int, int] | None = None

    remake = "quantize the VGG again (vggnet.deploy.quantize.quantize(model, calibration))"

    def prepared_for(self) -> str:
        """What the weights were packed for.

        Returns:
            "the CPU, in int8", or in float32 where the model fell back.
        """
        return "the CPU, in int8" if self.int8 else "the CPU, in float32 (the fallback)"

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse what the model cannot take, with the fix.

        Args:
            x: a batch of images, (N, C, H, W).

        Raises:
            UsageError: not a batch of floating-point images, or (int8) not of the calibration size.
        """
        check_images(x, self.in_channels)
        if not x.is_floating_point():
            raise UsageError(
                f"VGG expects normalised floating-point images, got dtype {x.dtype}; "
                "convert with the weights' transforms() (e.g. vggnet.VGG16_Weights.DEFAULT.transforms())"
            )
        if self.int8 and self.image_size is not None and tuple(x.shape[-2:]) != self.image_size:
            h, w = self.image_size
            raise UsageError(
                f"this int8 model was exported for {h}x{w} images, got {x.shape[-2]}x{x.shape[-1]}; "
                f"resize to {h}x{w} (the calibration preset does), or quantize again with images of this size"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of a batch of normalised images.

        Args:
            x: (N, C, H, W) floating-point images of the calibration size, on any device.

        Returns:
            (N, num_classes) float32 logits on the CPU; NaN throughout the row of an image that holds a
            NaN or an infinity (quantizing would turn it into numbers).

        Raises:
            UsageError: `x` is not a batch the model takes (see `check_input`).
        """
        self.check_input(x)
        keep_activations_on_heap()
        with torch.inference_mode():
            x = _program_input(x)
            if not self.int8:
                out: torch.Tensor = self.program(x)
            else:  # an empty batch runs as it is
                pieces = _graph_batches(len(x)) or [(0, 0)]
                out = mark_non_finite(x, torch.cat([self.program(x[i:j]) for i, j in pieces]))
        return out.float()

    def extra_repr(self) -> str:
        return f"int8={self.int8}, image_size={self.image_size}, fallback_reason={self.fallback_reason!r}"


def _program_input(x: torch.Tensor) -> torch.Tensor:
    """`x` as float32 on the CPU (itself where it is that already: the program's first step copies it)."""
    return x.to(device="cpu", dtype=torch.float32)


def _graph_batches(n: int) -> list[tuple[int, int]]:
    """(start, stop) of the pieces a batch of `n` runs in: runs of GRAPH_BATCHES[0] images, then the rest in
    binary (7 = 4 + 2 + 1), so the weights are packed for at most len(GRAPH_BATCHES) batch sizes and no image
    is padded.

    Packed per batch size, not once for any: weights packed for no batch in particular (Inductor's
    dynamic-batch graph did that) were reordered by oneDNN on every call, conv5-conv13's, and the rest
    ran 3x slower (vgg16, batch 8, AMX: 347 ms a call against 64 ms).
    """
    sizes = [GRAPH_BATCHES[0]] * (n // GRAPH_BATCHES[0])
    rest = n % GRAPH_BATCHES[0]
    sizes += [size for size in GRAPH_BATCHES[1:] if rest & size]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [(start, start + size) for start, size in zip(starts, sizes, strict=True)]


def quantize(
    model: VGG,
    calibration: Calibration,
    *,
    held_out: Calibration | None = None,
    preset: nn.Module | None = None,
    batch_size: int = 1,
    calibration_batch_size: int = 32,
    fallback: bool = True,
    reduce_range: bool | None = None,
) -> Int8VGG:
    """An int8 copy of `model` for CPU inference, calibrated on `calibration` and checked against float32.

    `model` is untouched. Needs torchao (`pip install "vggnet[int8]"`).

    Args:
        model: a vggnet VGG.
        calibration: a few hundred images like the ones the model will see: an (N, C, H, W) tensor of
            preprocessed images, an iterable of such batches (or of (images, labels) pairs, e.g. a
            DataLoader), or a folder of image files (flat, or one sub-folder per class in the model's
            class order, whose labels give accuracies) read with `preset`.
        held_out: the same kinds, images not used for calibration, on which the report's agreement and
            accuracy are measured (default: the calibration images, a weaker check).
        preset: for folders (default: the model's own, `model.pretrained_cfg`'s: a vggnet checkpoint's
            preset for a model built from one, else ImageNet's evaluation preset).
        batch_size: the batch the weights are packed for first. Any batch size runs, in pieces of 8, 4,
            2 and 1 images (`GRAPH_BATCHES`), the weights packed for each piece size once, on first use.
        calibration_batch_size: the batch calibration and evaluation images are fed in.
        fallback: where `int8_instructions()` is None (no int8 kernels worth running), return the
            float32 `optimize_for_inference` model with `fallback_reason` set and a warning; False raises.
        reduce_range: 7-bit activations (default: on where the CPU has no int8 dot products, "avx2").

    Returns:
        The `Int8VGG`, its `report` filled in.

    Raises:
        UsageTypeError: `model` is not a vggnet VGG, or `calibration` is of a kind not listed above.
        UsageError: a bad batch size, or no calibration images.
        NoImages: a calibration folder that is missing or holds no images.
        MissingDependency: torchao is not installed.
        UnsupportedError: no int8 kernels here and `fallback=False`.
    """
    if not isinstance(model, VGG):
        raise UsageTypeError(f"quantize expects a vggnet VGG, got {type(model).__name__}")
    check_int("batch_size", batch_size)
    check_int("calibration_batch_size", calibration_batch_size)
    instructions = int8_instructions()
    capability = torch.backends.cpu.get_cpu_capability()
    reduce_range = instructions not in INT8_INSTRUCTIONS[:3] if reduce_range is None else reduce_range
    reference = _cpu_float32_eval(model)
    preset = preset if preset is not None else preset_of(model)
    calib = list(_batches(calibration, preset, calibration_batch_size, model.in_channels))
    evaluation = calib
    if held_out is not None:
        evaluation = list(_batches(held_out, preset, calibration_batch_size, model.in_channels))
    image_size = (int(calib[0][0].shape[-2]), int(calib[0][0].shape[-1]))
    reason = _unsupported_reason(instructions, capability)
    if reason is not None and not fallback:
        raise UnsupportedError(f"cannot quantize to int8 here: {reason}")
    if reason is not None:
        result, quantize_s = _float32_fallback(model, reason, batch_size), 0.0
    else:
        result, quantize_s = _int8_model(reference, calib, instructions, reduce_range)
        result.image_size = image_size
    compile_s, figures = _compare(reference, result, evaluation, batch_size)
    result.report = QuantizeReport(
        int8=result.int8, fallback_reason=result.fallback_reason, instructions=instructions, cpu_capability=capability,
        reduce_range=reduce_range, calibration_images=sum(len(x) for x, _ in calib), image_size=image_size,
        batch_size=batch_size, evaluated_on="held_out" if held_out is not None else "calibration",
        quantize_s=quantize_s, compile_s=compile_s, **figures,
    )  # fmt: skip
    logger.info("quantize: %s", result.report)
    return result


def _int8_model(
    reference: VGG, calib: list[_Batch], instructions: str | None, reduce_range: bool
) -> tuple[Int8VGG, float]:
    """`reference` (eval mode, float32, CPU) quantized on `calib`, and the seconds quantizing took."""
    if instructions == "avx2":
        logger.info("no int8 dot-product instructions on this CPU: int8 runs on AVX2 with 7-bit activations")
    start = time.perf_counter()
    program = _quantized_program(reference, calib, reduce_range)
    quantize_s = time.perf_counter() - start
    return Int8VGG(program, in_channels=reference.in_channels, int8=True), quantize_s


def _float32_fallback(model: VGG, reason: str, batch_size: int) -> Int8VGG:
    """The float32 `optimize_for_inference` model in an Int8VGG that says why int8 does not run here."""
    logger.warning("int8 falls back to float32: %s", reason)
    fp32 = optimize_for_inference(model, device="cpu", dtype=torch.float32, batch_size=batch_size)
    result = Int8VGG(fp32, in_channels=model.in_channels, int8=False)
    result.fallback_reason = reason
    return result


def _cpu_float32_eval(model: VGG) -> VGG:
    """`model` itself when it is an eval-mode float32 CPU model already, else such a copy (`model` stays as it is)."""
    param = next(model.parameters())
    if not model.training and param.device.type == "cpu" and param.dtype == torch.float32:
        return model
    return copy.deepcopy(model).eval().to("cpu", torch.float32)


def _unsupported_reason(instructions: str | None, capability: str) -> str | None:
    if instructions is not None:
        return None
    return (
        f"oneDNN has no fast int8 kernels for this CPU ({platform.machine()}, torch's kernels: {capability}; "
        "they need x86 with AVX2, AVX-VNNI, AVX-512 VNNI or AMX); the float32 optimize_for_inference model runs instead"
    )


def _torchao() -> tuple[Any, Any]:
    """torchao's PT2E entry points and x86 quantizer module; importing the latter registers Inductor's
    int8 fusion passes (a process-wide setting: `torch._inductor.config.pre_grad_custom_pass`)."""
    try:
        pt2e = importlib.import_module("torchao.quantization.pt2e.quantize_pt2e")
        x86 = importlib.import_module("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")
    except ImportError as err:
        raise MissingDependency(
            f"int8 needs torchao ({err}); install it with: pip install 'vggnet[int8]' (or pip install torchao)"
        ) from err
    return pt2e, x86


def _quantized_program(model: VGG, calib: list[_Batch], reduce_range: bool) -> Int8Program:
    """export -> prepare -> calibrate -> convert, run as oneDNN calls (packed on each batch size's first call)."""
    pt2e, x86 = _torchao()
    example = calib[0][0][:1].float()
    # Exported with a batch of 2 and a dynamic batch dimension, so calibration takes any batch size
    # (an example batch of 1 would be specialised to 1).
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        with torch.no_grad():
            exported = torch.export.export(
                model, (example.expand(2, -1, -1, -1).contiguous(),), dynamic_shapes=({0: batch},)
            ).module()
            quantizer = x86.X86InductorQuantizer().set_global(
                x86.get_default_x86_inductor_quantization_config(reduce_range=reduce_range)
            )
            prepared = pt2e.prepare_pt2e(exported, quantizer)
            for x, _ in calib:
                prepared(x.float().cpu())
            converted: torch.fx.GraphModule = pt2e.convert_pt2e(prepared)
    finally:
        _forget_graphs()  # on failure too: the graphs hold the float32 weights
    _drop_unused_attributes(converted)
    return Int8Program(converted)


# functools.cache'd on the module they are given (torchao 0.18, torch 2.14): each holds every graph the
# quantization passes showed it, the float32 weights included, for the life of the process.
_GRAPH_CACHES = (
    ("torchao.utils", "_assert_and_get_unique_device"),
    ("torch.ao.quantization.fx.utils", "assert_and_get_unique_device"),
)


def _forget_graphs() -> None:
    """Empty the caches in _GRAPH_CACHES, so that the float32 model and the graphs built from it can be freed."""
    for module, name in _GRAPH_CACHES:
        clear = getattr(getattr(sys.modules.get(module), name, None), "cache_clear", None)
        if clear is not None:
            clear()


def _drop_unused_attributes(graph: torch.fx.GraphModule) -> None:
    """Delete the float32 weights the converted graph no longer reads (it reads their int8 copies)."""
    used = {node.target for node in graph.graph.nodes if node.op == "get_attr"}
    for name, _ in list(graph.named_parameters()) + list(graph.named_buffers()):
        if name in used:
            continue
        owner, _, attr = name.rpartition(".")
        module = graph.get_submodule(owner) if owner else graph
        delattr(module, attr)


def _compare(
    reference: VGG, candidate: Int8VGG, batches: list[_Batch], batch_size: int
) -> tuple[float, dict[str, Any]]:
    """(seconds of the first call, the agreement figures of QuantizeReport) on `batches`, in chunks of `batch_size`."""
    images = torch.cat([x for x, _ in batches])
    labels = [y for _, y in batches if y is not None]
    target = torch.cat(labels) if len(labels) == len(batches) else None
    with torch.inference_mode():
        expected = torch.cat([reference(chunk.float()) for chunk in _chunks(images, 32)]).float()
        outs = []
        compile_s = math.nan
        for chunk in _chunks(images, batch_size):
            n = len(chunk)
            if n < batch_size:  # padded to the packed batch rather than packing for a new one
                chunk = torch.cat([chunk, chunk[-1:].expand(batch_size - n, -1, -1, -1)])
            start = time.perf_counter()
            outs.append(candidate(chunk)[:n])
            if math.isnan(compile_s):
                compile_s = time.perf_counter() - start
    got = torch.cat(outs)
    cosine = F.cosine_similarity(got, expected, dim=1)
    figures: dict[str, Any] = {
        "evaluated_images": len(images),
        "top1_agreement": 100.0 * (got.argmax(1) == expected.argmax(1)).float().mean().item(),
        "cosine": cosine.mean().item(),
        "min_cosine": cosine.min().item(),
        "accuracy_fp32": None,
        "accuracy_int8": None,
    }
    if target is not None:
        figures["accuracy_fp32"] = 100.0 * (expected.argmax(1) == target).float().mean().item()
        figures["accuracy_int8"] = 100.0 * (got.argmax(1) == target).float().mean().item()
    return compile_s, figures


def _chunks(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [x[i : i + size] for i in range(0, len(x), size)]


# --- calibration and evaluation images --------------------------------------------------------------


def _batches(source: Calibration, preset: nn.Module | None, batch_size: int, in_channels: int) -> Iterator[_Batch]:
    """`source` as (images, labels or None) batches, each images tensor checked."""
    found = False
    for x, y in _raw_batches(source, preset, batch_size):
        check_images(x, in_channels, who="quantize's calibration")
        if min(x.shape[-2:]) < MIN_SIZE or not x.is_floating_point():
            raise UsageError(
                f"calibration images must be preprocessed float images of at least {MIN_SIZE}x{MIN_SIZE} "
                f"pixels, got dtype {x.dtype} and shape {tuple(x.shape)}; apply the weights' transforms() first"
            )
        found = True
        yield x.detach().float().cpu(), (None if y is None else y.cpu())
    if not found:
        raise UsageError("no calibration images: give a few hundred images like those the model will see")


def _raw_batches(source: Calibration, preset: nn.Module | None, batch_size: int) -> Iterator[_Batch]:
    if isinstance(source, (str, os.PathLike)):
        yield from _folder(Path(source), preset or ImageClassification(crop_size=224), batch_size)
    elif isinstance(source, torch.Tensor):
        for x in _chunks(source, batch_size):
            yield x, None
    elif isinstance(source, Iterable):
        for item in source:
            if isinstance(item, torch.Tensor):
                yield item, None
            elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], torch.Tensor):
                yield item[0], torch.as_tensor(item[1])
            else:
                raise UsageTypeError(
                    f"calibration batches must be image tensors or (images, labels) pairs, got {type(item).__name__}"
                )
    else:
        raise UsageTypeError(
            "calibration must be an (N, C, H, W) tensor, an iterable of batches or a folder, "
            f"got {type(source).__name__}"
        )


def _folder(root: Path, preset: nn.Module, batch_size: int) -> Iterator[_Batch]:
    """A folder's images: with one sub-folder per class (sorted names = class indices) also their labels."""
    if not root.is_dir():
        raise NoImages(f"{root}: no such folder of calibration images")
    if any(p.is_dir() for p in root.iterdir()):
        dataset = ImageFolder(root, preset)
        items = [dataset[i] for i in range(len(dataset))]
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            yield torch.stack([x for x, _ in chunk]), torch.tensor([y for _, y in chunk])
        return
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise NoImages(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    for start in range(0, len(files), batch_size):
        yield torch.stack([preset(load_image(p)) for p in files[start : start + batch_size]]), None
