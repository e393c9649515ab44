"""fold_batchnorm and optimize_for_inference: same outputs as eager, every model, any size >= 32; refusals."""

import ast
import copy
import ctypes
import gc
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import vggnet
from tests.helpers import HEAD_KINDS, arch_matrix, head_model, randomize_batchnorm
from tests.reference import ARCHS, LAYOUT
from vggnet.deploy import inference as inference
from vggnet.deploy.inference import (
    CUDA_GRAPH_MAX_BATCH,
    InferenceVGG,
    _onednn_head,
    fold_batchnorm,
    optimize_for_inference,
)
from vggnet.models.vgg import make_layers

BN_ARCHS = [a for a in ARCHS if a.endswith("_bn")]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def seeded_model(arch: str, seed: int = 0) -> vggnet.VGG:
    """Random weights, and for _bn models non-trivial running statistics and affine parameters."""
    torch.manual_seed(seed)
    model = vggnet.get_model(arch, num_classes=10)
    return randomize_batchnorm(model, mean=0.5, var=(0.5, 2.0), affine=True).eval()


def assert_close_fp32(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.dtype == ref.dtype and out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


def assert_close_low_precision(out: torch.Tensor, ref: torch.Tensor) -> None:
    """bf16 keeps 8 bits of mantissa: allow 5% of the logits' range, and demand the same direction."""
    assert out.shape == ref.shape
    scale = ref.abs().max().item()
    assert (out.float() - ref).abs().max().item() <= 0.05 * scale
    assert nn.functional.cosine_similarity(out.float().flatten(), ref.flatten(), dim=0) > 0.999


# --- fold_batchnorm ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", arch_matrix(BN_ARCHS))
@pytest.mark.slow
def test_fold_batchnorm_gives_the_same_outputs_and_keeps_the_conv_keys(arch):
    model = seeded_model(arch)
    before = copy.deepcopy(model.state_dict())
    folded = fold_batchnorm(model)
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        assert_close_fp32(folded(x), model(x))
    # the BatchNorms are gone, replaced in place, so every conv keeps its index and key
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    length, convs, _ = LAYOUT[arch]
    assert len(folded.features) == length
    assert [i for i, m in enumerate(folded.features) if isinstance(m, nn.Conv2d)] == convs
    assert all(isinstance(folded.features[i + 1], nn.Identity) for i in convs)
    keys = set(folded.state_dict())
    assert keys == {k for k in before if not any(k.startswith(f"features.{i + 1}.") for i in convs)}
    # the original is untouched
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.slow
def test_fold_batchnorm_uses_the_running_statistics_whatever_the_mode():
    model = seeded_model("vgg11_bn").train()
    folded = fold_batchnorm(model)
    assert not folded.training and model.training
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert_close_fp32(folded(x), model.eval()(x))


@pytest.mark.slow
def test_fold_batchnorm_of_a_plain_model_is_an_independent_eval_copy():
    model = seeded_model("vgg11").train()
    folded = fold_batchnorm(model)
    assert folded is not model and not folded.training
    assert list(folded.state_dict()) == list(model.state_dict())
    assert folded.features[0].weight.data_ptr() != model.features[0].weight.data_ptr()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(folded(x), model.eval()(x))


@pytest.mark.slow
def test_fold_batchnorm_without_conv_bias_and_without_affine():
    layers = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8, affine=False), nn.ReLU())
    model = vggnet.VGG(
        nn.Sequential(*layers, *make_layers([512, "M", "M", "M", "M", "M"], in_channels=8)), init_weights=False
    )
    with torch.no_grad():
        model.features[1].running_mean.uniform_(-1, 1)
        model.features[1].running_var.uniform_(0.5, 2)
    model.eval()
    folded = fold_batchnorm(model)
    assert folded.features[0].bias is not None
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_close_fp32(folded(x), model(x))


@pytest.mark.slow
def test_fold_batchnorm_refuses_what_it_cannot_fold():
    no_stats = vggnet.VGG(nn.Sequential(nn.Conv2d(3, 512, 3), nn.BatchNorm2d(512, track_running_stats=False)))
    with pytest.raises(ValueError, match="without running statistics"):
        fold_batchnorm(no_stats)
    orphan = vggnet.VGG(nn.Sequential(nn.Conv2d(3, 512, 3), nn.ReLU(), nn.BatchNorm2d(512)))
    with pytest.raises(ValueError, match="must follow a Conv2d, it follows ReLU"):
        fold_batchnorm(orphan)


# --- optimize_for_inference -------------------------------------------------------------------------


@pytest.mark.parametrize("arch", arch_matrix(ARCHS))
@pytest.mark.slow
def test_optimized_matches_eager_in_fp32_and_bf16(arch):
    model = seeded_model(arch)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        ref = model(x)
    fast = optimize_for_inference(model, dtype=torch.float32)
    assert fast.dtype == torch.float32 and fast.device.type == "cpu" and not fast.compiled
    assert_close_fp32(fast(x), ref)
    half = optimize_for_inference(model, dtype=torch.bfloat16)
    out = half(x)
    assert out.dtype == torch.float32  # the logits come back in the input's dtype
    assert_close_low_precision(out, ref)


