"""The int8 program: a converted PT2E graph lowered to oneDNN's int8 calls.

The claims: its logits are Inductor's, bit for bit (the same calls and packed weights, nothing compiled);
every convolution and fully connected layer of every head becomes a oneDNN call (test_quantize's head
matrix checks that); 7-bit activations stay within 7 bits; and what it cannot fuse runs as the converted
graph runs it.
"""

import copy
import pickle
import threading

import pytest
import torch
from torch import nn

import vggnet.deploy.onednn
from vggnet import vgg11_bn
from vggnet.deploy.onednn import Int8Program, adaptive_avg_pool_uint8, lower, quantize_uint8
from vggnet.deploy.quantize import int8_instructions, quantize
from vggnet.errors import UnsupportedError

pytestmark = [
    pytest.mark.skipif(int8_instructions() is None, reason="oneDNN has no int8 kernels on this CPU"),
]
torchao = pytest.importorskip("torchao", reason="int8 needs torchao: pip install 'vggnet[int8]'")

ONEDNN_CALLS = (torch.ops.onednn.qconv_pointwise.default, torch.ops.onednn.qlinear_pointwise.default)
FLOAT_LAYERS = (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)


def converted_graph(model: nn.Module, x: torch.Tensor, reduce_range: bool = False) -> torch.fx.GraphModule:
    """`model` through torchao's PT2E flow with the x86 Inductor quantizer, calibrated on `x`.

    For small models only: torchao's caches keep every graph they see (quantize empties them; a VGG here
    would keep its float32 weights, and every later test would pay for the memory).
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    batch = torch.export.Dim("batch", min=1, max=64)  # any batch, as quantize exports it
    exported = torch.export.export(model.eval(), (x,), dynamic_shapes=({0: batch},)).module()
    config = x86.get_default_x86_inductor_quantization_config(reduce_range=reduce_range)
    prepared = prepare_pt2e(exported, x86.X86InductorQuantizer().set_global(config))
    with torch.no_grad():
        prepared(x)
    return convert_pt2e(prepared)


def converted_vgg(x: torch.Tensor, reduce_range: bool = False) -> torch.fx.GraphModule:
    """vgg11_bn (3 classes, seeded) as `quantize` converts it, calibrated on `x`."""
    torch.manual_seed(0)
    quantized = quantize(vgg11_bn(num_classes=3).eval(), x, fallback=False, reduce_range=reduce_range)
    return quantized.program.converted


@pytest.fixture(scope="module")
def vgg_graph() -> tuple[torch.fx.GraphModule, torch.Tensor]:
    """vgg11_bn converted on two 32x32 images, and those images (channels-last)."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    return converted_vgg(x), x


def targets(program: torch.fx.GraphModule) -> list[object]:
    return [node.target for node in program.graph.nodes if node.op == "call_function"]


