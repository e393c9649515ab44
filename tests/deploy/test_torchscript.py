"""An int8 program written out as a TorchScript function.

The claims: every int8 model runs through the function, with the FX program's logits bit for bit
(test_quantize's head matrix checks every head); what the writer cannot write, TorchScript cannot
compile, or what computes other bits than FX runs through FX, with a one-line warning; constants are
written back exactly; the function goes with its model.
"""

import gc
import logging
import operator
import re
import threading
import weakref

import pytest
import torch
from torch import fx, nn
from torch.fx.experimental.proxy_tensor import make_fx

import vggnet
import vggnet.deploy.onednn
from tests.deploy.test_packed import images, small_vgg
from vggnet.deploy.onednn import HELPERS
from vggnet.deploy.quantize import int8_instructions, quantize
from vggnet.deploy.torchscript import ScriptedGraph, Unscriptable, script_graph, torchscript_source

int8 = pytest.mark.skipif(int8_instructions() is None, reason="oneDNN has no int8 kernels on this CPU")


@int8
@pytest.mark.parametrize(
    ("kwargs", "side"),
    [
        ({}, 32),
        ({"num_classes": 0, "global_pool": ""}, 32),
        pytest.param({"head": "vgg"}, 32, marks=pytest.mark.slow),  # fc6 is 25088 x 4096 at any size
        pytest.param({"head": "vgg"}, 224, marks=pytest.mark.slow),
    ],
    ids=["gap", "no head", "vgg head, pooled to 7x7", "vgg head at 224 (no pool to make)"],
)
def test_an_int8_model_runs_as_torchscript_with_the_fx_programs_bits(kwargs, side):
    pytest.importorskip("torchao", reason="int8 needs torchao")
    model = quantize(small_vgg(**kwargs), images(4, side), fallback=False)
    for n in (1, 3):  # a piece of 1, then pieces of 2 and 1
        x = images(n, side)
        with torch.inference_mode():
            got = model(x)
            for shape, run in model.program.runs.items():
                assert isinstance(run, ScriptedGraph), (shape, run)
                for piece in later_inputs(shape):  # not the input the function was checked on
                    assert torch.equal(run(piece), model.program.programs[shape](piece))
        assert got.shape[0] == n


def later_inputs(shape: tuple[int, ...]) -> list[torch.Tensor]:
    """Inputs of `shape` as a model's later calls pass them: new values, channels-last, a slice of a batch."""
    g = torch.Generator().manual_seed(2)
    batch = torch.randn((2 * shape[0], *shape[1:]), generator=g)
    return [
        torch.randn(shape, generator=g) * 3,
        torch.randn(shape, generator=g).contiguous(memory_format=torch.channels_last),
        batch[shape[0] :],  # a view at an offset, as Int8VGG's pieces are
    ]


@int8
def test_without_a_function_the_fx_program_runs(monkeypatch, caplog):
    """A program the writer cannot write (here: its input quantization, with the helpers withheld) runs through FX."""
    pytest.importorskip("torchao", reason="int8 needs torchao")
    x = images(2)
    expected = quantize(small_vgg(), images(4), fallback=False)(x)
    monkeypatch.setattr(vggnet.deploy.onednn, "HELPERS", {})
    model = quantize(small_vgg(), images(4), fallback=False)
    with caplog.at_level(logging.WARNING, logger="vggnet.deploy.torchscript"):
        got = model(x)
    assert "a call of 'quantize_uint8'" in caplog.text and "runs through FX" in caplog.text
    assert model.program.runs and all(run is model.program.programs[shape] for shape, run in model.program.runs.items())
    assert torch.equal(got, expected)


@int8
def test_first_calls_from_two_threads_make_one_function_each_shape():
    pytest.importorskip("torchao", reason="int8 needs torchao")
    model = quantize(small_vgg(), images(4), fallback=False)
    results: dict[int, torch.Tensor] = {}

    def call(i: int) -> None:
        with torch.inference_mode():
            results[i] = model.program(images(1 + i % 2).contiguous(memory_format=torch.channels_last))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(model.program.runs) == {(1, 3, 32, 32), (2, 3, 32, 32)}
    assert all(isinstance(run, ScriptedGraph) for run in model.program.runs.values())
    assert torch.equal(results[0], results[2]) and torch.equal(results[1], results[3])