@pytest.mark.slow
def test_optimized_is_folded_channels_last_frozen_and_leaves_the_model_alone():
    model = seeded_model("vgg11_bn").train()
    fast = optimize_for_inference(model, dtype=torch.float32)
    assert isinstance(fast, InferenceVGG) and isinstance(fast, nn.Module)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert all(not p.requires_grad for p in fast.parameters())
    assert fast.net.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not fast.net.training
    # the caller's model keeps its mode, BatchNorms, gradients and layout
    assert model.training and isinstance(model.features[1], nn.BatchNorm2d)
    assert all(p.requires_grad for p in model.parameters())
    assert model.features[0].weight.is_contiguous()
    out = fast(torch.randn(1, 3, 32, 32))
    assert not out.requires_grad
    assert fast.eval() is fast
    with pytest.raises(RuntimeError, match="inference-only"):
        fast.train()


@pytest.mark.parametrize(
    ("height", "width"), [(32, 32), (33, 47), (63, 64), (97, 161), (224, 224), (255, 97), (300, 230)]
)
@pytest.mark.slow
def test_optimized_matches_eager_at_any_size_from_32(height, width):
    model = seeded_model("vgg11_bn")
    fast = optimize_for_inference(model, dtype=torch.float32)
    x = torch.randn(1, 3, height, width)
    with torch.no_grad():
        assert_close_fp32(fast(x), model(x))


@pytest.mark.slow
def test_the_adaptive_pool_runs_only_when_the_map_is_not_already_7x7():
    model = seeded_model("vgg11")
    fast = optimize_for_inference(model, dtype=torch.float32)
    calls = []
    fast.net.avgpool.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        for size, pooled in [(224, False), (230, False), (256, True), (64, True), (225, False)]:
            calls.clear()
            x = torch.randn(1, 3, size, size)
            assert_close_fp32(fast(x), model(x))
            assert bool(calls) is pooled, size  # 224..255 px -> a 7x7 map after pool5


@pytest.mark.slow
def test_a_replaced_pool_is_always_run():
    model = seeded_model("vgg11")
    model.avgpool = nn.Sequential(nn.AdaptiveAvgPool2d(7), nn.Hardtanh(-0.01, 0.01))
    fast = optimize_for_inference(model, dtype=torch.float32)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert_close_fp32(fast(x), model(x))


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.slow
def test_the_onednn_classifier_matches_the_plain_one_and_runs_at_any_batch(batch, monkeypatch):
    model = seeded_model("vgg11")
    fast = optimize_for_inference(model, dtype=torch.float32)
    assert fast._onednn_classifier
    half = optimize_for_inference(model, dtype=torch.bfloat16)
    assert half._onednn_classifier == torch.ops.mkldnn._is_mkldnn_bf16_supported()  # with prepacked weights
    x = torch.randn(batch, 25088)
    with torch.no_grad():
        expected = model.classifier(x)
    got = _onednn_head(fast.net.classifier, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    seen = []

    def spy(classifier: nn.Module, x: torch.Tensor, packed: dict | None = None) -> torch.Tensor:
        seen.append(x.shape[0])
        return _onednn_head(classifier, x, packed)

    monkeypatch.setattr(inference, "_onednn_head", spy)
    fast(torch.randn(batch, 3, 32, 32))
    assert seen == [batch]


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")
@pytest.mark.parametrize("arch", ["vgg16", "vgg16_bn"])
@pytest.mark.slow
def test_on_cpu_each_convolution_runs_with_its_relu_fused(arch):
    fast = optimize_for_inference(seeded_model(arch), dtype=torch.float32)
    assert fast._steps is not None
    fused = [m for m, relu_fused in fast._steps if relu_fused]
    assert len(fused) == 13 and all(isinstance(m, nn.Conv2d) for m in fused)
    assert [type(m) for m, relu_fused in fast._steps if not relu_fused] == [nn.MaxPool2d] * 5
    assert optimize_for_inference(seeded_model(arch), compile=True)._steps is None  # inductor fuses itself


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
@pytest.mark.slow
def test_dtypes_onednn_does_not_compute_here_run_on_torchs_kernels(dtype):
    model = seeded_model("vgg11_bn")
    fast = optimize_for_inference(model, dtype=dtype)
    mkldnn_fp16 = torch.ops.mkldnn._is_mkldnn_fp16_supported()
    assert (fast._steps is not None) == (dtype == torch.float16 and mkldnn_fp16)
    x = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        ref = model(x)
    out = fast(x)
    assert out.dtype == torch.float32
    if dtype == torch.float64:
        assert_close_fp32(out, ref)
    else:
        assert_close_low_precision(out, ref)


def test_on_a_cpu_with_native_bf16_the_default_is_bf16_and_the_repr_says_so(monkeypatch):
    model = seeded_model("vgg11")
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: True)
    fast = optimize_for_inference(model)
    assert fast.dtype == torch.bfloat16
    assert "dtype=torch.bfloat16 (this CPU's default" in repr(fast) and "dtype=torch.float32 for float32" in repr(fast)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_close_low_precision(fast(x), model(x))
    exact = optimize_for_inference(model, dtype=torch.float32)  # float32 one argument away, and no note
    assert exact.dtype == torch.float32 and "default" not in repr(exact).splitlines()[1]
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: False)
    assert optimize_for_inference(model).dtype == torch.float32


