"""Winograd F(4x4, 3x3): within its error bound of the exact convolution, chosen where it applies, the
same in a program as eagerly, and its ReLU leaves no sign bit for the integer pools."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vggnet
from vggnet.deploy import inference
from vggnet.deploy.inference import optimize_for_inference
from vggnet.deploy.winograd import (
    MAX_BYTES,
    MAX_RELATIVE_ERROR,
    MIN_CHANNELS,
    MIN_TILES,
    WinogradConvReLU,
    applies,
    conv3x3_relu,
    exact_float32,
    transform_weight,
    wins,
)
from vggnet.models.vgg import make_layers


def conv(c_in: int, c_out: int, seed: int = 0, **kwargs: object) -> nn.Conv2d:
    """A seeded convolution with He-scaled weights and a bias, as a trained VGG layer's magnitudes go."""
    torch.manual_seed(seed)
    layer = nn.Conv2d(c_in, c_out, **({"kernel_size": 3, "padding": 1} | kwargs))
    with torch.no_grad():
        layer.weight.normal_(0, (2 / (9 * c_in)) ** 0.5)
        layer.bias.uniform_(-0.1, 0.1)
    return layer


def exact(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The convolution and ReLU in float64."""
    bias = None if layer.bias is None else layer.bias.double()
    return F.relu(F.conv2d(x.double(), layer.weight.double(), bias, padding=1))


@torch.no_grad()
def winograd(layer: nn.Conv2d, x: torch.Tensor, module: WinogradConvReLU | None = None) -> torch.Tensor:
    """Winograd's convolution and ReLU of `x`, whatever its shape (the module takes it only where it `wins`)."""
    m = module or WinogradConvReLU(layer)
    return conv3x3_relu(x.contiguous(memory_format=torch.channels_last), m.u, layer.bias, m.b, m.a)


# VGG's own geometries that Winograd applies to, at its map sizes and at sizes that are no multiple of 4
LAYERS = [(128, 256, 56, 56), (256, 256, 28, 28), (256, 512, 28, 28), (512, 512, 14, 14), (512, 512, 7, 7)]


@pytest.mark.parametrize("c_in, c_out, h, w", [*LAYERS, (128, 64, 13, 9)])
def test_winograd_is_within_its_bound_of_the_exact_convolution(c_in, c_out, h, w):
    layer = conv(c_in, c_out)
    x = torch.rand(1, c_in, h, w) * 2  # a ReLU's output: non-negative
    ref = exact(layer, x)
    got = winograd(layer, x)
    assert got.shape == ref.shape and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last)
    error = (got.double() - ref).abs().max().item() / ref.abs().max().item()
    assert error <= MAX_RELATIVE_ERROR
    direct = (F.relu(layer(x)).double() - ref).abs().max().item() / ref.abs().max().item()
    assert error < 50 * direct  # the same order as the direct convolution's rounding, not merely under the bound


def test_winograd_without_a_bias_and_over_a_batch_is_each_image_alone():
    layer = conv(128, 128)
    layer.bias = None
    x = torch.randn(3, 128, 10, 6)
    got = winograd(layer, x)
    ref = exact(layer, x)
    assert (got.double() - ref).abs().max().item() <= MAX_RELATIVE_ERROR * ref.abs().max().item()
    for i in range(3):  # tiles never mix images
        assert torch.equal(winograd(layer, x[i : i + 1]), got[i : i + 1])


def test_a_wrong_transform_breaks_the_bound():
    """The bound is tight enough to catch a transform one entry off (a test that can fail)."""
    layer = conv(128, 128)
    x = torch.rand(1, 128, 12, 12)
    m = WinogradConvReLU(layer)
    m.u[7] *= 1.01
    got = winograd(layer, x, m)
    ref = exact(layer, x)
    assert (got.double() - ref).abs().max().item() > MAX_RELATIVE_ERROR * ref.abs().max().item()