class Unfusable(nn.Module):
    """A convolution whose result is not quantized (sigmoid follows), then a linear layer: the float-out
    call and the nodes that run as the converted graph runs them, a view among them (it needs the
    contiguous layout the converted graph has, not the channels-last one oneDNN writes)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.sigmoid(self.conv(x))
        return self.fc(y.view(y.size(0), -1))


def test_what_cannot_be_fused_runs_as_the_converted_graph_runs_it():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    converted = converted_graph(Unfusable(), x)
    program = lower(converted, x)
    calls = targets(program)
    assert torch.ops.onednn.qconv_pointwise.default in calls  # float32 out: sigmoid reads it
    assert torch.ops.aten.sigmoid.default in calls and torch.ops.aten.view.default in calls
    assert not set(FLOAT_LAYERS) & set(calls)
    with torch.inference_mode():
        expected, got = converted(x), program(x)
    assert got.dtype == torch.float32 and got.shape == (4, 5)
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=0)  # int8 arithmetic against its float emulation


def test_vgg_becomes_onednn_calls_and_keeps_the_emulated_logits(vgg_graph):
    converted, x = vgg_graph
    program = lower(converted, x)
    calls = targets(program)
    assert calls.count(torch.ops.onednn.qconv_pointwise.default) == 8  # batch norm folded into them
    assert calls.count(torch.ops.onednn.qlinear_pointwise.default) == 3
    assert calls.count(torch.ops.quantized.max_pool2d.default) == 5
    assert not set(FLOAT_LAYERS) & set(calls)
    assert torch.ops.quantized_decomposed.dequantize_per_tensor.default not in calls  # uint8 from input to fc8
    with torch.inference_mode():
        expected, got = converted(x), program(x)
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() < 0.05 * scale


def test_int8_program_packs_once_per_shape(vgg_graph):
    converted, x = vgg_graph
    program = Int8Program(converted)
    x = torch.cat([x, x[:1]])  # 3 images: the graph takes any batch
    with torch.inference_mode():
        first = program(x)
        lowered = program.programs[tuple(x.shape)]
        torch.testing.assert_close(program(x), first, atol=0, rtol=0)
        alone = program(x[:1])
    assert program.programs[tuple(x.shape)] is lowered
    assert set(program.programs) == {(3, 3, 32, 32), (1, 3, 32, 32)}
    torch.testing.assert_close(alone, first[:1])  # packed for another batch, the same image's logits


def test_a_copy_packs_again_and_gives_the_same_logits(vgg_graph):
    """Packed weights are oneDNN's opaque tensors, which cannot be copied: a deep copy packs its own."""
    converted, x = vgg_graph
    program = Int8Program(converted)
    with torch.inference_mode():
        expected = program(x)
        clone = copy.deepcopy(program)
        assert clone.programs == {} and clone.converted is not converted
        torch.testing.assert_close(clone(x), expected, atol=0, rtol=0)


def test_an_int8_program_is_in_eval_mode_and_stays_there_without_asking_the_exported_graph(vgg_graph):
    """torch.export's modules refuse .train() and .eval() ("not supported for exported models")."""
    converted, x = vgg_graph
    program = Int8Program(converted)
    assert not program.training and program.eval() is program and not program.training
    with pytest.raises(UnsupportedError, match="inference-only: train the VGG itself, then quantize it again"):
        program.train()
    assert not program.training and not copy.deepcopy(program).training
    with torch.inference_mode():
        program(x)


def test_saving_an_int8_program_is_refused_with_the_way_out(vgg_graph, tmp_path):
    program = Int8Program(vgg_graph[0])
    with pytest.raises(UnsupportedError, match=r"cannot be saved or pickled: save the float32 model"):
        torch.save(program, tmp_path / "int8.pt")
    with pytest.raises(UnsupportedError, match="cannot be saved"):
        pickle.dumps(program)


def test_first_calls_from_two_threads_pack_each_for_its_own_batch(vgg_graph, monkeypatch):
    """The shapes each lowering packs for are its own, whatever another thread lowers at the same time."""
    converted, x = vgg_graph
    seen: list[tuple[int, int]] = []  # (the batch being lowered, the batch a weight was packed for)
    lowering = threading.local()
    lower, pack = vggnet.deploy.onednn.lower, vggnet.deploy.onednn._pack

    def spy_lower(graph, example):
        lowering.batch = len(example)
        return lower(graph, example)

    def spy_pack(graph, layer, input_shape):
        seen.append((lowering.batch, input_shape[0]))
        return pack(graph, layer, input_shape)

    monkeypatch.setattr(vggnet.deploy.onednn, "lower", spy_lower)
    monkeypatch.setattr(vggnet.deploy.onednn, "_pack", spy_pack)
    for _ in range(2):
        program = Int8Program(converted)
        batches = [x.repeat(4, 1, 1, 1), x[:1]]  # 8 images and 1
        threads = [threading.Thread(target=program, args=(batch,)) for batch in batches]
        with torch.inference_mode():
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert sorted(shape[0] for shape in program.programs) == [1, 8]
    assert len(seen) == 2 * 2 * 11 and all(batch == packed for batch, packed in seen)