def test_native_bf16_follows_the_cpus_instructions():
    caps = torch.cpu.get_capabilities()
    native = bool(caps.get("avx512_bf16") or caps.get("amx_bf16")) and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert inference.cpu_has_native_bf16() == native
    assert inference.default_dtype(torch.device("cpu")) == (torch.bfloat16 if native else torch.float32)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weights_are_prepacked_once_and_any_shape_still_matches(dtype):
    # Without prepacking oneDNN reorders each weight on every call (a third of a bf16 batch 1).
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN computes no bf16 here")
    model = seeded_model("vgg11_bn")
    fast = optimize_for_inference(model, dtype=dtype, batch_size=2)
    assert sorted(fast._packed_convs) == [i for i, (m, fused) in enumerate(fast._steps or []) if fused]
    assert len(fast._packed_convs) == 8 and sorted(fast._packed_linears) == [0, 3, 6]
    assert all(w.is_mkldnn for w in [*fast._packed_convs.values(), *fast._packed_linears.values()])
    assert set(fast.state_dict()) == {f"net.{k}" for k in fold_batchnorm(model).state_dict()}  # copies: not state
    check = assert_close_fp32 if dtype == torch.float32 else assert_close_low_precision
    for shape in [(2, 3, 32, 32), (3, 3, 40, 56)]:  # the packed batch and another
        x = torch.randn(shape)
        with torch.no_grad():
            check(fast(x), model(x))


@pytest.mark.parametrize(
    ("shape", "dtype", "expected"),
    [
        ((8, 3, 224, 224), torch.bfloat16, 2),  # conv1_1's output: 6.4 MB an image
        ((8, 3, 224, 224), torch.float32, 1),  # 12.8 MB
        ((8, 3, 64, 64), torch.float32, 8),  # 1 MB: the whole batch
        ((100, 3, 64, 64), torch.float32, 16),
        ((2, 3, 1024, 1024), torch.bfloat16, 1),  # never fewer than one
        ((8, 1, 224, 224), torch.bfloat16, 2),  # the first convolution's output decides, not the input
    ],
)
def test_images_per_chunk_keeps_the_largest_activation_within_chunk_bytes(shape, dtype, expected):
    with torch.device("meta"):
        features = vggnet.vgg16(in_chans=shape[1]).features
    assert inference.images_per_chunk(features, shape, dtype) == expected
    per_image = 64 * shape[2] * shape[3] * dtype.itemsize
    assert expected == 1 or expected * per_image <= inference.CHUNK_BYTES


@pytest.mark.parametrize(
    ("shape", "dtype", "expected"),
    [
        ((8, 3, 224, 224), torch.bfloat16, 6),  # after pool2: conv3's outputs, 12.8 MB for the batch
        ((8, 3, 224, 224), torch.float32, 10),  # after pool3
        ((1, 3, 224, 224), torch.float32, 0),  # one image's activations all fit: nothing is chunked
        ((2, 3, 1024, 1024), torch.bfloat16, 14),  # after pool4
        ((64, 3, 1024, 1024), torch.float32, 18),  # not even pool5's output: all chunked
    ],
)
def test_whole_batch_from_is_the_first_step_after_which_every_activation_of_the_batch_fits(shape, dtype, expected):
    with torch.device("meta"):
        features = vggnet.vgg16().features
    first = inference.whole_batch_from(features, shape, dtype)
    assert first == expected
    steps = inference._fused_steps(features)
    assert first == 0 or isinstance(steps[first - 1][0], nn.MaxPool2d)
    sizes = [math.prod(s) * dtype.itemsize * shape[0] for s in inference._input_shapes(steps, *shape[1:])]
    assert max(sizes[first:]) <= inference.CHUNK_BYTES or first == len(steps)
    assert first == 0 or sizes[first - 1] > inference.CHUNK_BYTES


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")
def test_a_large_batch_runs_its_features_in_chunks_and_the_classifier_once_with_the_same_logits(monkeypatch):
    # the chunks keep each activation a heap block (not a fresh mmap, page-faulted in on every call)
    model = seeded_model("vgg11_bn")
    x = torch.randn(5, 3, 32, 32)
    whole = optimize_for_inference(model, dtype=torch.float32)
    with torch.no_grad():
        expected = whole(x)
    monkeypatch.setattr(inference, "CHUNK_BYTES", 2 * 64 * 32 * 32 * 4)  # two images' conv1_1 output
    seen, heads = [], []
    run_steps, head = inference._run_steps, inference._onednn_head

    def spy_steps(steps, x, packed, start=0, int_pools=False, winograd=None):
        seen.append((len(x), start, len(steps)))
        return run_steps(steps, x, packed, start, int_pools, winograd)

    monkeypatch.setattr(inference, "_run_steps", spy_steps)
    monkeypatch.setattr(inference, "_onednn_head", lambda c, x, packed: heads.append(len(x)) or head(c, x, packed))
    chunked = optimize_for_inference(model, dtype=torch.float32, batch_size=5)
    assert all(w.is_mkldnn for w in chunked._packed_convs.values()) and len(chunked._packed_convs) == 8
    with torch.no_grad():
        got = chunked(x)
    # conv1 and conv2 with their pools (4 steps) in chunks of 2, 2, 1; from conv3 on (256 x 8 x 8 floats an
    # image) the whole batch fits and the deeper weights are read once; fc6's too
    assert seen == [(2, 0, 4), (2, 0, 4), (1, 0, 4), (5, 4, 9)] and heads == [5]
    assert_close_fp32(got, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 64, 32, 32), (1, 3, 5, 7), (3, 16, 9, 4), (1, 8, 2, 2)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_the_2x2_max_pool_gives_atens_values_nan_included_and_layout(dtype, shape, channels_last):
    x = torch.randn(shape).to(dtype)
    x[0, 0, 0, 0] = float("nan")
    x[-1, -1, -1, -1] = float("-inf")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got, expected = inference._max_pool_2x2(x), nn.functional.max_pool2d(x, 2, 2)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
    assert got.is_contiguous(memory_format=torch.channels_last) == expected.is_contiguous(
        memory_format=torch.channels_last
    )


