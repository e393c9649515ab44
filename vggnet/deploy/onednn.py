"""A converted int8 graph run as direct calls to oneDNN's int8 operators, packed for one batch size.

`quantize` calibrates and converts a model with PT2E (see `vggnet.deploy.quantize`). The converted graph
computes in float32 between quantize and dequantize nodes; `lower` rewrites it for a batch size:

    dequantize -> conv2d -> [relu] -> quantize         onednn::qconv_pointwise (uint8 in, uint8 out)
    dequantize -> linear -> [relu] -> [dropout] -> quantize   onednn::qlinear_pointwise
    dequantize -> conv2d/linear (not quantized after)   the same with float32 out (the logits)
    dequantize -> max_pool2d -> quantize (same scale)   quantized::max_pool2d on the uint8 values
    dequantize -> adaptive_avg_pool2d -> quantize       nothing where the size is already the output size
    dequantize -> flatten -> quantize (same scale)      flatten of the uint8 values
    quantize (of float values: the input)               quantize_uint8, channels-last

These are the operators and packed weights Inductor's int8 lowering (`torch.compile` with freezing) emits
for the same graph, and with 8-bit activations the logits are the same bit for bit. Called from a
straight-line program, they need no compilation by Inductor (vgg16: a first call of about 0.5 s instead
of seconds to minutes), and through FX a call took within 1% of the compiled one's time (issue 27).
`Int8Program` runs each program as a TorchScript function written from it (`vggnet.deploy.torchscript`:
FX took 1.07-1.09 times as long at batch 1, the logits the same bit for bit), and through FX where it
has none.
Anything else runs as the converted graph runs it: dequantized, in float32.
Weights are packed for the batch size given, as oneDNN reorders weights packed for another shape on
every call.

Activation ranges narrower than uint8's (7-bit `reduce_range` on CPUs without int8 dot products) are
kept by a hardtanh post-op that clamps to the range before quantizing, so no value leaves it, as the
converted graph says. torchao's fusion for Inductor drops that clamp, so there the two differ: vgg11_bn at
32x32, 7 bits, logits within 3e-8 of the converted graph's here, up to 1.8e-3 (of 0.09) compiled.

Nodes copied from the converted graph read a fused call's result contiguous, as they would there (oneDNN
writes channels-last, and a copied `view` would fail on it). Lowering runs one at a time per program.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from vggnet.deploy.huge_pages import advise_huge_pages
from vggnet.deploy.torchscript import script_graph
from vggnet.errors import UnsupportedError

__all__ = ["HELPERS", "Int8Program", "adaptive_avg_pool_uint8", "lower", "quantize_uint8"]

_aten = torch.ops.aten
_RELUS = (_aten.relu.default, _aten.relu_.default)
_DROPOUTS = (_aten.dropout.default, _aten.dropout_.default)
_CONV = _aten.conv2d.default
_LINEAR = _aten.linear.default
_MAX_POOL = _aten.max_pool2d.default
_ADAPTIVE_AVG_POOL = _aten.adaptive_avg_pool2d.default
_FLATTEN = _aten.flatten.using_ints


def _decomposed(name: str) -> Any:
    """torch.ops.quantized_decomposed.`name`.default (registered once torchao's PT2E flow is imported)."""
    return getattr(torch.ops.quantized_decomposed, name).default


@dataclass(frozen=True)
class _QParams:
    """A per-tensor quantization: value = (q - zero_point) * scale, q in [qmin, qmax]."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int

    @staticmethod
    def of(node: fx.Node) -> _QParams | None:
        """The parameters of a uint8 quantize_per_tensor or dequantize_per_tensor node with constant ones."""
        scale, zero_point, qmin, qmax, dtype = node.args[1:6]
        if (
            dtype != torch.uint8
            or not isinstance(scale, float)
            or not all(isinstance(v, int) for v in (zero_point, qmin, qmax))
        ):
            return None
        return _QParams(scale, int(zero_point), int(qmin), int(qmax))  # type: ignore[arg-type]

    def post_op(self, relu: bool) -> tuple[str, list[float]]:
        """The oneDNN post-op that applies `relu` and keeps the quantized value in [qmin, qmax]."""
        if (self.qmin, self.qmax) == (0, 255):
            return ("relu", []) if relu else ("none", [])
        low, high = (self.qmin - self.zero_point) * self.scale, (self.qmax - self.zero_point) * self.scale
        return "hardtanh", [max(low, 0.0) if relu else low, high]


def _call(arg: object, *targets: object) -> fx.Node | None:
    """`arg` where it is a node calling one of `targets`, else None."""
    if isinstance(arg, fx.Node) and arg.op == "call_function" and arg.target in targets:
        return arg
    return None


def _attr(arg: object) -> fx.Node | None:
    """`arg` where it is a get_attr node (a constant of the graph), else None."""
    return arg if isinstance(arg, fx.Node) and arg.op == "get_attr" else None


def _only_user(node: fx.Node, user: fx.Node) -> bool:
    return list(node.users) == [user]


@dataclass
class _Layer:
    """A convolution or linear layer whose int8 input and weight the graph dequantizes."""

    op: fx.Node  # the conv2d or linear node
    source: fx.Node  # the uint8 tensor the input dequantizes
    input: _QParams
    weight: fx.Node  # the int8 weight (get_attr)
    weight_scale: fx.Node
    weight_zero_point: fx.Node
    bias: fx.Node | None


def _layer(op: fx.Node) -> _Layer | None:
    """`op` as a _Layer, where it is a conv2d/linear of a dequantized uint8 input and a dequantized weight."""
    if _call(op, _CONV, _LINEAR) is None or len(op.args) < 2:
        return None
    act = _call(op.args[0], _decomposed("dequantize_per_tensor"))
    weight = _call(op.args[1], _decomposed("dequantize_per_channel"))
    if act is None or weight is None or not isinstance(act.args[0], fx.Node):
        return None
    qparams = _QParams.of(act)
    w, w_scale, w_zero_point = (_attr(a) for a in weight.args[:3])
    bias_arg = op.args[2] if len(op.args) > 2 else None
    bias = _attr(bias_arg)
    per_output_channel = weight.args[3] == 0 and weight.args[6] == torch.int8
    if qparams is None or not per_output_channel or (bias_arg is not None and bias is None):
        return None
    if w is None or w_scale is None or w_zero_point is None:
        return None
    return _Layer(op, act.args[0], qparams, w, w_scale, w_zero_point, bias)


@dataclass
class _Fused:
    """A run of nodes that becomes one call: `anchor`'s value is that call's result."""

    anchor: fx.Node  # the last node of the run: its users read the call's result
    members: list[fx.Node]  # the nodes replaced (anchor included)
    emit: Callable[[fx.Graph, Callable[[fx.Node], fx.Node]], fx.Node]


def _fuse_quantized_layer(q: fx.Node, pack: Callable[[_Layer], fx.Node]) -> _Fused | None:
    """quantize(<- dropout)(<- relu)(<- conv2d/linear of dequantized values) as one uint8-out oneDNN call."""
    out = _QParams.of(q)
    members = [q]
    node = q.args[0]
    while (dropout := _call(node, *_DROPOUTS)) is not None and _inactive(dropout) and _only_user(dropout, members[-1]):
        members.append(dropout)
        node = dropout.args[0]
    relu = _call(node, *_RELUS)
    if relu is not None and _only_user(relu, members[-1]):
        members.append(relu)
        node = relu.args[0]
    layer = _layer(node) if isinstance(node, fx.Node) and _only_user(node, members[-1]) else None
    if out is None or layer is None:
        return None
    members.append(layer.op)
    post_op, post_args = out.post_op(relu is not None and relu in members)
    return _Fused(q, members, lambda graph, value: _emit_layer(graph, value, layer, pack, out, post_op, post_args))


def _fuse_float_layer(op: fx.Node, pack: Callable[[_Layer], fx.Node]) -> _Fused | None:
    """A conv2d/linear of dequantized values whose result is not quantized: one float32-out oneDNN call."""
    layer = _layer(op)
    if layer is None:
        return None
    return _Fused(op, [op], lambda graph, value: _emit_layer(graph, value, layer, pack, None, "none", []))


def _emit_layer(
    graph: fx.Graph,
    value: Callable[[fx.Node], fx.Node],
    layer: _Layer,
    pack: Callable[[_Layer], fx.Node],
    out: _QParams | None,
    post_op: str,
    post_args: list[float],
) -> fx.Node:
    head = (value(layer.source), layer.input.scale, layer.input.zero_point, pack(layer))
    weight_qparams = (value(layer.weight_scale), value(layer.weight_zero_point))
    bias = value(layer.bias) if layer.bias is not None else None
    scale, zero_point, dtype = (out.scale, out.zero_point, torch.uint8) if out else (1.0, 0, torch.float32)
    if layer.op.target == _LINEAR:
        return graph.call_function(
            torch.ops.onednn.qlinear_pointwise.default,
            (*head, *weight_qparams, bias, scale, zero_point, dtype, post_op, post_args, ""),
        )
    stride, padding, dilation, groups = _conv_arguments(layer.op)
    geometry = (stride, padding, dilation, groups)
    return graph.call_function(
        torch.ops.onednn.qconv_pointwise.default,
        (*head, *weight_qparams, bias, *geometry, scale, zero_point, dtype, post_op, post_args, ""),
    )


def _inactive(dropout: fx.Node) -> bool:
    """Whether an aten.dropout node is the identity (train=False), as it is in an exported eval model."""
    return len(dropout.args) > 2 and dropout.args[2] is False


def _conv_arguments(op: fx.Node) -> tuple[list[int], list[int], list[int], int]:
    """(stride, padding, dilation, groups) of an aten.conv2d node, its defaults filled in."""
    defaults: tuple[Any, ...] = (None, None, None, [1, 1], [0, 0], [1, 1], 1)
    args = list(op.args) + list(defaults[len(op.args) :])
    stride, padding, dilation, groups = args[3:7]
    return list(stride), list(padding), list(dilation), int(groups)


def _fuse_pool(q: fx.Node) -> _Fused | None:
    """quantize(<- pool or flatten of dequantized values, same scale) as the same op on the uint8 values."""
    out = _QParams.of(q)
    op = _call(q.args[0], _MAX_POOL, _ADAPTIVE_AVG_POOL, _FLATTEN)
    dq = _call(op.args[0], _decomposed("dequantize_per_tensor")) if op is not None else None
    if out is None or op is None or dq is None or not _only_user(op, q) or _QParams.of(dq) != out:
        return None
    source = dq.args[0]
    if not isinstance(source, fx.Node):
        return None

    def emit(graph: fx.Graph, value: Callable[[fx.Node], fx.Node]) -> fx.Node:
        x = value(source)
        if op.target == _FLATTEN:
            return graph.call_function(torch.flatten, (x, *op.args[1:]))
        if op.target == _ADAPTIVE_AVG_POOL:
            size = tuple(op.args[1])  # type: ignore[arg-type]  # the output size, a list of two ints
            qparams = (out.scale, out.zero_point, out.qmin, out.qmax)
            return graph.call_function(adaptive_avg_pool_uint8, (x, size, *qparams))
        return graph.call_function(torch.ops.quantized.max_pool2d.default, (x, *_pool_arguments(op)))

    return _Fused(q, [q, op], emit)


def _pool_arguments(op: fx.Node) -> tuple[list[int], list[int], list[int], list[int], bool]:
    """(kernel, stride, padding, dilation, ceil_mode) of an aten.max_pool2d node, defaults filled in."""
    defaults: tuple[Any, ...] = (None, None, [], [0, 0], [1, 1], False)
    kernel, stride, padding, dilation, ceil_mode = (list(op.args) + list(defaults[len(op.args) :]))[1:6]
    kernel = list(kernel) * (2 // len(kernel))
    stride = list(stride) * (2 // len(stride)) if stride else kernel
    return kernel, stride, list(padding) * (2 // len(padding)), list(dilation) * (2 // len(dilation)), bool(ceil_mode)


def adaptive_avg_pool_uint8(
    x: torch.Tensor, size: list[int], scale: float, zero_point: int, qmin: int, qmax: int
) -> torch.Tensor:
    """Adaptive average pooling of uint8 values `(q - zero_point) * scale`, as uint8 values of the same scale.

    Args:
        x: (N, C, H, W) uint8.
        size: the output's (height, width).
        scale: the quantization scale of input and output.
        zero_point: their zero point.
        qmin: the smallest uint8 value of the output.
        qmax: the largest (127 for 7-bit activations).

    Returns:
        `x` itself where it is of that size already (VGG's 7x7 pool at 224x224 pixels), else the pooled values,
        dequantized, pooled and quantized as the converted graph does it.
    """
    if x.shape[-2] == size[0] and x.shape[-1] == size[1]:  # (written so that TorchScript compiles it)
        return x
    pooled = torch.nn.functional.adaptive_avg_pool2d((x.float() - zero_point) * scale, (size[0], size[1]))
    return quantize_uint8(pooled, scale, zero_point, qmin, qmax)


def _fuse_quantize(q: fx.Node) -> _Fused | None:
    """A quantize of float values (the input's) as `quantize_uint8`."""
    out = _QParams.of(q)
    source = q.args[0]
    if out is None or not isinstance(source, fx.Node):
        return None

    def emit(graph: fx.Graph, value: Callable[[fx.Node], fx.Node]) -> fx.Node:
        return graph.call_function(quantize_uint8, (value(source), out.scale, out.zero_point, out.qmin, out.qmax))

    return _Fused(q, [q], emit)


def quantize_uint8(x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    """`x` quantized to uint8 as PT2E's quantize_per_tensor does it, bit for bit, in fewer passes.

    Args:
        x: float values, in any layout.
        scale: the quantization scale.
        zero_point: the uint8 value of 0.
        qmin: the smallest uint8 value.
        qmax: the largest (127 for 7-bit activations).

    Returns:
        clamp(round(x / scale) + zero_point, qmin, qmax) as uint8, channels-last where `x` is 4-D (the
        layout oneDNN's convolutions take).
    """
    y = torch.mul(x, 1.0 / scale)  # the decomposed op's own arithmetic, in place after this first copy
    y.round_()
    y.add_(zero_point)
    y.clamp_(qmin, qmax)
    layout = torch.channels_last if y.dim() == 4 else torch.contiguous_format
    return torch.empty(y.shape, dtype=torch.uint8, memory_format=layout).copy_(y)


def _fusions(graph: fx.Graph, pack: Callable[[_Layer], fx.Node]) -> dict[fx.Node, _Fused]:
    """Every fusable run of `graph`, by each of its member nodes."""
    by_member: dict[fx.Node, _Fused] = {}
    quantize = _decomposed("quantize_per_tensor")
    for node in graph.nodes:
        if _call(node, quantize) is not None:
            fused = _fuse_quantized_layer(node, pack) or _fuse_pool(node) or _fuse_quantize(node)
            if fused is not None:
                by_member.update(dict.fromkeys(fused.members, fused))
    for node in graph.nodes:
        if node not in by_member and _call(node, _CONV, _LINEAR) is not None:
            fused = _fuse_float_layer(node, pack)
            if fused is not None:
                by_member[node] = fused
    return by_member


def lower(converted: fx.GraphModule, example: torch.Tensor) -> fx.GraphModule:
    """`converted` (a PT2E-converted int8 graph) as direct oneDNN int8 calls, weights packed for `example`'s shape.

    Args:
        converted: torchao's `convert_pt2e` output (x86 Inductor quantizer), on the CPU.
        example: a float32 input of the shape the program will take (its values are not read).

    Returns:
        A GraphModule computing what `converted` computes, its layers as oneDNN int8 calls.
    """
    shapes = _input_shapes(converted, example)
    attributes: dict[str, Any] = {}
    old = converted.graph
    new = fx.Graph()
    new.set_codegen(old._codegen)  # the pytree input/output handling of an exported graph
    env: dict[fx.Node, fx.Node] = {}

    def value(node: fx.Node) -> fx.Node:
        if node.op == "get_attr" and node not in env:
            attributes[str(node.target)] = _attribute(converted, str(node.target))
            env[node] = new.get_attr(str(node.target))
        return env[node]

    def pack(layer: _Layer) -> fx.Node:
        name = f"_packed_{layer.op.name}"
        attributes[name] = packed = _pack(converted, layer, shapes[layer.op])
        advise_huge_pages([packed])  # read whole on every call: see huge_pages
        return new.get_attr(name)

    # What a fused call returns is laid out as oneDNN wrote it (channels-last); a node copied from the
    # converted graph reads it contiguous, as it does there (a view of it would fail otherwise).
    fused_values: dict[fx.Node, fx.Node] = {}

    def copied_input(node: fx.Node) -> fx.Node:
        found = value(node)
        if found in fused_values and fused_values[found] is found:
            fused_values[found] = new.call_method("contiguous", (found,))
        return fused_values.get(found, found)

    fusions = _fusions(old, pack)
    for node in old.nodes:
        fused = fusions.get(node)
        if fused is not None:
            if node is fused.anchor:
                result = env[node] = fused.emit(new, value)
                fused_values[result] = result  # replaced by its contiguous copy once a copied node reads it
            continue
        if node.op == "get_attr":
            continue  # copied where it is read (value)
        if node.op == "call_module":
            attributes[str(node.target)] = converted.get_submodule(str(node.target))
        env[node] = new.node_copy(node, copied_input)
    program = fx.GraphModule(attributes, new)
    program.graph.eliminate_dead_code()  # the dequantize nodes the fused calls replaced
    used = {node.target for node in program.graph.nodes if node.op in ("get_attr", "call_module")}
    for name in set(attributes) - used:
        delattr(program, name)
    program.recompile()
    return program


def _attribute(module: nn.Module, target: str) -> Any:
    owner, _, name = target.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, name)


class _Shapes(fx.Interpreter):
    """Runs a graph on fake tensors, keeping each node's output shape here rather than in the shared graph."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.shapes: dict[fx.Node, list[int]] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            self.shapes[n] = list(result.shape)
        return result


def _input_shapes(converted: fx.GraphModule, example: torch.Tensor) -> dict[fx.Node, list[int]]:
    """The shape of the input of every conv2d/linear node, found by running `converted` on fake tensors.

    Nothing is written into `converted` (FakeTensorProp would write into its nodes' meta, which another
    thread lowering for another shape reads).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    interpreter = _Shapes(converted)
    with mode:
        interpreter.run(mode.from_tensor(example))
    layers = [node for node in converted.graph.nodes if _call(node, _CONV, _LINEAR) is not None]
    return {node: interpreter.shapes[node.args[0]] for node in layers}


def _pack(converted: fx.GraphModule, layer: _Layer, input_shape: list[int]) -> torch.Tensor:
    """`layer`'s int8 weight reordered for oneDNN, for inputs of `input_shape`."""
    weight = _attribute(converted, str(layer.weight.target))
    if layer.op.target == _LINEAR:
        packed: torch.Tensor = torch.ops.onednn.qlinear_prepack(weight, input_shape)
        return packed
    stride, padding, dilation, groups = _conv_arguments(layer.op)
    scales = _attribute(converted, str(layer.weight_scale.target))
    packed = torch.ops.onednn.qconv_prepack(
        weight, scales, layer.input.scale, layer.input.zero_point, stride, padding, dilation, groups, input_shape
    )
    return packed


# The Python functions `lower` puts in a program, by name: TorchScript compiles them for the program's function
HELPERS: dict[str, Callable[..., Any]] = {
    "quantize_uint8": quantize_uint8,
    "adaptive_avg_pool_uint8": adaptive_avg_pool_uint8,
}


class Int8Program(nn.Module):
    """A converted int8 graph run through `lower`: one program per batch size, each packed on first use.

    Args:
        converted: torchao's `convert_pt2e` output, on the CPU.
    """

    def __init__(self, converted: fx.GraphModule) -> None:
        super().__init__()
        self.converted = converted
        self.programs: dict[tuple[int, ...], fx.GraphModule] = {}  # packed weights: not copied, not saved
        # what a call runs: each program's TorchScript function, or the program where it has none
        self.runs: dict[tuple[int, ...], Callable[[torch.Tensor], torch.Tensor]] = {}
        self._lowering = threading.Lock()  # one lowering at a time: two threads' first calls of one shape pack once
        self.training = False  # inference only (see train)

    def __getstate__(self) -> dict[str, Any]:
        """Refused: packed weights and the exported graph's code do not pickle (torch.save, multiprocessing)."""
        raise UnsupportedError(
            "an int8 model cannot be saved or pickled: save the float32 model (vggnet.save) and quantize it again "
            "where it is loaded, or export it (vggnet export --format onnx)"
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> Int8Program:
        """A copy of the converted graph whose programs are packed again on first use (packed weights are
        oneDNN's opaque tensors, which cannot be copied)."""
        return Int8Program(copy.deepcopy(self.converted, memo))

    def train(self, mode: bool = True) -> Int8Program:
        """Only eval mode, without asking the converted graph: an exported program refuses `.train()` and `.eval()`.

        Args:
            mode: must be False.

        Returns:
            This module.

        Raises:
            UnsupportedError: `mode` is True.
        """
        if mode:
            raise UnsupportedError("an int8 model is inference-only: train the VGG itself, then quantize it again")
        self.training = False
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The converted graph's output for `x`.

        Args:
            x: float32 images, channels-last, on the CPU.

        Returns:
            What the converted graph returns (the logits).
        """
        shape = tuple(x.shape)
        run = self.runs.get(shape)
        if run is None:
            with self._lowering:
                run = self.runs.get(shape) or self._make(x)
        return run(x)

    def _make(self, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The program for `x`'s shape, packed, and what runs it (its TorchScript function, or FX)."""
        shape = tuple(x.shape)
        program = self.programs[shape] = lower(self.converted, x)
        run = self.runs[shape] = script_graph(program, x, HELPERS) or program
        return run
