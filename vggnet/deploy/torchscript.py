"""An int8 program's FX graph written out as one TorchScript function: the same calls, without Python between them.

An int8 program (`vggnet.deploy.onednn.lower`) is a short FX graph of oneDNN calls, and FX runs it as
Python code: every call pays for the interpreter, the pytree handling of an exported graph, the
attribute lookups and the conversion of its arguments, on one core while the other waits. TorchScript
cannot trace the graph (`qconv_pointwise`'s `Scalar?[]` argument has no traced form) and cannot script
FX's generated code (the exported graph's guard and pytree calls), but it compiles the same calls
written out as its own source, with the empty `Scalar?[]` list typed. vgg16 int8 on the 2-core Xeon
(AMX), both runs of one program taking turns in one process: batch 1 14.3-16.3 ms against
15.5-17.8 through FX (FX 1.07-1.09 times as long), batch 8 63.4-65.3 against 66.2-66.8 (1.02-1.05);
the logits the same, bit for bit. A batch size's first call takes longer (vgg16: 0.45 s at batch 1
against 0.36-0.38 through FX, 0.69-0.71 s at batch 8 against 0.43-0.45): the function compiled, and
run three times and the FX program once on that batch, to check it. In `benchmarks/bench_cpu_peers.py`
(vggnet int8 and OpenVINO's NNCF int8 only, 11 rounds, two runs each way, 05:20-05:29 UTC) OpenVINO's time
over vggnet's went from 0.842-0.848 through FX to 0.904-0.905 at batch 1.

`script_graph` writes the source from the graph it is given, node by node: oneDNN's and ATen's
operators by name (TorchScript picks the overload from the arguments), the Python functions the caller
names (the int8 program's `quantize_uint8` and `adaptive_avg_pool_uint8`), constants as literals,
tensors passed in as a list. Nothing of the graph becomes code but its operators' names, its methods'
and keywords' names (identifiers only) and its constants: numbers of the built-in types, None, dtypes,
memory formats and strings of letters, digits and underscores. A graph it cannot write, a compilation
that fails, or a function whose output on the example differs from the graph's by one bit is logged
as a warning, and the graph runs through FX as before.

The function is checked on the first input of its shape only, so a helper must compute the same from
data in Python and in TorchScript (the int8 helpers branch on shapes alone, which a program fixes).
TorchScript compiles a helper from its Python source, once per process (`torch.jit.script`, whose
deprecation warning is silenced for that call): an install without the package's `.py` files gets no
function, and FX runs the program, as the warning says. The function lives in a compilation unit of its
own, freed with the program; TorchScript's process-wide unit keeps only the compiled helpers (and
`torch.nn.functional.adaptive_avg_pool2d`, which one of them calls), however many programs are made.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx

from vggnet.checks import same_bits

__all__ = ["ScriptedGraph", "Unscriptable", "script_graph", "torchscript_source"]

logger = logging.getLogger(__name__)

Helpers = dict[str, Callable[..., Any]]  # the Python functions a graph may call, by the name the source uses
# Modules an exported graph calls that the function leaves out: its guard re-checks the input's shape,
# which a program (made for one input shape, and called for that shape only) does not need
_SKIPPED_MODULES = ("_guards_fn",)
# Calls made at creation: TorchScript's profiling executor profiles the first and optimizes after, so
# that a user's calls find the function ready, and its output is checked after the executor's changes
_WARM_CALLS = 3
_compiling = threading.Lock()  # helpers are compiled once per process, one at a time


class Unscriptable(ValueError):
    """A graph node `torchscript_source` has no TorchScript form for."""


def torchscript_source(graph: fx.GraphModule, helpers: Helpers | None = None) -> tuple[str, list[torch.Tensor]]:
    """`graph` as the source of one TorchScript function `run(x, tensors)`, and the tensors to call it with.

    Args:
        graph: an FX graph of one tensor input and one tensor output (an int8 program).
        helpers: the Python functions besides `torch.flatten` the graph may call, by the name the source
            gives them (they must be scriptable).

    Returns:
        (source, tensors): the function's source, and the graph's attributes in the order `tensors[i]`
        names them.

    Raises:
        Unscriptable: a node has no TorchScript form here (named in the message).
    """
    names = {fn: ".".join(map(_identifier, name.split("."))) for name, fn in (helpers or {}).items()}
    writer = _Writer(graph, names | {torch.flatten: "torch.flatten"})
    for node in graph.graph.nodes:
        writer.write(node)
    if writer.result is None:
        raise Unscriptable("the graph returns nothing")
    body = "\n".join(f"    {line}" for line in [*writer.lines, f"return {writer.result}"])
    return f"def run(x: Tensor, tensors: List[Tensor]) -> Tensor:\n{body}\n", writer.tensors


class _Writer:
    """One graph's nodes as lines of TorchScript, each value a local named after its node."""

    def __init__(self, graph: fx.GraphModule, helpers: dict[Callable[..., Any], str]) -> None:
        self.graph = graph
        self.helpers = helpers
        self.names: dict[fx.Node, str] = {}
        self.lines: list[str] = []
        self.tensors: list[torch.Tensor] = []
        self.result: str | None = None

    def write(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            if "x" in self.names.values():
                raise Unscriptable(f"a second input ({node.name}): a program takes one")
            self.names[node] = "x"
        elif node.op == "get_attr":
            self.names[node] = self._tensor(str(node.target))
        elif node.op == "call_module" and node.target in _SKIPPED_MODULES:
            return
        elif node.op in ("call_function", "call_method"):
            self.names[node] = f"v{len(self.lines)}"
            self.lines.append(f"{self.names[node]} = {self._call(node)}")
        elif node.op == "output":
            self.result = self._output(node.args[0])
        else:
            raise Unscriptable(f"{node.op} {node.target}")

    def _tensor(self, target: str) -> str:
        value: Any = self.graph
        for part in target.split("."):
            value = getattr(value, part)
        if not isinstance(value, torch.Tensor):
            raise Unscriptable(f"attribute {target} is a {type(value).__name__}, not a tensor")
        self.tensors.append(value)
        return f"tensors[{len(self.tensors) - 1}]"

    def _call(self, node: fx.Node) -> str:
        target = node.target
        schema = getattr(target, "_schema", None)
        types = [str(a.type) for a in schema.arguments] if schema is not None else []
        args = [self._value(a, types[i] if i < len(types) else None) for i, a in enumerate(node.args)]
        args += [f"{_identifier(k)}={self._value(v, None)}" for k, v in node.kwargs.items()]
        if node.op == "call_method":
            return f"{args[0]}.{_identifier(str(target))}({', '.join(args[1:])})"
        if isinstance(target, torch._ops.OpOverload):
            namespace, name = schema.name.split("::") if schema is not None else ("", "")
            return f"torch.ops.{namespace}.{name}({', '.join(args)})"  # the overload: TorchScript picks it
        if callable(target) and target in self.helpers:
            return f"{self.helpers[target]}({', '.join(args)})"
        raise Unscriptable(f"a call of {getattr(target, '__name__', target)!r}")

    def _value(self, value: Any, schema_type: str | None) -> str:
        if isinstance(value, fx.Node):
            if value not in self.names:
                raise Unscriptable(f"{value.name} is used but was left out")
            return self.names[value]
        if isinstance(value, (list, tuple)):
            if not value:
                if schema_type is None or not schema_type.startswith("List["):
                    raise Unscriptable(f"an empty list for an argument of type {schema_type or 'unknown'}")
                return f"torch.jit.annotate({schema_type}, [])"  # typed as the schema says ("Scalar?[]")
            return "[" + ", ".join(self._value(v, None) for v in value) + "]"
        return _literal(value)

    def _output(self, value: Any) -> str:
        if isinstance(value, (list, tuple)) and len(value) == 1:
            value = value[0]  # an exported graph's flat outputs
        if not isinstance(value, fx.Node):
            raise Unscriptable("the graph does not return one tensor")
        return self._value(value, None)


def _identifier(name: str) -> str:
    """`name` where it is a plain identifier (a method's or a keyword's name), else Unscriptable."""
    if not (name.isidentifier() and name.isascii()):
        raise Unscriptable(f"the name {name!r}")
    return name


def _literal(value: Any) -> str:
    """A constant argument as TorchScript source: numbers, None, dtypes, memory formats and plain words only."""
    if value is None or type(value) in (bool, int):  # not a subclass, whose repr could be anything
        return repr(value)
    if isinstance(value, str):
        if not re.fullmatch(r"\w*", value, re.ASCII):  # an operator's mode ("relu", ""): nothing to escape
            raise Unscriptable(f"the string constant {value!r}")
        return f'"{value}"'
    if type(value) is float:
        if not math.isfinite(value):
            raise Unscriptable(f"the non-finite constant {value}")
        return repr(value)  # the shortest repr reads back as the same double
    if isinstance(value, (torch.dtype, torch.memory_format)):
        return str(value)  # "torch.uint8", "torch.channels_last"
    raise Unscriptable(f"a constant of type {type(value).__name__}")


class ScriptedGraph:
    """A graph's TorchScript function with the tensors it takes: called as the graph is, on one input.

    Args:
        function: the compiled `run(x, tensors)`.
        unit: the compilation unit holding it (kept alive with the function, freed with this object).
        tensors: the graph's attributes, in the order the function reads them.
    """

    def __init__(self, function: Any, unit: torch.jit.CompilationUnit, tensors: Sequence[torch.Tensor]) -> None:
        self.function = function
        self.unit = unit
        self.tensors = list(tensors)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.function(x, self.tensors)
        return out

    @property
    def code(self) -> str:
        """The TorchScript code of the function."""
        return str(self.function.code)


def script_graph(graph: fx.GraphModule, example: torch.Tensor, helpers: Helpers | None = None) -> ScriptedGraph | None:
    """`graph` as a TorchScript function, checked bit for bit against the graph on `example`.

    Args:
        graph: an int8 program (one tensor in, one tensor out).
        example: an input of the shape the program is for (run through FX once, through the function
            three times: TorchScript's executor changes the function after its first calls).
        helpers: the Python functions the graph may call besides torch's, by name (see `torchscript_source`).

    Returns:
        The function; None (logged as a warning) where the graph has no TorchScript form here, TorchScript
        fails on it, or its output differs from the graph's.
    """
    try:
        source, tensors = torchscript_source(graph, helpers)
        unit = torch.jit.CompilationUnit()
        unit.define(source, ({"torch": torch} | _compiled(helpers or {})).get)
        scripted = ScriptedGraph(unit.run, unit, tensors)
        with torch.inference_mode():
            expected = graph(example)
            same = all(same_bits(scripted(example), expected) for _ in range(_WARM_CALLS))
    except Exception as err:  # Unscriptable, and TorchScript's RuntimeError and others: all mean FX runs it
        reason = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        shape = tuple(example.shape)
        logger.warning("no TorchScript function for the graph of %s (%s); it runs through FX", shape, reason)
        return None
    if not same:
        logger.warning("the TorchScript function for the graph of %s differs from FX; it runs through FX",
                       tuple(example.shape))  # fmt: skip
        return None
    return scripted


def _compiled(helpers: Helpers) -> dict[str, Any]:
    """Each helper compiled by TorchScript, by name (compiled once per process, then reused)."""
    with _compiling:
        return {name: _script(fn) for name, fn in helpers.items()}


@functools.cache
def _script(fn: Callable[..., Any]) -> Any:
    """`fn` compiled by TorchScript, its deprecation warning silenced (under `_compiling`, once per function)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)
        return torch.jit.script(fn)