@pytest.fixture
def trimmed() -> Iterator[None]:
    """Hand what the test freed back to the system: glibc keeps freed model-sized blocks, and a process
    past the conftest's 2 GiB mark collects garbage after every later test (a minute of the quick run)."""
    yield
    gc.collect()
    if inference._on_glibc():
        ctypes.CDLL(None).malloc_trim(0)


def small_vgg11(**kwargs: object) -> vggnet.VGG:
    """A seeded vgg11 with a small head (the pools are in the features), built afresh: nothing kept between tests."""
    torch.manual_seed(0)
    return vggnet.vgg11(**({"num_classes": 10, "head": "gap"} | kwargs)).eval()


BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
# the dtypes this CPU's oneDNN computes, where optimize_for_inference may take integer pools
ONEDNN_DTYPES = [d for d in BITS if inference.onednn_computes(d)]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(BITS[t.dtype])


@pytest.mark.parametrize("dtype", list(BITS))
@pytest.mark.parametrize("shape", [(2, 64, 32, 32), (1, 3, 5, 7), (3, 16, 9, 4)])
def test_the_integer_pool_gives_the_float_pools_bits_on_what_a_fused_relu_writes(dtype, shape):
    x = torch.randn(shape).relu().mul(1e3).to(dtype).contiguous(memory_format=torch.channels_last)
    x[0, 0, :2, :2] = torch.tensor([[0.0, 1e-40], [float("inf"), 3.0]]).to(dtype)  # +0, denormal, +inf
    x[-1, -1, -2:, -2:] = 0.0
    got, expected = inference._max_pool_2x2(x, as_int=True), inference._max_pool_2x2(x)
    assert torch.equal(bits(got), bits(expected)) and got.dtype == dtype
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_the_integer_pool_is_wrong_where_the_sign_bit_is_set_which_is_why_each_layer_is_checked():
    x = torch.tensor([-1.0, -2.0, -0.0, 0.5]).view(1, 1, 2, 2)
    assert inference._max_pool_2x2(x, as_int=True).item() == 0.5  # a positive still wins
    x = torch.tensor([-1.0, -2.0, -3.0, -4.0]).view(1, 1, 2, 2)
    assert inference._max_pool_2x2(x, as_int=True).item() == -4.0  # not the maximum: bits, not values
    assert inference._max_pool_2x2(x).item() == -1.0
    x = torch.tensor([1.0, 2.0, 3.0, -math.nan]).view(1, 1, 2, 2)  # a NaN with the sign bit set loses
    assert inference._max_pool_2x2(x, as_int=True).item() == 3.0 and inference._max_pool_2x2(x).isnan().all()


def test_has_sign_bit_sees_negative_zero_and_negative_nans():
    # NaNs by their bits: -math.nan and inf * 0 have the sign bit set; torch's conversion to bf16 writes 0xFFFF
    nans = torch.tensor([0x7FC00000, 0xFFC00001 - (1 << 32)], dtype=torch.int32).view(torch.float32)
    positive_nan, negative_nan = nans[:1], nans[1:]
    assert inference._has_sign_bit(torch.tensor([0.0, -0.0]))
    assert inference._has_sign_bit(negative_nan)
    assert inference._has_sign_bit(torch.tensor([1.0, -2.0]).to(torch.bfloat16))
    assert inference._has_sign_bit(torch.tensor([math.nan]).to(torch.bfloat16))
    assert not inference._has_sign_bit(torch.cat([torch.tensor([0.0, 1.0, float("inf")]), positive_nan]))
    assert not inference._has_sign_bit(torch.tensor([0x7FC0, 0, 0x7F80], dtype=torch.int16).view(torch.bfloat16))


