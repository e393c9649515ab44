"""oneDNN Graph programs: the eager fused path's logits bit for bit, made when and only where they should be.

The tests here use a tiny VGG; the ones on full-size models run in a subprocess of their own, so that
oneDNN's caches go with it.
"""

import copy
import gc
import json
import logging
import pickle
import threading
import weakref

import pytest
import torch
from torch import nn

import vggnet
from tests.helpers import HEAD_KINDS, spawn_python
from vggnet.deploy import inference, onednn_graph
from vggnet.deploy.inference import InferenceVGG
from vggnet.models.vgg import make_layers

pytestmark = pytest.mark.skipif(not onednn_graph.onednn_graph_available(), reason="needs TorchScript's oneDNN fuser")
DTYPES = [d for d in (torch.float32, torch.bfloat16) if inference.onednn_computes(d)]


def small_vgg11(**kwargs: object) -> vggnet.VGG:
    """A seeded tiny VGG (16, 32 and 512 channels, three pools) with the gap head: 158k parameters."""
    torch.manual_seed(0)
    net = vggnet.VGG(make_layers([16, "M", 32, "M", 512, "M"]), **({"num_classes": 10, "head": "gap"} | kwargs))
    return net.eval()


def optimize_for_inference(net: vggnet.VGG, **kwargs: object) -> InferenceVGG:
    """Programs on (the default), unless the test says otherwise."""
    return inference.optimize_for_inference(net, **({"onednn_graph": True} | kwargs))  # type: ignore[arg-type]


def programs(model: InferenceVGG) -> onednn_graph.Programs:
    assert model._programs is not None
    return model._programs


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_whole_batch_runs_as_a_program_from_its_second_call_with_the_eager_logits_bit_for_bit(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = small_vgg11()
    x = torch.randn(2, 3, 64, 64)
    graph = optimize_for_inference(net, dtype=dtype, batch_size=2)
    eager = optimize_for_inference(net, dtype=dtype, batch_size=2, onednn_graph=False)
    assert "onednn_graph=True" in repr(graph) and "onednn_graph=False" in repr(eager)
    expected = eager(x)
    assert torch.equal(graph(x), expected) and len(programs(graph)) == 0  # a shape's first call runs eagerly
    assert torch.equal(graph(x), expected) and len(programs(graph)) == 1
    (program,) = [p for p in programs(graph)._programs.values() if p is not None]
    xs = x.to(dtype).contiguous(memory_format=torch.channels_last)
    assert "oneDNNFusionGroup" in str(program.graph_for(xs))

    def no_eager(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("the eager path ran")

    monkeypatch.setattr(inference, "_run_steps", no_eager)
    assert torch.equal(graph(x), expected) and len(programs(graph)) == 1  # the program ran, and no new one


def test_a_batch_the_fused_path_takes_in_chunks_runs_in_the_same_chunks_with_the_eager_logits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inference, "CHUNK_BYTES", 16 * 64 * 64 * 4)  # one float32 image's conv1 output
    net = small_vgg11()
    graph = optimize_for_inference(net, dtype=torch.float32, batch_size=3)
    eager = optimize_for_inference(net, dtype=torch.float32, batch_size=3, onednn_graph=False)
    x = torch.randn(3, 3, 64, 64)
    assert inference.images_per_chunk(graph.net.features, (3, 3, 64, 64), torch.float32) == 1
    assert inference.whole_batch_from(graph.net.features, (3, 3, 64, 64), torch.float32) > 0
    for _ in range(3):
        assert torch.equal(graph(x), eager(x))
    ((key, program),) = programs(graph)._programs.items()
    assert key[-1] == onednn_graph.Plan(1, inference.whole_batch_from(graph.net.features, x.shape, torch.float32))
    assert program is not None
    code = str(program.graph)
    assert "aten::split" in code and "aten::cat" in code  # three images one at a time, then the batch


def test_only_the_prepared_batch_size_gets_programs_so_no_call_depends_on_whether_one_exists() -> None:
    # weights packed for one batch and called with another, oneDNN reorders them for a kernel whose
    # logits may differ in the last bits from a program's: such batches stay eager, every call alike
    net = small_vgg11()
    graph = optimize_for_inference(net, dtype=torch.float32, batch_size=2)
    for n in (1, 3, 2):
        x = torch.randn(n, 3, 32, 32)
        first = graph(x)
        assert all(torch.equal(graph(x), first) for _ in range(2))
    assert [key[0] for key in programs(graph)._programs] == [(2, 3, 32, 32)]


def test_at_most_max_programs_shapes_get_one_and_the_others_run_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onednn_graph, "MAX_PROGRAMS", 2)
    net = small_vgg11()
    graph, eager = (
        optimize_for_inference(net, dtype=torch.float32),
        optimize_for_inference(net, dtype=torch.float32, onednn_graph=False),
    )
    for size in (32, 48, 64):
        x = torch.randn(1, 3, size, size)
        for _ in range(2):
            assert torch.equal(graph(x), eager(x))
    assert len(programs(graph)) == 2
    assert [key[0] for key in programs(graph)._programs] == [(1, 3, 32, 32), (1, 3, 48, 48)]