def test_the_relu_leaves_no_sign_bit_and_keeps_every_positive_value():
    layer = conv(128, 128)
    x = torch.randn(2, 128, 8, 8)
    x[1, 3, 2, 2], x[1, 5, 6, 1] = float("-inf"), float("inf")  # inf - inf: x86's default NaN, sign bit set
    got = winograd(layer, x)
    assert not (got.contiguous().view(torch.int32) < 0).any()  # no negative or -0 left
    assert not torch.isnan(got).any()  # nor a NaN: oneDNN's ReLU makes it +0, as here
    assert not torch.isfinite(exact(layer, x[1:])).all()  # the exact convolution: infinities
    ref = exact(layer, x[:1])
    assert ((got[0] > 0) == (ref[0] > 1e-4)).float().mean() > 0.999  # the same units are on
    assert (got[0].double() - ref[0]).abs().max() <= MAX_RELATIVE_ERROR * ref[0].abs().max()


def test_the_transformed_weight_is_four_times_the_weight_and_exact_to_float64():
    layer = conv(128, 256)
    u = transform_weight(layer.weight)
    assert u.shape == (36, 128, 256) and u.dtype == torch.float32
    assert u.numel() == 4 * layer.weight.numel()
    # a 1x1 kernel in the middle: G g G^T is then the outer product of G's middle column with itself
    w = torch.zeros(1, 1, 3, 3)
    w[0, 0, 1, 1] = 1
    g1 = torch.tensor([0, -1 / 6, 1 / 6, 1 / 12, -1 / 12, 0])
    torch.testing.assert_close(transform_weight(w).view(6, 6), torch.outer(g1, g1))


@pytest.mark.parametrize(
    "kwargs, dtype, expected",
    [
        ({}, torch.float32, True),
        ({}, torch.bfloat16, False),
        ({}, torch.float64, False),
        ({"stride": 2}, torch.float32, False),
        ({"padding": 0}, torch.float32, False),
        ({"dilation": 2, "padding": 2}, torch.float32, False),
        ({"groups": 2}, torch.float32, False),
        ({"padding_mode": "reflect"}, torch.float32, False),
        ({"kernel_size": 5, "padding": 2}, torch.float32, False),
    ],
)
def test_winograd_applies_only_to_a_plain_3x3_convolution_in_float32(kwargs, dtype, expected):
    assert applies(conv(128, 256, **kwargs), dtype) is expected


def test_winograd_applies_from_min_channels_as_the_harmonic_mean():
    assert MIN_CHANNELS == 160
    assert applies(conv(128, 256), torch.float32) and applies(conv(256, 128), torch.float32)  # 170.7
    assert applies(conv(160, 160), torch.float32) and not applies(conv(159, 160), torch.float32)
    assert not applies(conv(128, 128), torch.float32) and not applies(conv(64, 512), torch.float32)  # 128, 113.8

    class Conv(nn.Conv2d):
        pass

    assert not applies(Conv(256, 256, 3, padding=1), torch.float32)  # a subclass may compute otherwise


def test_winograd_wins_from_min_tiles_while_its_largest_buffer_stays_on_the_heap():
    assert MIN_TILES == 32 and MAX_BYTES == 32 << 20  # glibc's largest heap block
    assert wins((8, 512, 28, 28), 512) and wins((1, 256, 56, 56), 256) and wins((1, 128, 56, 56), 256)
    assert not wins((8, 256, 56, 56), 256)  # 36 x 1,568 tiles x 256 x 4 bytes: 57.8 MB
    # 36 x tiles x the larger channel count x 4 bytes: 441 tiles of 512 channels fit, 484 do not
    assert wins((1, 512, 84, 84), 512) and not wins((1, 512, 88, 88), 512)
    assert wins((1, 256, 84, 84), 512) and not wins((1, 256, 88, 88), 512) and wins((1, 256, 88, 88), 256)
    assert not wins((1, 512, 14, 14), 512) and wins((2, 512, 14, 14), 512)  # 16 and 32 tiles of 4x4
    assert not wins((8, 512, 4, 4), 512) and wins((8, 512, 7, 7), 512) and wins((8, 512, 5, 5), 512)  # 8, 32, 32