@pytest.mark.usefixtures("trimmed")
def test_onednns_fused_relu_clears_the_sign_bit_here_and_the_probe_can_say_no(monkeypatch):
    assert inference.fused_relu_clears_sign(torch.float32)  # the JIT kernels: max(x, 0)
    assert inference.fused_relu_clears_sign(torch.float32, nn.Conv2d(3, 64, 3, padding=1), 224)
    assert inference.fused_relu_clears_sign(torch.bfloat16) == inference.onednn_computes(torch.bfloat16)
    assert not inference.fused_relu_clears_sign(torch.float64)
    seen = []
    monkeypatch.setattr(inference, "_has_sign_bit", lambda y: seen.append(y) or True)
    inference._probe_fused_relu.cache_clear()
    try:
        assert not inference.fused_relu_clears_sign(torch.float32)
        (y,) = seen  # the probe's output: NaNs and negatives before the ReLU, none after it, -0 included
        assert y.shape == (1, 64, 8, 8) and not torch.isnan(y).any() and (y.view(torch.int32) >= 0).all()
        assert (y == 0).any() and (y > 0).any()
        model = optimize_for_inference(small_vgg11(), dtype=torch.float32)
        assert model._int_pools == frozenset()
    finally:
        inference._probe_fused_relu.cache_clear()


@pytest.mark.usefixtures("trimmed")
def test_each_pool_is_checked_against_the_convolution_before_it(monkeypatch):
    checked = []
    real = inference.fused_relu_clears_sign

    def spy(dtype, conv=None, size=8):
        checked.append((conv.in_channels, conv.out_channels, size))
        return real(dtype, conv, size) and conv.out_channels != 128  # no for conv2 only

    monkeypatch.setattr(inference, "fused_relu_clears_sign", spy)
    model = optimize_for_inference(small_vgg11(), dtype=torch.float32)
    # vgg11's fused steps: conv1 pool conv2 pool conv3 conv4 pool conv5 conv6 pool conv7 conv8 pool
    assert model._int_pools == frozenset({1, 6, 9, 12})
    # each convolution before a pool, once per geometry (conv6 and conv8 share one), at 8x8
    assert sorted(set(checked)) == [(3, 64, 8), (64, 128, 8), (256, 256, 8), (512, 512, 8)]


@pytest.mark.usefixtures("trimmed")
@pytest.mark.parametrize("dtype", ONEDNN_DTYPES)
def test_the_integer_pools_leave_every_logit_bit_unchanged(dtype, monkeypatch):
    model = small_vgg11()  # the pools are in the features: a small head keeps the test quick
    x = torch.randn(5, 3, 64, 64)
    x[0, :, 3, 3], x[1, 0, 10, 11], x[2, 2, 5:9, 5:9] = float("inf"), float("-inf"), float("nan")
    monkeypatch.setattr(inference, "CHUNK_BYTES", 2 * 64 * 64 * 64 * dtype.itemsize)  # chunks, then whole
    fast = optimize_for_inference(model, dtype=dtype)
    plain = optimize_for_inference(model, dtype=dtype)
    plain._int_pools = frozenset()
    if fast._int_pools != frozenset({1, 3, 6, 9, 12}):
        pytest.skip(f"oneDNN's fused ReLU here leaves sign bits in {dtype} before some pools")
    taken, pooled = [], []
    real = inference._max_pool_2x2

    def spy(x, as_int=False):
        taken.append(as_int)
        pooled.append(inference._has_sign_bit(x))
        return real(x, as_int)

    monkeypatch.setattr(inference, "_max_pool_2x2", spy)
    with torch.no_grad():
        got, expected = fast(x), plain(x)
    assert taken == [True] * (3 * 2 + 3) + [False] * (3 * 2 + 3)  # 3 chunks x 2 pools, then 3
    assert not any(pooled)  # what every pool took in: no sign bit, so the two pools agree
    assert torch.equal(bits(got), bits(expected))


_GRAYSCALE_ON_AVX = """
import math, torch, vggnet
from vggnet.deploy import inference
torch.manual_seed(0)
net = vggnet.vgg11(in_chans=1, num_classes=4, head="gap").eval()
with torch.no_grad():  # conv1's centre tap only: each output pixel sees one input pixel
    w = net.features[0].weight; c = w[:, :, 1, 1].clone(); w.zero_(); w[:, :, 1, 1] = c
fast = inference.optimize_for_inference(net, dtype=torch.float32)
plain = inference.optimize_for_inference(net, dtype=torch.float32); plain._int_pools = frozenset()
x = torch.randn(1, 1, 32, 32)
x[0, 0, 5, 5] = -math.nan
with torch.no_grad():
    same = torch.equal(fast(x).view(torch.int32), plain(x).view(torch.int32))
print(sorted(fast._int_pools), same)
"""