@int8
def test_the_function_goes_with_its_model():
    pytest.importorskip("torchao", reason="int8 needs torchao")
    model = quantize(small_vgg(), images(2), fallback=False)
    with torch.inference_mode():
        model(images(1))
    (run,) = model.program.runs.values()
    assert isinstance(run, ScriptedGraph)
    unit = weakref.ref(run.unit)
    del model, run
    gc.collect()
    assert unit() is None


@int8
def test_the_process_wide_unit_does_not_grow_with_programs():
    pytest.importorskip("torchao", reason="int8 needs torchao")
    model = quantize(small_vgg(), images(4), fallback=False)
    with torch.inference_mode():
        model(images(1))  # the helpers compiled, once per process
    functions = len(torch.jit._state._python_cu.get_functions())
    (program,) = model.program.programs.values()
    for _ in range(3):
        assert script_graph(program, images(1), HELPERS) is not None
    assert len(torch.jit._state._python_cu.get_functions()) == functions


# --- graphs written by hand -------------------------------------------------------------------------------


def one_call(target: object, *args: object, attributes: dict[str, torch.Tensor] | None = None) -> fx.GraphModule:
    """A graph of one input `x` and one call of `target` on `args` ("x" for the input, "@name" for an attribute)."""
    root = nn.Module()
    graph = fx.Graph()
    x = graph.placeholder("x")
    for name, tensor in (attributes or {}).items():
        root.register_buffer(name, tensor)
    values = [x if a == "x" else graph.get_attr(a[1:]) if isinstance(a, str) and a.startswith("@") else a for a in args]
    graph.output(graph.call_function(target, tuple(values)))  # type: ignore[arg-type]
    return fx.GraphModule(root, graph)


def test_a_graph_of_operators_runs_the_same_as_torchscript():
    b = torch.randn(4)
    graph = make_fx(lambda x: torch.flatten(x * 0.1 + b, 1))(torch.randn(2, 3, 4))
    x = torch.randn(2, 3, 4)
    run = script_graph(graph, x)
    assert isinstance(run, ScriptedGraph)
    assert torch.equal(run(x), graph(x))
    assert "torch.ops.aten.mul(x, 0.1)" in torchscript_source(graph)[0] and "torch.add(v0, tensors[0])" in run.code
    assert run.tensors[0] is graph._tensor_constant0  # the graph's own tensor, not a copy


def test_constants_are_written_back_exactly():
    scale = 0.1 + 2**-55  # not the double nearest 0.1: a short repr would lose it
    graph, x = one_call(torch.ops.aten.mul.Tensor, "x", scale), torch.tensor([3.0], dtype=torch.float64)
    run = script_graph(graph, x)
    assert run is not None and run(x).item() == 3.0 * scale == graph(x).item()


def test_an_empty_list_is_typed_as_the_operator_asks():
    # stride []: the kernel's
    graph, x = one_call(torch.ops.aten.max_pool2d.default, "x", [2, 2], []), torch.randn(1, 2, 4, 4)
    assert "torch.jit.annotate(List[int], [])" in torchscript_source(graph)[0]
    run = script_graph(graph, x)
    assert run is not None and torch.equal(run(x), graph(x))