def winograd_vgg(**kwargs: object) -> vggnet.VGG:
    """A small seeded VGG whose third and fourth convolutions Winograd applies to (128 to 256, 256 to 512)."""
    torch.manual_seed(0)
    layers = make_layers([16, "M", 128, 256, "M", 512, "M"])
    return vggnet.VGG(layers, **({"num_classes": 10, "head": "gap"} | kwargs)).eval()


def test_the_optimized_model_computes_the_steps_winograd_wins_by_it_and_the_others_directly(monkeypatch):
    model = winograd_vgg()
    fast = optimize_for_inference(model, dtype=torch.float32, onednn_graph=False)
    # steps: conv 3->16, pool, conv 16->128 (too few channels), conv 128->256, pool, conv 256->512, pool
    assert sorted(fast._winograd) == [3, 5]
    calls = []
    real = inference.WinogradConvReLU.forward

    def spy(self, x):
        calls.append(tuple(x.shape))
        return real(self, x)

    monkeypatch.setattr(inference.WinogradConvReLU, "forward", spy)
    small, large = torch.randn(2, 3, 64, 64), torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        got, ref = fast(small), model(small)
        assert calls == [(2, 128, 32, 32), (2, 256, 16, 16)]
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
        calls.clear()
        got, ref = fast(large), model(large)  # 128x128: a buffer over MAX_BYTES, directly; 64x64: Winograd
        assert calls == [(1, 256, 64, 64)]
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


@pytest.mark.skipif(not inference.onednn_computes(torch.bfloat16), reason="needs oneDNN's bf16")
def test_bf16_keeps_the_direct_convolutions():
    assert optimize_for_inference(winograd_vgg(), dtype=torch.bfloat16)._winograd == {}