class Uint8Outputs(torch.fx.Interpreter):
    """Runs a lowered program, keeping the uint8 result of every oneDNN call."""

    def __init__(self, module: torch.fx.GraphModule) -> None:
        super().__init__(module)
        self.outputs: list[torch.Tensor] = []

    def call_function(self, target, args, kwargs):
        out = super().call_function(target, args, kwargs)
        if target in ONEDNN_CALLS and out.dtype == torch.uint8:
            self.outputs.append(out)
        return out


@pytest.mark.slow
def test_seven_bit_activations_stay_within_seven_bits():
    """reduce_range (CPUs without int8 dot products): every activation in [0, 127], as the converted graph
    clamps them, including values past the calibrated range (images 3x brighter than calibration's)."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    converted = converted_vgg(x, reduce_range=True)
    bright = 3 * x
    program = lower(converted, bright)
    interpreter = Uint8Outputs(program)
    with torch.inference_mode():
        got = interpreter.run(bright)
        expected = converted(bright)
    assert len(interpreter.outputs) == 10  # 8 convolutions, fc6, fc7
    assert max(int(out.max()) for out in interpreter.outputs) == 127  # clamped, and reaching the bound
    assert (got - expected).abs().max().item() < 0.05 * expected.abs().max().item()


@pytest.mark.parametrize("qmax", [255, 127])
@pytest.mark.parametrize("shape", [(2, 3, 9, 7), (5, 11)])
def test_quantize_uint8_is_pt2es_quantize_bit_for_bit(shape, qmax):
    torch.manual_seed(0)
    scale, zero_point = 0.02, 113
    x = torch.randn(shape) * 4  # past both ends of the range
    x.view(-1)[:40] = (torch.arange(40) - 20 + 0.5) * scale  # halfway between two steps: ties round to even
    expected = torch.ops.quantized_decomposed.quantize_per_tensor.default(x, scale, zero_point, 0, qmax, torch.uint8)
    got = quantize_uint8(x, scale, zero_point, 0, qmax)
    assert torch.equal(got, expected) and int(got.max()) == qmax and int(got.min()) == 0
    if len(shape) == 4:
        assert got.is_contiguous(memory_format=torch.channels_last)  # what oneDNN's convolutions take


def test_adaptive_average_pool_of_uint8_values():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 4, 7, 7), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    assert adaptive_avg_pool_uint8(x, (7, 7), 0.1, 3, 0, 255) is x  # VGG's 7x7 pool at 224x224: nothing to do
    dequantize = torch.ops.quantized_decomposed.dequantize_per_tensor.default
    quantize = torch.ops.quantized_decomposed.quantize_per_tensor.default
    for qmax in (255, 127):
        got = adaptive_avg_pool_uint8(x, (2, 3), 0.1, 3, 0, qmax)
        pooled = torch.nn.functional.adaptive_avg_pool2d(dequantize(x, 0.1, 3, 0, 255, torch.uint8), (2, 3))
        assert torch.equal(got, quantize(pooled, 0.1, 3, 0, qmax, torch.uint8))  # as the converted graph does it
    assert int(got.max()) == 127  # averages of 0-255 clamped to 7 bits


@pytest.mark.slow
def test_the_logits_are_inductors_bit_for_bit():
    """The same int8 graph compiled by Inductor (torch.compile with freezing, as quantize did before)."""
    import torch._inductor.config as inductor_config

    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    # 8-bit activations: with 7 bits, torchao's fusion for Inductor drops the quantize's 0-127 clamp,
    # which the lowering keeps (test_seven_bit_activations_stay_within_seven_bits)
    quantized = quantize(vgg11_bn(num_classes=3).eval(), x, batch_size=2, fallback=False, reduce_range=False)
    converted = quantized.program.converted
    images = x[:2].contiguous(memory_format=torch.channels_last)
    torch._dynamo.reset()
    with torch.inference_mode(), inductor_config.patch(freezing=True):
        compiled = torch.compile(converted, dynamic=False)(images)
        got = quantized.program(images)
    torch._dynamo.reset()
    assert torch.equal(got, compiled)
