"""The meta-device inspector behind `vggnet summary`: what every layer holds, computes and produces.

The model is built on the meta device and run once on a meta tensor of the requested size, so the
shapes are those of a real forward pass at any input size, and nothing is allocated or computed.

Counting conventions (the ones the records' GFLOPS figures use):

- `macs`: multiply-adds per image of the convolutions and the fully connected layers; ReLU, pooling,
  BatchNorm and dropout count as none (BatchNorm folds into the convolution before it).
- `params`: the module's own trainable parameters (BatchNorm running statistics are buffers).
- `activation_bytes`: the layer's output for the whole batch in float32. In-place ReLUs and
  eval-mode dropout hand back their input tensor, so the summary's total counts that memory once.
- `receptive_field`, `jump`, `start`: the input square one unit sees, the input pixels between
  neighbouring units and the centre of unit 0's square (see `receptive.py`); None from avgpool on,
  where every unit sees the whole image.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import torch
from torch import nn

from vggnet.data.outputs import atomic_write, check_output, write_text
from vggnet.errors import MissingDependency, UsageError
from vggnet.models.config import IN_CHANNELS, MIN_SIZE, POOLED_SIZE, arch_config
from vggnet.models.receptive import receptive_fields
from vggnet.models.taps import module_names
from vggnet.models.vgg import VGG, make_layers

__all__ = ["LayerInfo", "Summary", "format_summary", "plot_summary", "summarize"]

DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
_ACTIVATION_DTYPE = "float32"

SizeArg = int | Sequence[int]


@dataclass(frozen=True)
class LayerInfo:
    """One module of the network, as it runs at the summary's input size.

    Attributes:
        name: the paper's name: conv1_1, relu1_1, pool1, ..., avgpool, fc6, relu6, drop6, ..., fc8.
        module: its state-dict path: features.0, avgpool, classifier.0.
        type: the module's class: Conv2d, BatchNorm2d, ReLU, MaxPool2d, AdaptiveAvgPool2d, Linear, Dropout.
        detail: what the class alone does not say: "3->64, 3x3", "2x2 stride 2", "25088->4096".
        output_shape: with the batch dimension first.
        params: its parameters.
        macs: its multiply-adds per image.
        activation_bytes: its output, for the whole batch, in float32.
        shares_input: the output is the input tensor itself (in-place ReLU, eval-mode dropout).
        receptive_field: the side of the input square one unit sees, in pixels (None from avgpool on).
        jump: input pixels between neighbouring units (the effective stride).
        start: the input coordinate of unit 0's square's centre (pixel 0's centre is 0).
    """

    name: str
    module: str
    type: str
    detail: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    activation_bytes: int
    shares_input: bool
    receptive_field: int | None = None
    jump: int | None = None
    start: float | None = None


@dataclass(frozen=True)
class Summary:
    """What `summarize` computed: one `LayerInfo` per module, and the totals `vggnet summary` prints.

    Attributes:
        arch: the builder name.
        input_size: (height, width) in pixels.
        batch_size: the batch the activation memory is for.
        num_classes: fc8's outputs.
        layers: every module in forward order.
    """

    arch: str
    input_size: tuple[int, int]
    batch_size: int
    num_classes: int
    layers: tuple[LayerInfo, ...]

    @property
    def params(self) -> int:
        """Parameters of the whole network."""
        return sum(layer.params for layer in self.layers)

    @property
    def macs(self) -> int:
        """Multiply-adds per image."""
        return sum(layer.macs for layer in self.layers)

    @property
    def conv_macs(self) -> int:
        """Multiply-adds per image of the convolutions."""
        return sum(layer.macs for layer in self.layers if layer.type == "Conv2d")

    @property
    def conv_params(self) -> int:
        """Parameters of the convolutions."""
        return sum(layer.params for layer in self.layers if layer.type == "Conv2d")

    @property
    def classifier_params(self) -> int:
        """Parameters of fc6, fc7 and fc8."""
        return sum(layer.params for layer in self.layers if layer.module.startswith("classifier."))

    @property
    def largest(self) -> LayerInfo:
        """The layer holding the most parameters (fc6 in every VGG)."""
        return max(self.layers, key=lambda layer: layer.params)

    @property
    def pool5(self) -> LayerInfo:
        """The last max-pool: its output is what the classifier (after the adaptive pool) reads."""
        return next(layer for layer in self.layers if layer.name == "pool5")

    def param_bytes(self, dtype: str = "float32") -> int:
        """The parameters' size in memory.

        Args:
            dtype: "float32", "bfloat16", "float16" or another key of `DTYPE_BYTES`.

        Returns:
            Bytes.

        Raises:
            UsageError: an unknown dtype; the message lists the known ones.
        """
        if dtype not in DTYPE_BYTES:
            raise UsageError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPE_BYTES)}")
        return self.params * DTYPE_BYTES[dtype]

    @property
    def input_bytes(self) -> int:
        """The input batch's size in float32, in bytes."""
        return self.batch_size * IN_CHANNELS * self.input_size[0] * self.input_size[1] * DTYPE_BYTES[_ACTIVATION_DTYPE]

    @property
    def activation_bytes(self) -> int:
        """All layer outputs of the batch in float32, each tensor once (what a training step keeps, roughly)."""
        return sum(layer.activation_bytes for layer in self.layers if not layer.shares_input)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: the totals, the shares, and one object per layer.

        Returns:
            What `vggnet summary --json` prints.
        """
        return {
            "arch": self.arch,
            "input_size": list(self.input_size),
            "batch_size": self.batch_size,
            "num_classes": self.num_classes,
            "params": self.params,
            "macs": self.macs,
            "param_bytes": {dtype: self.param_bytes(dtype) for dtype in DTYPE_BYTES},
            "activation_bytes": self.activation_bytes,
            "activation_dtype": _ACTIVATION_DTYPE,
            "input_bytes": self.input_bytes,
            "classifier_params": self.classifier_params,
            "classifier_params_share": self.classifier_params / self.params,
            "conv_params": self.conv_params,
            "conv_macs": self.conv_macs,
            "conv_macs_share": self.conv_macs / self.macs,
            "layers": [{**asdict(layer), "output_shape": list(layer.output_shape)} for layer in self.layers],
        }


def _size(input_size: SizeArg) -> tuple[int, int]:
    if isinstance(input_size, int):
        height = width = input_size
    else:
        if len(input_size) != 2:
            raise UsageError(f"input size must be one side or (height, width), got {tuple(input_size)}")
        height, width = (int(side) for side in input_size)
    if min(height, width) < MIN_SIZE:
        raise UsageError(
            f"input size {height}x{width} is too small: VGG needs at least {MIN_SIZE} px per side "
            f"(five 2x2 max-pools halve it to 1 px)"
        )
    return height, width


def _detail(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return f"{module.in_channels}->{module.out_channels}, {kh}x{kw}"
    if isinstance(module, nn.BatchNorm2d):
        return f"{module.num_features}"
    if isinstance(module, nn.MaxPool2d):
        return f"{module.kernel_size}x{module.kernel_size} stride {module.stride}"
    if isinstance(module, nn.AdaptiveAvgPool2d):
        size = module.output_size
        sides = (size, size) if isinstance(size, int) else tuple(size or ())
        return "to " + "x".join(str(side) for side in sides)
    if isinstance(module, nn.Linear):
        return f"{module.in_features}->{module.out_features}"
    if isinstance(module, nn.ReLU):
        return "in place" if module.inplace else ""
    if isinstance(module, nn.Dropout):
        return f"p={module.p}"
    return ""


def _macs(module: nn.Module, output_shape: tuple[int, ...]) -> int:
    per_image = math.prod(output_shape[1:])
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return per_image * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return per_image * module.in_features
    return 0


def summarize(arch: str, input_size: SizeArg = 224, *, batch_size: int = 1, num_classes: int = 1000) -> Summary:
    """Per-layer shapes, parameters, multiply-adds and activation memory of `arch`, on the meta device (instant).

    Args:
        arch: a builder name ("vgg16", "vgg19_bn").
        input_size: one side (a square) or (height, width), at least 32 px each.
        batch_size: the batch the activation memory is computed for.
        num_classes: fc8's outputs.

    Returns:
        The per-layer records and their totals.

    Raises:
        UsageError: an unknown architecture (the valid names listed), a size under 32 px or a batch under 1.
    """
    height, width = _size(input_size)
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    row, batch_norm = arch_config(arch)
    with torch.device("meta"):
        model = VGG(make_layers(row, batch_norm), num_classes=num_classes, init_weights=False)
    model.eval()
    names = module_names(model)  # state-dict path -> the tap name: "features.0" -> "conv1_1"

    rows: list[LayerInfo] = []
    fields = {f.name: f for f in receptive_fields(model)}

    def record(path: str, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        shape = tuple(output.shape)
        field = fields.get(names[path]) if path.startswith("features.") else None
        rows.append(
            LayerInfo(
                name=names[path],
                module=path,
                type=type(module).__name__,
                detail=_detail(module),
                output_shape=shape,
                params=sum(p.numel() for p in module.parameters(recurse=False)),
                macs=_macs(module, shape),
                activation_bytes=output.numel() * DTYPE_BYTES[_ACTIVATION_DTYPE],
                shares_input=output is inputs[0],
                receptive_field=None if field is None else field.size,
                jump=None if field is None else field.jump,
                start=None if field is None else field.start,
            )
        )

    modules = dict(model.named_modules())
    for module in modules.values():  # shapes by hand: torch's meta kernels import sympy and its compiler (1.5 s)
        shape = _shape_of(module)
        if shape is not None:
            module.forward = shape
    hooks = [modules[path].register_forward_hook(lambda m, i, o, path=path: record(path, m, i, o)) for path in names]
    try:
        with torch.no_grad():
            model(torch.empty(batch_size, IN_CHANNELS, height, width, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return Summary(arch, (height, width), batch_size, num_classes, tuple(rows))


def _shape_of(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A stand-in for `module`'s forward that returns an empty tensor of its output's shape, or None to run it."""
    if isinstance(module, nn.Linear):  # (..., in) -> (..., out)
        return lambda x: x.new_empty(*x.shape[:-1], module.out_features)
    if isinstance(module, nn.BatchNorm2d):
        return lambda x: x.new_empty(x.shape)
    if isinstance(module, nn.AdaptiveAvgPool2d):
        size = module.output_size
        side: tuple[int | None, ...] = (size, size) if isinstance(size, int) else tuple(size or (None, None))
        return lambda x: x.new_empty(*x.shape[:-2], *(o or i for o, i in zip(side, x.shape[-2:])))
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
        channels = module.out_channels if isinstance(module, nn.Conv2d) else None
        k, s, p, d = (_pair(v) for v in (module.kernel_size, module.stride, module.padding, module.dilation))
        if (isinstance(module, nn.MaxPool2d) and module.ceil_mode) or any(isinstance(v, str) for v in p):
            return None
        return lambda x: x.new_empty(
            *x.shape[:-3],
            channels or x.shape[-3],
            *((side + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i, side in enumerate(x.shape[-2:])),
        )
    return None


def _pair(value: object) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value,arg-type]


# --- text ------------------------------------------------------------------------------------------


def _si(n: float) -> str:
    """1234 -> "1.23K", 102764544 -> "102.76M", 15470264320 -> "15.47G"."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB"


def _shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _spatial_note(summary: Summary) -> str:
    height, width = summary.input_size
    ph, pw = summary.pool5.output_shape[2:]
    pool5 = f"input {height}x{width} -> pool5 {ph}x{pw} after five 2x2 max-pools"
    if (ph, pw) == (POOLED_SIZE, POOLED_SIZE):
        return f"{pool5}; avgpool keeps {POOLED_SIZE}x{POOLED_SIZE} (the identity at this size)"
    verb = "averages" if ph >= POOLED_SIZE and pw >= POOLED_SIZE else "spreads"
    return (
        f"{pool5}; avgpool {verb} {ph}x{pw} to {POOLED_SIZE}x{POOLED_SIZE}, so fc6 still sees "
        f"512*{POOLED_SIZE}*{POOLED_SIZE} = {512 * POOLED_SIZE * POOLED_SIZE} inputs: "
        "the classifier's parameters and MACs do not depend on the input size, the convolutions' MACs do"
    )


def format_summary(summary: Summary) -> str:
    """The table and the totals `vggnet summary` prints.

    Args:
        summary: what `summarize` returned.

    Returns:
        Plain text, one line per layer then the totals.
    """
    height, width = summary.input_size
    pool5 = summary.pool5
    lines = [
        f"{summary.arch} at {height}x{width}, batch {summary.batch_size}, {summary.num_classes} classes "
        "(computed on the meta device)",
        "",
        *_layer_table(summary),
        "",
        *_totals(summary),
        _spatial_note(summary),
        f"receptive fields: a pool5 unit sees {pool5.receptive_field}x{pool5.receptive_field} input px, "
        f"its neighbour's square {pool5.jump} px further (field, jump; start: unit 0's centre, pixel 0 = 0)",
    ]
    return "\n".join(lines)


def _layer_table(summary: Summary) -> list[str]:
    """One line per layer between rules, under a header, then the total."""
    header = ("layer", "type", "output shape", "field", "jump", "start", "params", "MACs", "activations")
    table = [header]
    for layer in summary.layers:
        kind = f"{layer.type} {layer.detail}".rstrip()
        memory = "(shared)" if layer.shares_input else _mib(layer.activation_bytes)
        n_params = f"{layer.params:,}" if layer.params else "-"
        n_macs = _si(layer.macs) if layer.macs else "-"
        field = ("-", "-", "-") if layer.receptive_field is None else _field(layer)
        table.append((layer.name, kind, _shape(layer.output_shape), *field, n_params, n_macs, memory))
    table.append(
        ("total", "", "", "", "", "", f"{summary.params:,}", _si(summary.macs), _mib(summary.activation_bytes))
    )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    right = {3, 4, 5, 6, 7, 8}

    def line(row: Sequence[str]) -> str:
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return [line(header), rule, *(line(row) for row in table[1:-1]), rule, line(table[-1])]


def _totals(summary: Summary) -> list[str]:
    """Parameters, multiply-adds and activation memory, with their shares."""
    params, macs, largest = summary.params, summary.macs, summary.largest
    head, fc_macs = summary.classifier_params, summary.macs - summary.conv_macs
    param_memory = f"{_mib(summary.param_bytes('float32'))} in fp32, {_mib(summary.param_bytes('bfloat16'))} in bf16"
    totals = [
        ("parameters", f"{params:,}", "", param_memory),
        ("  classifier", f"{head:,}", f"{head / params:.1%}", "fc6, fc7, fc8"),
        (f"  {largest.name}", f"{largest.params:,}", f"{largest.params / params:.1%}", "the largest layer"),
        ("  convolutions", f"{summary.conv_params:,}", f"{summary.conv_params / params:.1%}", ""),
        ("MACs per image", _si(macs), "", f"{macs:,} multiply-adds"),
        ("  convolutions", _si(summary.conv_macs), f"{summary.conv_macs / macs:.1%}", ""),
        ("  classifier", _si(fc_macs), f"{fc_macs / macs:.1%}", ""),
        (
            "activations",
            _mib(summary.activation_bytes),
            "",
            f"batch of {summary.batch_size}, fp32, every output once; input {_mib(summary.input_bytes)}",
        ),
    ]
    value_w = max(len(row[1]) for row in totals)
    return [f"{label:<15} {value:>{value_w}}  {share:>6}  {note}".rstrip() for label, value, share, note in totals]


def _field(layer: LayerInfo) -> tuple[str, str, str]:
    return f"{layer.receptive_field}", f"{layer.jump}", f"{layer.start:g}"


# --- plots -----------------------------------------------------------------------------------------

_CONV_COLOR, _FC_COLOR = "#4477aa", "#ee7733"
_PLOT_FORMATS = (".svg", ".png", ".pdf")  # .svg is written directly, the others by matplotlib


def plot_summary(summary: Summary, path: str | Path) -> Path:
    """Draw parameters, MACs and receptive field per layer: SVG written directly, PNG and PDF with matplotlib.

    Args:
        summary: what `summarize` returned.
        path: the file to write; its suffix (.svg, .png, .pdf) picks the format.

    Returns:
        `path`.

    Raises:
        UsageError: another suffix.
        MissingDependency: a PNG or PDF without matplotlib installed.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _PLOT_FORMATS:
        raise UsageError(
            f"cannot draw a {suffix or 'suffix-less'} file {path.name!r}; use one of {', '.join(_PLOT_FORMATS)}"
        )
    check_output(path)
    if suffix == ".svg":
        return write_text(path, _svg(summary))
    try:
        Figure = importlib.import_module("matplotlib.figure").Figure
    except ImportError as err:
        raise MissingDependency(
            f"writing {path.name} needs matplotlib (pip install matplotlib); an .svg plot needs nothing"
        ) from err
    layers = [layer for layer in summary.layers if layer.macs]
    colors = [_CONV_COLOR if layer.type == "Conv2d" else _FC_COLOR for layer in layers]
    labels = [layer.name for layer in layers]
    fig = Figure(figsize=(13, 0.28 * len(layers) + 1.6), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    fields = [layer.receptive_field or 0 for layer in layers]  # fc6-fc8 see the whole image: no bar
    for ax, values, scale, title in (
        (axes[0], [layer.params for layer in layers], 1e6, f"parameters (M), total {summary.params / 1e6:.1f}M"),
        (axes[1], [layer.macs for layer in layers], 1e9, f"MACs per image (G), total {summary.macs / 1e9:.2f}G"),
        (axes[2], fields, 1, "receptive field (px; fc: the whole image)"),
    ):
        ax.barh(labels, [v / scale for v in values], color=colors)
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=8)
    axes[0].invert_yaxis()  # conv1_1 at the top; the axes share y, so once inverts both
    fig.suptitle(_plot_title(summary), fontsize=11)
    with atomic_write(path) as f:  # whole or not at all, never through a link
        fig.savefig(f, dpi=120, format=suffix[1:])
    return path


def _plot_title(summary: Summary) -> str:
    height, width = summary.input_size
    return (
        f"{summary.arch} at {height}x{width}: {summary.classifier_params / summary.params:.0%} of the parameters "
        f"in the classifier, {summary.conv_macs / summary.macs:.0%} of the MACs in the convolutions"
    )


def _svg(summary: Summary) -> str:
    """Three horizontal bar charts side by side (parameters, MACs, receptive field), a row per conv or fc layer."""
    layers = [layer for layer in summary.layers if layer.macs]
    bar, gap, top, label_w, panel_w, value_w = 14, 4, 60, 70, 300, 80
    height = top + len(layers) * (bar + gap) + 40
    width = label_w + 3 * (panel_w + value_w) + 20
    panels = (
        ("parameters", [layer.params for layer in layers], summary.params, 1e6, "M"),
        ("MACs per image", [layer.macs for layer in layers], summary.macs, 1e9, "G"),
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="20" font-size="13" font-weight="bold">{escape(_plot_title(summary))}</text>',
    ]
    for p, (title, values, total, scale, unit) in enumerate(panels):
        x0 = label_w + p * (panel_w + value_w)
        peak = max(values)
        out.append(
            f'<text x="{x0}" y="{top - 12}" font-weight="bold">{escape(title)} (total {total / scale:.2f}{unit})</text>'
        )
        for i, (layer, value) in enumerate(zip(layers, values)):
            y = top + i * (bar + gap)
            w = panel_w * value / peak
            color = _CONV_COLOR if layer.type == "Conv2d" else _FC_COLOR
            out.append(
                f'<rect class="bar" x="{x0}" y="{y}" width="{w:.2f}" height="{bar}" fill="{color}">'
                f"<title>{escape(layer.name)}: {value:,}</title></rect>"
            )
            out.append(f'<text x="{x0 + w + 4:.2f}" y="{y + bar - 3}">{value / scale:.2f}{unit}</text>')
    for i, layer in enumerate(layers):
        y = top + i * (bar + gap) + bar - 3
        out.append(f'<text x="{label_w - 6}" y="{y}" text-anchor="end">{escape(layer.name)}</text>')
    out += _svg_fields(layers, label_w + 2 * (panel_w + value_w), top, bar, gap, panel_w)
    legend_y = height - 16
    out += [
        f'<rect x="{label_w}" y="{legend_y - 10}" width="12" height="12" fill="{_CONV_COLOR}"/>',
        f'<text x="{label_w + 16}" y="{legend_y}">convolutions</text>',
        f'<rect x="{label_w + 110}" y="{legend_y - 10}" width="12" height="12" fill="{_FC_COLOR}"/>',
        f'<text x="{label_w + 126}" y="{legend_y}">fully connected (fc6, fc7, fc8)</text>',
        "</svg>",
    ]
    return "\n".join(out) + "\n"


def _svg_fields(layers: Sequence[LayerInfo], x0: int, top: int, bar: int, gap: int, panel_w: int) -> list[str]:
    """The receptive-field panel: a bar per convolution (class "field"), "whole image" for fc6-fc8."""
    peak = max(layer.receptive_field or 0 for layer in layers)
    out = [f'<text x="{x0}" y="{top - 12}" font-weight="bold">receptive field (input px)</text>']
    for i, layer in enumerate(layers):
        y = top + i * (bar + gap)
        if layer.receptive_field is None:
            out.append(f'<text x="{x0}" y="{y + bar - 3}">whole image</text>')
            continue
        w = panel_w * layer.receptive_field / peak
        out.append(
            f'<rect class="field" x="{x0}" y="{y}" width="{w:.2f}" height="{bar}" fill="{_CONV_COLOR}">'
            f"<title>{escape(layer.name)}: {layer.receptive_field} px, jump {layer.jump}</title></rect>"
        )
        out.append(f'<text x="{x0 + w + 4:.2f}" y="{y + bar - 3}">{layer.receptive_field}</text>')
    return out