@pytest.mark.skipif(not inference.onednn_graph_available(), reason="needs TorchScript's oneDNN fuser")
def test_a_program_runs_winograd_and_gives_the_eager_paths_logits_bit_for_bit():
    model = winograd_vgg()
    x = torch.randn(2, 3, 48, 48)
    fast = optimize_for_inference(model, dtype=torch.float32, batch_size=2)
    with torch.no_grad():
        eager, made, again = fast(x), fast(x), fast(x)
    assert fast.onednn_graph and len(fast._programs) == 1
    program = next(iter(fast._programs._programs.values()))
    assert "aten::bmm" in str(program.graph_for(x.contiguous(memory_format=torch.channels_last)))
    assert torch.equal(eager, made) and torch.equal(made, again)
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(again, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


def test_a_deep_copy_computes_with_its_own_weights():
    fast = optimize_for_inference(winograd_vgg(), dtype=torch.float32, onednn_graph=False)
    clone = copy.deepcopy(fast)
    assert clone._winograd[3].conv is clone.net.features[5] and fast._winograd[3].conv is fast.net.features[5]
    x = torch.randn(1, 3, 64, 64)  # 32x32 maps: 64 tiles, Winograd's
    with torch.no_grad():
        assert torch.equal(clone(x), fast(x))


def test_winograd_false_keeps_the_direct_convolutions_and_the_repr_says_which():
    model = winograd_vgg()
    x = torch.randn(2, 3, 32, 32)
    on = optimize_for_inference(model, dtype=torch.float32, onednn_graph=False)
    off = optimize_for_inference(model, dtype=torch.float32, onednn_graph=False, winograd=False)
    assert on.winograd and "winograd=True" in repr(on)
    assert not off.winograd and off._winograd == {} and "winograd=False" in repr(off)
    with torch.no_grad():
        a, b, ref = on(x), off(x), model(x)
    assert not torch.equal(a, b)  # other rounding: Winograd ran in one and not the other
    for got in (a, b):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


def test_the_module_takes_the_direct_convolution_where_winograd_would_not_win():
    layer = conv(128, 128)
    m = WinogradConvReLU(layer)
    x = torch.rand(1, 128, 14, 14).contiguous(memory_format=torch.channels_last)  # 16 tiles
    with torch.no_grad():
        assert torch.equal(m(x), F.relu(layer(x)))
        assert not torch.equal(m(x), winograd(layer, x))
        y = torch.cat([x, x])  # 32 tiles
        assert torch.equal(m(y), winograd(layer, y))


@pytest.mark.skipif(not inference.onednn_graph_available(), reason="needs TorchScript's oneDNN fuser")
def test_a_chunked_batch_runs_winograd_in_the_same_chunks_in_its_program_bit_for_bit(monkeypatch):
    monkeypatch.setattr(inference, "CHUNK_BYTES", 16 * 128 * 128 * 4)  # one float32 image's conv1 output
    model = winograd_vgg()
    x = torch.randn(3, 3, 128, 128)
    fast = optimize_for_inference(model, dtype=torch.float32, batch_size=3)
    # one image at a time through all seven steps, both Winograd convolutions (64x64 and 32x32 maps) among them
    assert inference.images_per_chunk(fast.net.features, tuple(x.shape), torch.float32) == 1
    assert fast._plan(x.contiguous(memory_format=torch.channels_last)) == (1, 7)
    with torch.no_grad():
        eager, made, again = fast(x), fast(x), fast(x)
        ref = model(x)
    assert torch.equal(eager, made) and torch.equal(made, again)
    ((program),) = fast._programs._programs.values()
    code = str(program.graph)
    assert "aten::split" in code and code.count("aten::bmm") == 18  # 3 per Winograd convolution, 2 of them, 3 chunks
    torch.testing.assert_close(again, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


def test_exact_float32_is_false_under_cpu_autocast_and_reduced_matmul_precision():
    was = torch.get_float32_matmul_precision()
    try:
        assert exact_float32()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not exact_float32()
        torch.set_float32_matmul_precision("medium")  # bf16 products for float32 on oneDNN
        assert not exact_float32()
        torch.set_float32_matmul_precision("high")  # TF32: nothing on CPUs
        assert exact_float32()
    finally:
        torch.set_float32_matmul_precision(was)


@pytest.mark.parametrize("setting", ["autocast", "medium precision"])
def test_where_products_would_not_be_float32_the_convolutions_run_directly(setting, monkeypatch):
    model = winograd_vgg()
    x = torch.randn(2, 3, 64, 64)
    fast = optimize_for_inference(model, dtype=torch.float32, batch_size=2)
    direct = optimize_for_inference(model, dtype=torch.float32, batch_size=2, winograd=False, onednn_graph=False)
    layer = fast._winograd[3]
    was = torch.get_float32_matmul_precision()
    with torch.no_grad():
        ref, exact = model(x), fast(x)
        fast(x)  # a program made, with Winograd in it
        assert len(fast._programs) == 1
        y = torch.rand(2, 128, 32, 32).contiguous(memory_format=torch.channels_last)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=setting == "autocast"):
                if setting == "medium precision":
                    torch.set_float32_matmul_precision("medium")
                got = fast(x)
                alone, expected = layer(y), F.relu(layer.conv(y))
        finally:
            torch.set_float32_matmul_precision(was)
        assert torch.equal(got, direct(x))  # the eager path's direct convolutions, no program
        assert torch.equal(alone, expected)
        assert not torch.equal(got, exact)  # Winograd's rounding otherwise
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


def test_with_autograd_on_the_module_runs_directly():
    layer = conv(128, 256)
    m = WinogradConvReLU(layer)
    x = torch.rand(2, 128, 16, 16).contiguous(memory_format=torch.channels_last)
    out = m(x)  # grad enabled: conv3x3_relu's out= would refuse the bias that requires grad
    assert out.requires_grad and torch.equal(out, F.relu(layer(x)))