def _two_inputs() -> fx.GraphModule:
    graph = fx.Graph()
    x, y = graph.placeholder("x"), graph.placeholder("y")
    graph.output(graph.call_function(torch.ops.aten.add.Tensor, (x, y)))
    return fx.GraphModule(nn.Module(), graph)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: one_call(operator.mul, "x", 2), "a call of 'mul'"),
        (lambda: one_call(lambda v: v + 1, "x"), "a call of '<lambda>'"),
        (_two_inputs, "a second input"),
        (lambda: one_call(torch.ops.aten.clamp.default, "x", None, float("inf")), "the non-finite constant inf"),
        (lambda: one_call(torch.ops.aten.add.Tensor, "x", "@k", attributes={"k": torch.ones(3)}), None),
        (lambda: one_call(torch.ops.aten.add.Tensor, "x", torch.device("cpu")), "a constant of type device"),
        (lambda: one_call(torch.ops.aten.pad.default, "x", [1, 1], 'constant")\nimport os #'), "the string constant"),
        (lambda: one_call(torch.ops.aten.pad.default, "x", [1, 1], "constant"), None),
        (lambda: _with_kwargs({"other=x.mul(2), alpha": 1}), "the name 'other=x.mul(2), alpha'"),
        (lambda: _with_kwargs({"alpha": 2}), None),
        (lambda: one_call(torch.ops.aten.mul.Tensor, "x", _Sneaky(2)), "a constant of type _Sneaky"),
    ],
    ids=[
        "a Python operator",
        "a lambda",
        "two inputs",
        "an infinite constant",
        "(writable)",
        "a device",
        "a string that is not a word",
        "(a word)",
        "a keyword that is not a name",
        "(a keyword)",
        "an int of another type",
    ],
)
def test_what_the_writer_cannot_write_runs_through_fx_with_a_one_line_warning(make, reason, caplog):
    graph = make()
    if reason is None:  # the control: the same shape of graph, written
        assert script_graph(graph, torch.randn(3)) is not None
        return
    with pytest.raises(Unscriptable, match=re.escape(reason)):
        torchscript_source(graph)
    with caplog.at_level(logging.WARNING, logger="vggnet.deploy.torchscript"):
        assert script_graph(graph, torch.randn(3)) is None
    (record,) = caplog.records
    assert "runs through FX" in record.getMessage() and reason in record.getMessage()
    assert "\n" not in record.getMessage()


def _with_kwargs(kwargs: dict[str, object]) -> fx.GraphModule:
    graph = fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(torch.ops.aten.add.Tensor, (x, x), kwargs))  # type: ignore[arg-type]
    return fx.GraphModule(nn.Module(), graph)


class _Sneaky(int):
    def __repr__(self) -> str:
        return "__import__('os').getpid()"


def test_an_output_that_is_not_a_plain_tensor_is_refused(caplog):
    """The bit check itself must not fail (nor crash) on what a graph returns: it refuses it, and FX runs."""
    graph = one_call(torch.ops.aten.quantize_per_tensor.default, "x", 0.1, 0, torch.quint8)
    with caplog.at_level(logging.WARNING, logger="vggnet.deploy.torchscript"):
        assert script_graph(graph, torch.randn(3)) is None
    assert "differs from FX" in caplog.text


def differs_when_scripted(x: torch.Tensor) -> torch.Tensor:
    if torch.jit.is_scripting():
        return x + 1
    return x


def untyped(x, k):  # type: ignore[no-untyped-def]  # TorchScript takes both for tensors, and 2.0 is not one
    return x * k


def test_a_function_whose_bits_differ_from_the_graph_is_not_used(caplog):
    graph, helpers = one_call(differs_when_scripted, "x"), {"differs_when_scripted": differs_when_scripted}
    assert "differs_when_scripted(x)" in torchscript_source(graph, helpers)[0]  # written and compiled, then refused
    with caplog.at_level(logging.WARNING, logger="vggnet.deploy.torchscript"):
        assert script_graph(graph, torch.randn(3), helpers) is None
    assert "differs from FX" in caplog.text


def test_a_helper_is_named_by_an_identifier():
    graph = one_call(differs_when_scripted, "x")
    with pytest.raises(Unscriptable, match="the name 'f\\(x\\) or g'"):
        torchscript_source(graph, {"f(x) or g": differs_when_scripted})


def test_what_torchscript_cannot_compile_runs_through_fx(caplog):
    graph = one_call(untyped, "x", 2.0)
    with caplog.at_level(logging.WARNING, logger="vggnet.deploy.torchscript"):
        assert script_graph(graph, torch.randn(3), {"untyped": untyped}) is None
    (record,) = caplog.records
    assert "runs through FX" in record.getMessage() and "\n" not in record.getMessage()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_the_int8_helpers_compile():
    """The functions `lower` puts in programs are the ones TorchScript is given, and it compiles each."""
    for name, fn in HELPERS.items():
        assert torch.jit.script(fn).name == name