@pytest.mark.slow
@pytest.mark.skipif(not inference._on_glibc(), reason="a Linux check of oneDNN's kernels")
def test_a_kernel_that_keeps_sign_bits_gets_the_float_pool():
    # Capped at AVX, oneDNN runs a one-channel first convolution as a GEMM whose ReLU writes -0 and keeps
    # NaNs (an independent review's find); that layer's pool must compare values, with the same logits.
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX"}
    cmd = [sys.executable, "-c", _GRAYSCALE_ON_AVX]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    pools, same = out.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert same == "True"
    pools = ast.literal_eval(pools)
    assert 1 not in pools and pools  # not after conv1; after the 64-channel and wider ones, bits


@pytest.mark.usefixtures("trimmed")
@pytest.mark.parametrize("dtype", ONEDNN_DTYPES)
def test_an_image_that_is_not_finite_gets_nan_logits_as_in_eager_the_others_their_own(dtype):
    model = small_vgg11()
    x = torch.randn(4, 3, 32, 32)
    x[1, 0, 5, 5], x[2, 2, 7, 7], x[3, 1, 0, 0] = math.nan, math.inf, -math.inf
    fast = optimize_for_inference(model, dtype=dtype)
    with torch.no_grad():
        got, eager, alone = fast(x), model(x), fast(x[:1])
    assert torch.isnan(eager[1:]).all() and torch.isnan(got[1:]).all()  # every logit, as eager gives
    assert torch.isfinite(got[0]).all()
    rtol, atol = (1e-4, 1e-5) if dtype == torch.float32 else (2e-2, 1e-3)  # a batch of 1 gets other kernels
    torch.testing.assert_close(got[:1], alone, rtol=rtol, atol=atol)


@pytest.mark.usefixtures("trimmed")
def test_a_feature_map_of_an_image_that_is_not_finite_is_nan_throughout():
    model = small_vgg11(num_classes=0, global_pool="")
    x = torch.randn(2, 3, 32, 32)
    x[1, 0, 3, 3] = math.nan
    with torch.no_grad():
        got = optimize_for_inference(model, dtype=torch.float32)(x)
    assert got.shape == (2, 512, 1, 1) and torch.isnan(got[1]).all() and torch.isfinite(got[0]).all()


def test_mark_non_finite_looks_image_by_image_only_when_the_sum_is_not_finite():
    huge = torch.full((2, 3, 4, 4), 3e38)  # finite, but their float32 sum is not
    out = torch.zeros(2, 5)
    assert inference.mark_non_finite(huge, out) is out and torch.equal(out, torch.zeros(2, 5))
    huge[1, 0, 0, 0] = math.inf
    assert inference.mark_non_finite(huge, out).isnan().tolist() == [[False] * 5, [True] * 5]


def test_only_vggs_own_pools_take_the_strided_maximum(monkeypatch):
    taken = []
    real = inference._max_pool_2x2
    monkeypatch.setattr(inference, "_max_pool_2x2", lambda x, as_int=False: taken.append(x.shape) or real(x, as_int))
    x = torch.randn(1, 4, 6, 6)
    pools = [
        nn.MaxPool2d(2, 2),
        nn.MaxPool2d((2, 2), stride=(2, 2)),
        nn.MaxPool2d(2, 2, ceil_mode=True),
        nn.MaxPool2d(3, 2),
        nn.MaxPool2d(2, 1),
        nn.MaxPool2d(2, 2, padding=1),
        nn.AvgPool2d(2, 2),
    ]
    for pool in pools:
        torch.testing.assert_close(inference._run_steps([(pool, False)], x), pool(x), rtol=0, atol=0)
    assert taken == [x.shape, x.shape]


def test_onednn_computes_float32_always_and_float64_never():
    assert inference.onednn_computes(torch.float32)
    assert not inference.onednn_computes(torch.float64)
    assert inference.onednn_computes(torch.bfloat16) == torch.ops.mkldnn._is_mkldnn_bf16_supported()


_GLIBC = inference._on_glibc()
_MALLINFO = """
import ctypes
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def mapped(mib):  # whether glibc serves a block of `mib` MiB with its own mmap
    before = libc.mallinfo2().hblks
    block = libc.malloc(mib << 20)
    after = libc.mallinfo2().hblks
    libc.free(block)
    return after > before
"""


@pytest.mark.parametrize("confstr", [ValueError("unrecognized configuration name"), OSError(22, "EINVAL"), None, ""])
def test_without_glibc_keep_activations_on_heap_does_nothing(monkeypatch, confstr):
    # macOS has no CS_GNU_LIBC_VERSION (ValueError), musl may refuse it or answer nothing
    def fake(name):
        if isinstance(confstr, Exception):
            raise confstr
        return confstr

    monkeypatch.setattr(inference.os, "confstr", fake)
    monkeypatch.setattr(inference.ctypes, "CDLL", lambda *a: pytest.fail("no C library should be touched"))
    assert inference._on_glibc() is False
    assert inference.keep_activations_on_heap.__wrapped__() is False
    monkeypatch.delattr(inference.os, "confstr")  # Windows
    assert inference._on_glibc() is False