@pytest.mark.parametrize("was", [False, True])
def test_the_fusers_process_wide_switch_is_set_back(was: bool) -> None:
    net = small_vgg11()
    graph = optimize_for_inference(net, dtype=torch.float32)
    x = torch.randn(1, 3, 32, 32)
    torch.jit.enable_onednn_fusion(was)
    try:
        graph(x)
        graph(x)
        assert len(programs(graph)) == 1
        assert torch.jit.onednn_fusion_enabled() is was
    finally:
        torch.jit.enable_onednn_fusion(False)


@pytest.mark.parametrize("error", [RuntimeError, TypeError, torch.jit.Error])
def test_a_trace_that_fails_leaves_the_model_eager_and_the_switch_as_it_was(
    error: type[Exception], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise error("tracing failed")

    monkeypatch.setattr(torch.jit, "trace", fail)
    net = small_vgg11()
    graph = optimize_for_inference(net, dtype=torch.float32)
    eager = optimize_for_inference(net, dtype=torch.float32, onednn_graph=False)
    with caplog.at_level(logging.WARNING, logger="vggnet.deploy.onednn_graph"):
        for size in (32, 32, 32, 48, 48):  # a second shape is not tried again
            x = torch.randn(1, 3, size, size)
            assert torch.equal(graph(x), eager(x))
    assert len(programs(graph)) == 0 and not graph.onednn_graph and "onednn_graph=False" in repr(graph)
    assert "no oneDNN Graph program for (1, 3, 32, 32): tracing failed; running eagerly" in caplog.text
    assert caplog.text.count("no oneDNN Graph program") == 1  # tried once for the model
    assert torch.jit.onednn_fusion_enabled() is False


def test_a_program_that_fuses_nothing_is_not_kept() -> None:
    module = nn.Sequential(nn.Flatten(), nn.Identity()).eval()
    assert onednn_graph.make_program(module, torch.randn(1, 3, 4, 4)) is None


class ScaledLinear(nn.Linear):
    """A subclass whose forward is not nn.Linear's: its trace would still be right, but it is not vouched for."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


def test_a_model_holding_a_module_the_library_does_not_know_gets_no_programs() -> None:
    net = small_vgg11()
    net.classifier = ScaledLinear(512, 10)
    assert not onednn_graph.traceable(net)
    graph = optimize_for_inference(net, dtype=torch.float32)
    assert graph._programs is None and "onednn_graph=False" in repr(graph)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(graph(x), graph(x), rtol=0, atol=0)


def test_float64_and_compiled_models_have_no_programs() -> None:
    net = small_vgg11()
    assert not optimize_for_inference(net, dtype=torch.float64).onednn_graph  # not oneDNN's fused path
    assert not optimize_for_inference(net, dtype=torch.float32, compile=True).onednn_graph


def test_copies_of_the_programs_make_their_own_for_their_own_weights() -> None:
    graph = optimize_for_inference(small_vgg11(), dtype=torch.float32)
    x = torch.randn(1, 3, 32, 32)
    graph(x)
    before = graph(x)
    made = programs(graph)
    key = next(iter(made._programs))
    for clone in (copy.deepcopy(made), pickle.loads(pickle.dumps(made))):
        assert len(clone) == 0 and clone.net is not graph.net
        with torch.no_grad():
            for p in clone.net.classifier.parameters():
                p.mul_(2)
        xs = x.contiguous(memory_format=torch.channels_last)
        for _ in range(2):
            program = clone.get(xs, key[-1])
        assert program is not None and len(clone) == 1
        with torch.no_grad():
            assert not torch.equal(program(xs), before)  # it computes its own weights
    assert torch.equal(graph(x), before)


def test_an_image_that_is_not_finite_gets_nan_logits_through_a_program() -> None:
    net = small_vgg11()
    graph, eager = (
        optimize_for_inference(net, dtype=torch.float32, batch_size=2),
        optimize_for_inference(net, dtype=torch.float32, batch_size=2, onednn_graph=False),
    )
    x = torch.randn(2, 3, 32, 32)
    x[1, 0, 5, 5] = float("nan")
    graph(x)
    got = graph(x)
    assert len(programs(graph)) == 1
    assert got[1].isnan().all() and torch.equal(got[0], eager(x)[0])


def test_two_threads_calling_a_shape_make_one_program() -> None:
    net = small_vgg11()
    graph = optimize_for_inference(net, dtype=torch.float32)
    x = torch.randn(1, 3, 32, 32)
    expected = graph(x)  # the first call: no program yet
    results: list[torch.Tensor] = []
    threads = [threading.Thread(target=lambda: results.append(graph(x))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(programs(graph)) == 1 and all(torch.equal(r, expected) for r in results)


def test_programs_are_on_by_default_and_off_when_asked() -> None:
    x = torch.randn(1, 3, 32, 32)
    default = inference.optimize_for_inference(small_vgg11(), dtype=torch.float32)
    plain = inference.optimize_for_inference(small_vgg11(), dtype=torch.float32, onednn_graph=False)
    assert "onednn_graph=True" in repr(default) and "onednn_graph=False" in repr(plain)
    for _ in range(2):
        default(x), plain(x)
    assert len(programs(default)) == 1 and plain._programs is None


@pytest.mark.parametrize("with_programs", [True, False])
def test_a_deleted_model_frees_its_weights_at_once_with_or_without_programs(with_programs: bool) -> None:
    # traced and frozen in TorchScript's process-wide unit, a program's constants (the net's own tensors)
    # would stay there until the process exits; in a unit of its own they go with the model. And they go
    # when its last reference does: the model has no reference cycle, and the one torch.jit.trace leaves
    # holding the traced module is collected when the program is made (automatic collection is off here)
    gc.collect()
    gc.disable()
    try:
        graph = optimize_for_inference(small_vgg11(), dtype=torch.float32, onednn_graph=with_programs)
        x = torch.randn(1, 3, 32, 32)
        graph(x), graph(x)
        if with_programs:
            (program,) = programs(graph)._programs.values()
            weights = {p.untyped_storage().data_ptr() for p in graph.net.parameters()}
            constants = [n.output().toIValue() for n in program.graph.nodes() if n.kind() == "prim::Constant"]
            tensors = [c for c in constants if isinstance(c, torch.Tensor)]
            assert tensors and all(t.untyped_storage().data_ptr() in weights for t in tensors)  # not copies
            del program, constants, tensors
        alive = [weakref.ref(p) for p in graph.net.parameters()]
        del graph
        assert all(ref() is None for ref in alive)
    finally:
        gc.enable()


def test_the_pool_is_skipped_as_the_eager_path_skips_it_on_the_real_map() -> None:
    # pools that round up (padding 1): 58 px -> 29 -> 15 -> 8, where halving would say 7 and skip the pool
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for cin, cout in ((3, 16), (16, 32), (32, 512)):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(3, 2, padding=1)]
    net = vggnet.VGG(nn.Sequential(*layers), num_classes=10).eval()
    net.classifier = nn.Identity()  # the 7x7 pool's output, flattened
    graph = optimize_for_inference(net, dtype=torch.float32)
    eager = optimize_for_inference(net, dtype=torch.float32, onednn_graph=False)
    for size in (58, 56):  # 56 -> 28 -> 14 -> 7: the pool is skipped, in both
        x = torch.randn(1, 3, size, size)
        for _ in range(2):
            got = graph(x)
            assert got.shape == (1, 512 * 7 * 7) and torch.equal(got, eager(x))
    assert len(programs(graph)) == 2


def test_under_cpu_autocast_calls_run_eagerly_as_the_fused_path_ignores_autocast() -> None:
    net = small_vgg11()
    graph = optimize_for_inference(net, dtype=torch.float32)
    eager = optimize_for_inference(net, dtype=torch.float32, onednn_graph=False)
    x = torch.randn(1, 3, 32, 32)
    graph(x)
    graph(x)
    assert len(programs(graph)) == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = graph(x), eager(x)
    assert got.dtype == torch.float32 and torch.equal(got, expected)


def test_a_net_with_hooks_gets_no_program_and_its_hooks_run_every_call() -> None:
    net = small_vgg11()
    graph = optimize_for_inference(net, dtype=torch.float32)
    calls: list[int] = []
    graph.net.avgpool.register_forward_hook(lambda module, args, out: calls.append(1))
    x = torch.randn(1, 3, 32, 32)
    for _ in range(3):
        graph(x)
    assert len(programs(graph)) == 0 and len(calls) == 3


def in_a_subprocess(script: str) -> dict:
    """Run `script` in a fresh interpreter (its programs' memory goes with it); it prints one JSON line."""
    proc = spawn_python(script)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


_HEADS = """
import json, sys, torch
sys.path.insert(0, ".")
from tests.helpers import HEAD_KINDS, forget_models, head_model
from vggnet.deploy.inference import optimize_for_inference
out = {{}}
for kind in HEAD_KINDS:
    net = head_model(kind)
    forget_models()  # one model at a time in memory, not nine
    for name in {dtypes}:
        # eager with its weights packed for the batch, as the program's are (packed for 1, bf16 fc6-fc7 round
        # differently at batch 2: oneDNN reorders them for another kernel)
        dtype = getattr(torch, name)
        graph = optimize_for_inference(net, dtype=dtype, batch_size=2, onednn_graph=True)
        eager = optimize_for_inference(net, dtype=dtype, batch_size=2, onednn_graph=False)
        x = torch.randn(2, 3, 64, 64)
        graph(x)
        out[f"{{kind}} {{name}}"] = [torch.equal(graph(x), eager(x)), len(graph._programs)]
        del graph, eager
    del net
print(json.dumps(out))
"""


@pytest.mark.slow
def test_every_head_runs_as_a_program_with_the_eager_logits_bit_for_bit() -> None:
    """Each head in each dtype oneDNN computes here, in one process: the nine models are built once."""
    names = [str(dtype).removeprefix("torch.") for dtype in DTYPES]
    got = in_a_subprocess(_HEADS.format(dtypes=names))
    assert got == {f"{kind} {name}": [True, 1] for kind in HEAD_KINDS for name in names}


_VGG16 = """
import json, torch, vggnet
from vggnet.deploy.inference import optimize_for_inference
dtype, batch = getattr(torch, "{dtype}"), {batch}
torch.manual_seed(0)
net = vggnet.vgg16().eval()
graph = optimize_for_inference(net, dtype=dtype, batch_size=batch, onednn_graph=True)
eager = optimize_for_inference(net, dtype=dtype, batch_size=batch, onednn_graph=False)
x = torch.randn(batch, 3, 224, 224)
graph(x)
same = torch.equal(graph(x), eager(x))
((key, program),) = graph._programs._programs.items()
plan = key[-1]
code = str(program.graph)
print(json.dumps({{"same": same, "chunk": plan.chunk, "whole_from": plan.whole_from,
                  "avgpool": "adaptive_avg_pool2d" in code, "cat": "aten::cat" in code}}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_vgg16_at_224_px_skips_the_identity_pool_in_its_program_with_the_eager_logits(dtype: torch.dtype) -> None:
    got = in_a_subprocess(_VGG16.format(dtype=str(dtype).removeprefix("torch."), batch=1))
    assert got["same"] and not got["avgpool"]  # the map is already 7x7


@pytest.mark.slow
def test_vgg16_batch_8_at_224_px_runs_in_the_eager_paths_chunks_with_its_logits() -> None:
    dtype = DTYPES[-1]  # bf16 where oneDNN computes it: two images at a time through the first steps
    got = in_a_subprocess(_VGG16.format(dtype=str(dtype).removeprefix("torch."), batch=8))
    assert got["same"] and got["whole_from"] > 0 and got["chunk"] < 8 and got["cat"]
