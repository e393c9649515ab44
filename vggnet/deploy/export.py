"""Deployment artifacts that run without vggnet: ONNX, a torch.export program (pt2), AOTInductor, TorchScript.

- "onnx": `torch.onnx.export(dynamo=True)` of the `torch.export` program (torch's default opset: 20
  with torch 2.14), one self-contained file (weights inside; every VGG is below protobuf's 2 GB), the
  input named "images" and the output "logits". The batch dimension is dynamic by default; with
  `dynamic_size=True` height and width are too, from 64 px (`torch.export` specialises a 1x1 pool5
  map): the adaptive pool is then replaced by `AdaptivePoolByMatmul`, right for every size.
- "pt2": a `torch.export` program saved with `torch.export.save`, with the same dynamic dimensions;
  `torch.export.load(path).module()` runs it.
- "torchscript": `torch.jit.script` of the model, `torch.jit.load(path)` runs it. Where the model does
  not script, `torch.jit.trace` at the example size is used instead (and logged).
- "aoti": the pt2 program compiled ahead of time by AOTInductor into a package of native code for this
  machine's CPU (`torch._inductor.aoti_compile_and_package`; needs a C++ compiler; minutes on a small
  CPU), run with `torch._inductor.aoti_load_package(path)`.

`include_preset=True` puts the evaluation preset inside the graph (`WithPreset`): the artifact then
takes uint8 images (N, 3, H, W), resizes the shorter side (bilinear, antialiased), center-crops,
normalizes and classifies, in tensor operations only.

The artifact is written as a checkpoint is (`vggnet.data.outputs.atomic_write`): a temporary file
beside OUT, fsynced, renamed over OUT; a folder or a link at OUT is refused, never written through.
The shapes are checked (`check_shapes`) before anything is traced, and what the exporters raise is
one line naming OUT (`UnsupportedError`).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vggnet.checks import check_int
from vggnet.data.constants import IMAGENET_MEAN, IMAGENET_STD
from vggnet.data.outputs import atomic_write, check_output
from vggnet.deploy.packed import PackedModel
from vggnet.errors import MissingDependency, UnsupportedError, UsageError, UsageTypeError, VggnetError
from vggnet.models.config import IN_CHANNELS, MIN_SIZE

__all__ = [
    "EXPORT_FORMATS",
    "WithPreset",
    "check_export",
    "check_shapes",
    "example_images",
    "export",
    "run_export",
    "with_preset",
]

logger = logging.getLogger(__name__)

ExportFormat = Literal["onnx", "pt2", "torchscript", "aoti"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("onnx", "pt2", "torchscript", "aoti")
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
_MAX_SIDE = 8192  # the upper bound given to the exporter for a dynamic height or width
_MAX_BATCH = 4096
# torch.export specialises a 1x1 pool5 map (the adaptive pool broadcasts it): a dynamic side starts at 64 px.
_MIN_DYNAMIC_SIDE = 2 * MIN_SIZE


class WithPreset(nn.Module):
    """A classifier taking uint8 images (N, 3, H, W): resize, center crop and normalize in the graph, then `model`.

    Pixel for pixel what `ImageClassification` does to a uint8 tensor (bilinear antialiased resize of the
    shorter side to `resize_size`, rounded back to 0-255, center crop, scale, normalize), so eager outputs
    equal `model(preset(images))` exactly. Float input is taken as 0-1 and not rounded.

    Args:
        model: the classifier that takes the normalised crops.
        crop_size: the side of the centre crop, in pixels.
        resize_size: the shorter side after the resize, before the crop.
        mean: the per-channel mean subtracted (0-1 scale).
        std: the per-channel standard deviation divided by (0-1 scale).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        model: nn.Module,
        *,
        crop_size: int = 224,
        resize_size: int = 256,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.model = model
        self.crop_size = crop_size
        self.resize_size = resize_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`model`'s output for images preprocessed in the graph.

        Args:
            images: (N, 3, H, W) uint8 pixels, or floats in 0-1, of any size.

        Returns:
            What `model` returns for the preprocessed crops.
        """
        integer = not images.is_floating_point()
        x = images.to(torch.float32)
        height, width = x.shape[-2], x.shape[-1]
        short = torch.sym_min(height, width)
        # torchvision's sizes in integer arithmetic, so that an exporter keeps them symbolic: the shorter side
        # becomes resize_size, the longer int(resize_size * long / short), which is this floor division.
        size: Any = ((self.resize_size * height) // short, (self.resize_size * width) // short)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        if integer:
            x = torch.round(x).clamp(0, 255) / 255
        top, left = _crop_start(size[0], self.crop_size), _crop_start(size[1], self.crop_size)
        x = x[:, :, top : top + self.crop_size, left : left + self.crop_size]
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        dtype = next(self.model.parameters()).dtype
        out: torch.Tensor = self.model(x.to(dtype))
        return out


class AdaptivePoolByMatmul(nn.Module):
    """`AdaptiveAvgPool2d(out)` as two matrix products with averaging matrices built from the input's size.

    Window i of a side of length n covers [floor(i*n/out), ceil((i+1)*n/out)), as in PyTorch's kernel. Built
    from `arange` and comparisons, the graph holds no branch on the size, so one exported graph is right
    for every size. (The exporters' own decomposition of the adaptive pool branches on the example's size:
    the ONNX graph it gave was wrong for pool5 maps larger than 7 and not multiples of 7, such as 9x9.)
    """

    def __init__(self, output_size: int) -> None:
        super().__init__()
        self.output_size = output_size

    def _matrix(self, n: Any, like: torch.Tensor) -> torch.Tensor:
        out = self.output_size
        i = torch.arange(out, device=like.device).unsqueeze(1)  # (out, 1)
        j = torch.arange(n, device=like.device).unsqueeze(0)  # (1, n)
        start = (i * n) // out
        end = ((i + 1) * n + out - 1) // out
        inside = (j >= start) & (j < end)
        matrix: torch.Tensor = inside.to(like.dtype) / (end - start).to(like.dtype)  # (out, n), rows summing to 1
        return matrix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.output_size == 1:  # the gap head's global pool: a mean (the matrices put a modulo guard on the size)
            return x.mean(dim=(-2, -1), keepdim=True)
        rows = self._matrix(x.shape[-2], x)  # (7, H)
        cols = self._matrix(x.shape[-1], x)  # (7, W)
        pooled: torch.Tensor = rows @ x @ cols.t()  # (N, C, H, W) -> (N, C, 7, 7)
        return pooled


def with_preset(model: nn.Module, preset: Any = None) -> WithPreset:
    """`model` behind its preprocessing, for an artifact that takes uint8 images.

    Args:
        model: the classifier.
        preset: an `ImageClassification` whose sizes, mean and std are used (None: ImageNet's).

    Returns:
        The `WithPreset` module, in eval mode.
    """
    settings = {} if preset is None else {k: getattr(preset, k) for k in ("crop_size", "resize_size", "mean", "std")}
    return WithPreset(model, **settings).eval()


def _side(output_size: Any) -> int:
    """The side of a square adaptive pool's output; the matmul pool is square."""
    sides = [output_size, output_size] if isinstance(output_size, int) else list(output_size)
    if sides[0] is None or sides[0] != sides[-1]:
        raise UnsupportedError(f"dynamic_size needs a square adaptive pool, the model has output size {output_size}")
    return int(sides[0])


def _crop_start(side: Any, crop: int) -> Any:
    """int(round((side - crop) / 2)) as torchvision computes it (round half to even), in integer arithmetic."""
    d = side - crop
    half = d // 2
    return half + (d % 2) * (half % 2)


def export(
    model: nn.Module,
    out: str | os.PathLike[str],
    fmt: ExportFormat = "onnx",
    *,
    dynamic_batch: bool = True,
    dynamic_size: bool = False,
    image_size: int = 224,
    batch_size: int = 1,
    dtype: torch.dtype = torch.float32,
    include_preset: bool = False,
    preset: Any = None,
) -> Path:
    """Write `model` (a VGG, in eval mode; it is not modified) as an ONNX file, a pt2 program or TorchScript.

    The file is written whole or not at all (a temporary file renamed into place).

    Args:
        model: the VGG (or any image classifier) to export; copied, moved to the CPU and `dtype`.
        out: the file to write.
        fmt: "onnx", "pt2" (torch.export), "torchscript" or "aoti" (an AOTInductor package).
        dynamic_batch: the artifact takes any batch size (else `batch_size` only).
        dynamic_size: the artifact takes any image size (else `image_size` only).
        image_size: the side of the example input, the fixed size unless `dynamic_size`.
        batch_size: the fixed batch without `dynamic_batch`.
        dtype: the floating dtype of the weights and inputs.
        include_preset: the artifact takes uint8 images of any size and preprocesses them itself.
        preset: with `include_preset`, an `ImageClassification` giving the crop and resize sizes, mean
            and std (default: the ImageNet preset).

    Returns:
        `out`, as a Path.

    Raises:
        UsageError: a bad format, size, batch or dtype, or a model without weights (meta device).
        OutputPathError: `out` is a folder, a symbolic link or not a regular file.
        UnsupportedError: the exporter failed (its first line is in the message; nothing was written).
    """
    _check_arguments(
        model, fmt, image_size=image_size, batch_size=batch_size, dtype=dtype, include_preset=include_preset
    )
    check_shapes(dynamic_batch=dynamic_batch, dynamic_size=dynamic_size, image_size=image_size, batch_size=batch_size)
    out = check_output(out)
    net: nn.Module = copy.deepcopy(model).to(device="cpu", dtype=dtype).eval()
    net.requires_grad_(False)
    pool = getattr(net, "avgpool", None)
    if dynamic_size and isinstance(pool, nn.AdaptiveAvgPool2d):
        net.avgpool = AdaptivePoolByMatmul(_side(pool.output_size))  # 7 for the vgg head, 1 for the gap head
    batch = 2 if dynamic_batch else batch_size  # an example batch of 1 would be specialised to 1
    if include_preset:
        net = with_preset(net, preset)
    example = example_images(batch, image_size, include_preset=include_preset, dtype=dtype)
    with atomic_write(out) as f, _one_line(f"could not export the model to {out} ({fmt}; nothing was written)"):
        if fmt == "torchscript":
            torch.jit.save(_torchscript(net, example), f)
        else:
            dims = _dynamic_dims(dynamic_batch, dynamic_size)
            _save_program(torch.export.export(net, (example,), dynamic_shapes=dims, strict=False), fmt, f)
    return out


def check_shapes(*, dynamic_batch: bool, dynamic_size: bool, image_size: int, batch_size: int) -> None:
    """UsageError for an example input the exporter cannot take, before anything is traced.

    Args:
        dynamic_batch: the batch dimension is dynamic (1 to 4096); the example then has 2 images.
        dynamic_size: height and width are dynamic, from 64 to 8192 px.
        image_size: the example's side (with `dynamic_size`, inside the dynamic range).
        batch_size: the fixed batch without `dynamic_batch` (at most 4096).

    Raises:
        UsageError: naming the bound and the fix.
    """
    if dynamic_size and not _MIN_DYNAMIC_SIDE <= image_size <= _MAX_SIDE:
        raise UsageError(
            f"with a dynamic size the example's side (image_size, --image-size) must be from {_MIN_DYNAMIC_SIDE} "
            f"to {_MAX_SIDE} px (torch.export fixes a 1x1 pool5 map below {_MIN_DYNAMIC_SIDE}), got {image_size}; "
            f"pass an image_size from {_MIN_DYNAMIC_SIDE}, or export a fixed size without dynamic_size"
        )
    if not dynamic_batch:
        check_int("batch_size", batch_size, most=_MAX_BATCH, fix="or export a dynamic batch")


@contextlib.contextmanager
def _one_line(what: str) -> Iterator[None]:
    """An exporter's failure (often a page of trace) as one UnsupportedError line: `what`, then its first line."""
    try:
        yield
    except (VggnetError, OSError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as err:  # torch.export, onnx and inductor raise many types, with many lines
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
        raise UnsupportedError(f"{what}: {type(err).__name__}: {first[:300]}") from err


def _check_arguments(
    model: nn.Module, fmt: str, *, image_size: int, batch_size: int, dtype: torch.dtype, include_preset: bool
) -> None:
    """ValueError naming the fix for arguments `export` cannot write, before anything is copied or traced."""
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; valid: {', '.join(EXPORT_FORMATS)}")
    check_int("batch_size", batch_size)
    if image_size < MIN_SIZE:
        raise UsageError(f"image_size must be at least {MIN_SIZE} (five 2x2 max-pools), got {image_size}")
    if not dtype.is_floating_point:
        raise UsageError(f"dtype must be a floating-point dtype (torch.float32, float16, bfloat16), got {dtype}")
    if include_preset and fmt == "torchscript":
        raise UsageError(
            "the preset can be put inside ONNX and pt2 artifacts, not TorchScript (its resize sizes need symbolic "
            "shapes); export with fmt='onnx' or 'pt2', or apply the preset before a TorchScript model"
        )
    if any(p.is_meta for p in model.parameters()):
        raise UsageError("the model's parameters are on the meta device: load weights into it before exporting")
    if isinstance(model, PackedModel):  # packed for this process's oneDNN; the exporters trace plain modules
        raise UsageTypeError(
            f"export takes the VGG, got an {type(model).__name__} made from one; export the VGG itself (the "
            "artifact's runtime optimizes it), in the dtype you want (dtype=...)"
        )


def _save_program(program: torch.export.ExportedProgram, fmt: str, out: IO[bytes]) -> None:
    """Write an exported program as a pt2 file, an AOTInductor package or an ONNX file into the open file `out`."""
    if fmt == "pt2":
        torch.export.save(program, out)
    elif fmt == "aoti":
        torch._inductor.aoti_compile_and_package(program, package_path=out)
    else:  # ONNX from the same program: the exporter's own tracing loses the preset's crop sizes
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
        if onnx_program is None:
            raise UnsupportedError("torch.onnx.export returned no program")
        _save_onnx(onnx_program.model_proto, out)


def _save_onnx(proto: Any, out: IO[bytes]) -> None:
    """Save with the dynamic dimensions named batch, height and width (the program calls them s0, s1, ...)."""
    graph = proto.graph
    names = {}
    for dim, name in zip(graph.input[0].type.tensor_type.shape.dim, ("batch", None, "height", "width")):
        if dim.dim_param and name is not None:
            names[dim.dim_param] = name
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]
    # one file (every VGG is below protobuf's 2 GB), the bytes onnx.save writes: it cannot take an fd-named file
    out.write(proto.SerializeToString())


def _dynamic_dims(dynamic_batch: bool, dynamic_size: bool) -> tuple[dict[int, Any], ...] | None:
    """The `dynamic_shapes` of the one input (positional, so a wrapper's argument name does not matter)."""
    dims: dict[int, Any] = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    if dynamic_size:
        dims[2] = torch.export.Dim("height", min=_MIN_DYNAMIC_SIDE, max=_MAX_SIDE)
        dims[3] = torch.export.Dim("width", min=_MIN_DYNAMIC_SIDE, max=_MAX_SIDE)
    return (dims,) if dims else None


def _torchscript(net: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    try:
        scripted: torch.jit.ScriptModule = torch.jit.script(net)
        return scripted
    except Exception as err:  # torch.jit raises several unrelated types for unsupported Python
        logger.warning(
            "the model does not script (%s); tracing it at %s instead", type(err).__name__, tuple(example.shape)
        )
    with torch.no_grad():
        traced: torch.jit.ScriptModule = torch.jit.trace(net, (example,), check_trace=False)  # type: ignore[no-untyped-call]
    return traced


def run_export(path: str | os.PathLike[str], fmt: ExportFormat, images: torch.Tensor) -> torch.Tensor:
    """An exported artifact's output for `images`, run as a deployment would.

    Args:
        path: the artifact `export` wrote.
        fmt: its format: "onnx" (run in onnxruntime, CPU), "pt2" (`torch.export.load`), "aoti"
            (`aoti_load_package`) or "torchscript" (`torch.jit.load`).
        images: the input batch, as the artifact takes it.

    Returns:
        The artifact's output.

    Raises:
        MissingDependency: an ONNX file without onnxruntime installed.
        UsageError: an unknown format.
        UnsupportedError: the artifact does not load or run.
    """
    path = Path(path)
    if fmt == "onnx":
        try:
            onnxruntime = importlib.import_module("onnxruntime")
        except ImportError as err:
            raise MissingDependency("running ONNX files needs onnxruntime: pip install 'vggnet[onnx]'") from err
        with _one_line(f"{path} does not run in onnxruntime"):
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            (result,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
        return torch.from_numpy(result)
    with torch.no_grad(), _one_line(f"{path} does not load or run as a {fmt} artifact"):
        if fmt == "pt2":
            out: torch.Tensor = torch.export.load(path).module()(images)
        elif fmt == "aoti":
            out = torch._inductor.aoti_load_package(str(path))(images)
        elif fmt == "torchscript":
            out = torch.jit.load(str(path))(images)  # type: ignore[no-untyped-call]
        else:
            raise UsageError(f"unknown export format {fmt!r}; valid: {', '.join(EXPORT_FORMATS)}")
    return out


def example_images(
    batch: int, image_size: int, *, include_preset: bool = False, dtype: torch.dtype = torch.float32, seed: int = 0
) -> torch.Tensor:
    """A seeded input of the kind an artifact takes.

    Args:
        batch: the number of images.
        image_size: their side, in pixels.
        include_preset: uint8 images (for an artifact with the preset inside), else normalised floats.
        dtype: the floats' dtype.
        seed: the generator's seed.

    Returns:
        A (batch, 3, image_size, image_size) tensor.
    """
    g = torch.Generator().manual_seed(seed)
    shape = (batch, IN_CHANNELS, image_size, image_size)
    if include_preset:
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    return torch.randn(shape, generator=g).to(dtype)


def check_export(
    path: str | os.PathLike[str],
    fmt: ExportFormat,
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
) -> float:
    """The largest absolute difference between the artifact's and `model`'s (eager) outputs over `inputs`.

    Args:
        path: the artifact.
        fmt: its format (as for `run_export`).
        model: the model it was exported from (put in eval mode).
        inputs: the batches to compare on.

    Returns:
        The largest absolute difference of any output element.

    Raises:
        UnsupportedError: the artifact gave an output of another shape, or does not load or run.
    """
    worst = 0.0
    model = model.eval()
    for x in inputs:
        with torch.no_grad():
            expected = model(x)
        got = run_export(path, fmt, x)
        if got.shape != expected.shape:
            raise UnsupportedError(
                f"{path} gave shape {tuple(got.shape)} for input {tuple(x.shape)}, eager {tuple(expected.shape)}"
            )
        worst = max(worst, (got.float() - expected.float()).abs().max().item())
    return worst