@pytest.mark.skipif(not _GLIBC, reason="glibc's mmap threshold")
def test_keep_activations_on_heap_raises_glibcs_mmap_threshold_in_a_fresh_process():
    script = _MALLINFO + (
        "from vggnet.deploy.inference import keep_activations_on_heap\n"
        "assert mapped(24)  # a fresh process maps a 24 MiB block (and the threshold rises to 24 MiB)\n"
        "assert keep_activations_on_heap()\n"
        "assert not mapped(28) and not mapped(12), 'still mapped after keep_activations_on_heap'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (_GLIBC and inference.cpu_has_native_bf16()), reason="measured with glibc, in bf16")
def test_a_warm_call_in_a_fresh_process_page_faults_nothing():
    # Nothing a warm call allocates is mapped afresh: a block over glibc's largest heap block (32 MiB), or
    # under a threshold left low (keep_activations_on_heap, tested above; without it a fresh process once
    # page-faulted 76,500 pages in two bf16 batch-8 vgg16 calls, 178 ms each instead of 128), would be on
    # every call (a 40 MiB block per call: 10,241 faults each). Under the load of the whole suite a call
    # now and then faults one activation in afresh (3,136 pages, one 12.8 MB bf16 tensor, in one CI run;
    # 5,056 and 6,272 in two calls in others), so the median of five calls is what counts.
    script = (
        "import resource, torch, vggnet\n"
        "from vggnet.deploy.inference import optimize_for_inference\n"
        "fast = optimize_for_inference(vggnet.vgg16().eval(), dtype=torch.bfloat16, batch_size=8)\n"
        "x = torch.randn(8, 3, 224, 224)\n"
        "faults = []\n"
        "with torch.inference_mode():\n"
        "    fast(x); fast(x)\n"
        "    for _ in range(5):\n"
        "        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "        fast(x)\n"
        "        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
        "print(*faults)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    faults = [int(count) for count in done.stdout.split()[-5:]]
    assert statistics.median(faults) < 128, f"page faults in five warm calls: {faults}"


@pytest.mark.slow
def test_the_input_is_copied_asynchronously_only_towards_a_gpu(monkeypatch):
    # A GPU-to-CPU copy with non_blocking=True may not have landed when the CPU kernels read it.
    fast = optimize_for_inference(seeded_model("vgg11"), dtype=torch.float32)
    calls = []
    real_to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("non_blocking"))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    fast(torch.randn(1, 3, 32, 32))
    assert calls and calls[0] is False


@pytest.mark.slow
def test_bf16_on_a_cpu_without_onednn_bf16_runs_unfused(tmp_path):
    # oneDNN limited to AVX2 (the instruction set of CPUs without AVX-512) refuses bf16 convolutions:
    # the fused path must not be taken there, and the model must still run.
    script = (
        "import torch, vggnet\n"
        "from vggnet.deploy.inference import optimize_for_inference\n"
        "assert not torch.ops.mkldnn._is_mkldnn_bf16_supported()\n"
        "torch.manual_seed(0)\n"
        "model = vggnet.vgg11(num_classes=10).eval()\n"
        "fast = optimize_for_inference(model, dtype=torch.bfloat16)\n"
        "assert fast._steps is None\n"
        "assert optimize_for_inference(model).dtype == torch.float32  # no native bf16: float32 by default\n"
        "x = torch.randn(1, 3, 32, 32)\n"
        "out, ref = fast(x), model(x).detach()\n"
        "assert (out - ref).abs().max() <= 0.05 * ref.abs().max(), (out, ref)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_convolutions_that_cannot_take_their_relu_run_as_they_are():
    model = seeded_model("vgg11")
    model.features[1] = nn.Tanh()  # conv1 no longer followed by a ReLU
    model.features[3].padding_mode = "reflect"  # conv2 pads with something oneDNN does not
    fast = optimize_for_inference(model, dtype=torch.float32)
    assert fast._steps is not None
    assert [relu_fused for m, relu_fused in fast._steps if isinstance(m, nn.Conv2d)] == [False, False] + [True] * 6
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        assert_close_fp32(fast(x), model(x))


@pytest.mark.slow
def test_input_is_converted_and_the_output_keeps_its_dtype():
    model = seeded_model("vgg11")
    fast = optimize_for_inference(model, dtype=torch.float32)
    x = torch.randn(2, 3, 40, 36, dtype=torch.float64)
    out = fast(x)
    assert out.dtype == torch.float64
    with torch.no_grad():
        assert_close_fp32(out.float(), model(x.float()))
    # a non-contiguous and a channels_last input give the same answer
    y = torch.randn(2, 40, 36, 3).permute(0, 3, 1, 2)
    assert torch.allclose(fast(y), fast(y.contiguous()), atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((3, 64, 64), torch.float32, "4-D batch"),
        ((1, 1, 64, 64), torch.float32, "3 input channels, got 1"),
        ((1, 3, 31, 64), torch.float32, "at least 32x32"),
        ((1, 3, 64, 64), torch.uint8, "floating-point images, got dtype torch.uint8"),
    ],
)
@pytest.mark.slow
def test_optimized_refuses_bad_input_clearly(shape, dtype, message):
    fast = optimize_for_inference(seeded_model("vgg11"), dtype=torch.float32)
    with pytest.raises(ValueError, match=message):
        fast(torch.zeros(shape, dtype=dtype))


def test_optimize_for_inference_refuses_bad_arguments():
    model = seeded_model("vgg11")
    with pytest.raises(TypeError, match="expects a vggnet VGG"):
        optimize_for_inference(nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        optimize_for_inference(model, batch_size=0)
    with pytest.raises(ValueError, match="floating-point dtype"):
        optimize_for_inference(model, dtype=torch.int8)
    with torch.device("meta"):
        meta = vggnet.vgg11()
    for device in (None, "cpu"):  # a meta model has no values to move anywhere
        with pytest.raises(ValueError, match=r"meta device.*weights="):
            optimize_for_inference(meta, device=device)
    with pytest.raises(ValueError, match="device='meta' holds no values"):
        optimize_for_inference(model, device="meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
@pytest.mark.slow
def test_asking_for_cuda_without_it_says_so():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        optimize_for_inference(seeded_model("vgg11"), device="cuda")


@pytest.mark.slow
def test_cuda_graphs_are_only_planned_for_cuda():
    # On CPU a small fixed batch never turns CUDA graphs on, compiled or not.
    fast = optimize_for_inference(seeded_model("vgg11"), batch_size=1, compile=False)
    assert not fast.cuda_graphs and not fast.compiled
    assert CUDA_GRAPH_MAX_BATCH >= 1


@pytest.mark.slow
def test_compiled_on_cpu_matches_eager():
    model = seeded_model("vgg11_bn")
    fast = optimize_for_inference(model, dtype=torch.float32, compile=True, batch_size=2)
    assert fast.compiled and not fast.cuda_graphs
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        ref = model(x)
    assert_close_fp32(fast(x), ref)
    assert_close_fp32(fast(x), ref)  # and again, from the compiled code
    with torch.no_grad():  # batch 1 compiles again (a static batch was asked for) and takes the same head
        assert_close_fp32(fast(x[:1]), model(x[:1]))
    with pytest.raises(ValueError, match="at least 32x32"):
        fast(torch.zeros(2, 3, 16, 48))


# --- CUDA ---------------------------------------------------------------------------------------


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("arch", ["vgg11", "vgg16_bn"])
def test_cuda_default_is_bf16_channels_last_and_matches_eager(arch, monkeypatch):
    model = seeded_model(arch)
    x = torch.randn(4, 3, 96, 128)
    with torch.no_grad():
        ref = model(x)
    fast = optimize_for_inference(model, device="cuda", compile=False)
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    assert fast.dtype == expected and fast.device.type == "cuda"
    out = fast(x)  # a CPU input is moved to the GPU
    assert out.device.type == "cuda" and out.dtype == torch.float32
    assert_close_low_precision(out.cpu(), ref)
    fp32 = optimize_for_inference(model, device="cuda", dtype=torch.float32, compile=False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.testing.assert_close(fp32(x).cpu(), ref, rtol=1e-3, atol=1e-4 * ref.abs().max().item())


@pytest.mark.cuda
@pytest.mark.slow
@cuda
def test_cuda_compiled_with_cuda_graphs_matches_eager_and_returns_fresh_tensors():
    model = seeded_model("vgg11")
    fast = optimize_for_inference(model, device="cuda", batch_size=1)
    assert fast.compiled and fast.cuda_graphs
    x1, x2 = torch.randn(1, 3, 224, 224), torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref1, ref2 = model(x1), model(x2)
    outs = [fast(x1.cuda()) for _ in range(3)]  # warm-up, record, replay
    last = fast(x2.cuda())
    assert_close_low_precision(outs[-1].cpu(), ref1)  # not overwritten by the later replay
    assert_close_low_precision(last.cpu(), ref2)
    other = fast(torch.randn(3, 3, 64, 64, device="cuda"))  # another batch still works
    assert other.shape == (3, 10)


@pytest.mark.slow
def test_a_folded_model_keeps_its_layer_names_and_can_be_put_back_in_train_mode():
    torch.manual_seed(0)
    model = vggnet.vgg11_bn().eval()
    folded = fold_batchnorm(model)
    assert folded.layer_names() == model.layer_names()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():  # the tap after a folded BatchNorm is the normalised map, as before folding
        torch.testing.assert_close(folded.extract(x, ["bn3_1"])["bn3_1"], model.extract(x, ["bn3_1"])["bn3_1"])
    folded.train()
    assert folded.training


# --- every head (issue 25) --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", HEAD_KINDS)
@pytest.mark.slow
def test_fold_batchnorm_and_optimize_for_inference_for_every_head(kind):
    model = head_model(kind)
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x)
        folded = fold_batchnorm(model)
        assert folded.layer_names() == model.layer_names()
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        torch.testing.assert_close(folded(x), expected, atol=1e-4, rtol=1e-4)
    fast = optimize_for_inference(model, dtype=torch.float32)
    got = fast(x)
    assert got.shape == expected.shape  # (2, 10); (2, 4096) or (2, 512) without fc8; the map without pooling
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
