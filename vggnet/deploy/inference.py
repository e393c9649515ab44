"""Inference-only VGG: BatchNorm folded into the convolutions, channels_last, the device's fast dtype, compiled.

`fold_batchnorm` is exact algebra on eval-mode BatchNorm; `optimize_for_inference` stacks the
changes that measurably pay (figures, method and machines: README.md, section "Speed", and
benchmarks/README.md):

- BatchNorm folded: one pass over each activation fewer, so vgg16_bn runs at vgg16's speed.
- channels_last: oneDNN's and cuDNN's fast convolution kernels want NHWC.
- on CPU (not compiled), each convolution runs with its ReLU fused in as one oneDNN call, and in
  float32 fc6-fc8 run on oneDNN's linear with the ReLU fused in instead of the BLAS behind F.linear
  (MKL) (benchmarks/bench_cpu_paths.py); only in dtypes this CPU's oneDNN computes (`onednn_computes`).
- on CPU (not compiled), every convolution and linear weight is reordered once, at construction,
  into oneDNN's blocked layout; otherwise oneDNN reorders each weight on every call, which is a third
  of the time of a bf16 batch 1 (ONEDNN_VERBOSE shows a `reorder` before each convolution).
- bf16 on CUDA GPUs that have it, fp16 on older ones; on CPUs that compute bf16 natively (AVX512_BF16
  or AMX-BF16) bf16 too, as OpenVINO does (`cpu_has_native_bf16`); float32 on other CPUs. float32 is
  always one argument away (`dtype=torch.float32`).
- torch.compile (on by default on CUDA, opt-in on CPU, where it gains little for VGG because the
  convolutions are oneDNN calls either way): it fuses the ReLU and max-pool passes. With a small fixed
  `batch_size` on CUDA it also records CUDA graphs (mode "reduce-overhead"), which removes the kernel
  launch overhead that dominates batch 1.
- on CPU (not compiled), the first convolutions and pools take a large batch a few images at a time
  (`images_per_chunk`), the steps from `whole_batch_from` on and the classifier the whole batch: an
  activation over glibc's largest heap block (32 MiB) is mapped afresh and page-faulted in on every
  call, which cost vgg16 a third of a bf16 batch of 8 at 224 px (150 -> 97 ms), while the deeper
  weights and fc6's are still read once per batch.
- on CPU with glibc, its mmap threshold is raised to 32 MiB before the first call
  (`keep_activations_on_heap`), as glibc does itself once a process frees a block that large: until
  then activations of a few MiB were mapped afresh or handed back to the kernel on every call (a
  fresh process page-faulted 146 MiB per bf16 batch of 8 and ran it in 178 ms instead of 128).
- on CPU (not compiled), VGG's 2x2 max-pools are a maximum of strided views (`_max_pool_2x2`): ATen's
  writes int64 indices too, which took twice the time in bf16.
- on CPU (not compiled), a pool right after a convolution with its ReLU fused in compares the values'
  bits as integers of the same width where oneDNN's kernel for that convolution writes no value with
  the sign bit set (its JIT kernels make a NaN or a negative +0; `integer_pools` checks each such
  convolution once, see `fused_relu_clears_sign`): such floats order as their bits do, so the result
  is the same, bit for bit. ATen's bf16 maximum goes through float32; on int16 the five pools of vgg16
  took 0.50 ms instead of 1.27 at batch 1 and 4.8 instead of 12.5 at batch 8 (float32 on int32: 1.19
  against 1.29 and 14.9 against 16.5).
- on CPU (not compiled), an image holding a NaN or an infinity gets NaN logits, as in eager
  (`mark_non_finite`): oneDNN's fused ReLU turns a NaN into 0.
- on CPU (not compiled), a batch of `batch_size` images runs, from its shape's second call, as a oneDNN
  Graph program (`vggnet.deploy.onednn_graph`; `onednn_graph=False` turns them off) that takes it in the
  same chunks, with the same logits, bit for bit:
  oneDNN's partitions compiled once, where eager PyTorch builds each call's descriptors again (30-40 µs
  a call); vgg16 bf16 batch 1 8% faster, batch 8 5%, for 285 MB more memory while the model lives.
- the adaptive average pool is skipped when the feature map is already 7x7 (224-255 px input).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import logging
import math
import os
from collections.abc import Callable

import torch
from torch import nn

from vggnet import settings
from vggnet.checks import check_int
from vggnet.deploy.onednn_graph import Plan, Programs, onednn_graph_available, traceable
from vggnet.deploy.packed import PackedModel
from vggnet.deploy.winograd import WinogradConvReLU, applies, exact_float32, wins
from vggnet.errors import DeviceError, UsageError, UsageTypeError
from vggnet.models.config import POOLED_SIZE
from vggnet.models.vgg import VGG

__all__ = [
    "BF16_INSTRUCTIONS",
    "CHUNK_BYTES",
    "CUDA_GRAPH_MAX_BATCH",
    "InferenceVGG",
    "cpu_has_native_bf16",
    "default_dtype",
    "fold_batchnorm",
    "fused_relu_clears_sign",
    "images_per_chunk",
    "integer_pools",
    "keep_activations_on_heap",
    "mark_non_finite",
    "optimize_for_inference",
    "whole_batch_from",
]

logger = logging.getLogger(__name__)

# With a fixed batch at or below this size, CUDA launch overhead outweighs the compute and CUDA graphs
# pay (figures: benchmarks/README.md).
CUDA_GRAPH_MAX_BATCH = 16

DeviceArg = str | torch.device | None

# The largest activation a chunk of images may make on CPU: well under glibc's 32 MiB, above which every
# allocation is a fresh mmap. vgg16 at 224 px takes 2 images at a time in bf16 (6.4 MB per image out of
# conv1_1), 1 in float32; chunks of 1, 2, 4 and 8 bf16 images ran a batch of 8 in 107, 97, 139, 150 ms.
CHUNK_BYTES = 16 << 20
# Input shapes a model remembers its chunk plan for (forgotten all at once past this)
_MAX_PLANS = 64
# glibc's largest dynamic mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit, mallopt(3))
GLIBC_MMAP_THRESHOLD_MAX = 32 << 20
# The signed integer dtype of each float width the integer pools read their floats' bits as
_SAME_WIDTH_INT = {2: torch.int16, 4: torch.int32}
# torch.cpu.get_capabilities() names of the instructions that compute bf16 (dot products, tiles)
BF16_INSTRUCTIONS = ("amx_bf16", "avx512_bf16")
# ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA) caps below avx512_core_bf16: oneDNN then emulates bf16, slowly
_NO_BF16_CAPS = ("sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core", "avx512_core_vnni")


def fold_batchnorm(model: VGG) -> VGG:
    """A copy of `model`, in eval mode, with every BatchNorm2d folded into the convolution before it.

    `model` itself is not modified. Each folded BatchNorm is replaced by `nn.Identity`, so the
    convolutions keep their `features.N` indices and state-dict keys while the BatchNorm keys go.
    Folding uses the running statistics, which is what eval mode computes; the folded copy matches
    `model.eval()` within float32 rounding (the arithmetic is done in float64).

    Args:
        model: a VGG, with or without BatchNorm (without, it comes back as a plain eval-mode copy).

    Returns:
        The folded eval-mode copy.

    Raises:
        UsageError: a BatchNorm2d that does not follow a Conv2d, or one without running statistics.
    """
    folded = copy.deepcopy(model).eval()
    for seq in folded.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i, module in enumerate(seq):
            if not isinstance(module, nn.BatchNorm2d):
                continue
            conv = seq[i - 1] if i > 0 else None
            if not isinstance(conv, nn.Conv2d):
                raise UsageError(
                    f"cannot fold BatchNorm2d at position {i}: it must follow a Conv2d, "
                    f"it follows {type(conv).__name__ if conv is not None else 'nothing'}"
                )
            _fold_into(conv, module)
            seq[i] = nn.Identity()
    return folded


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv <- bn(conv(x)) with bn's running statistics: w' = w * g / s, b' = (b - mean) * g / s + beta."""
    if bn.running_mean is None or bn.running_var is None:
        raise UsageError("cannot fold a BatchNorm2d without running statistics (track_running_stats=False)")
    with torch.no_grad():
        w = conv.weight.double()
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
        conv.weight.copy_(w * scale.reshape(-1, 1, 1, 1))  # (out, in, 3, 3) scaled per output channel
        new_bias = bias * scale + shift
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
        else:
            conv.bias.copy_(new_bias)


def onednn_computes(dtype: torch.dtype) -> bool:
    """Whether this CPU's oneDNN computes `dtype` itself: float32 always; bf16 and fp16 only where the CPU
    has the instructions oneDNN needs for them (bf16: AVX-512 BW/VL/DQ or AVX-NE-CONVERT); never float64.

    Elsewhere torch runs those dtypes on reference kernels, far slower than float32 (benchmarks/README.md).
    """
    mkldnn = torch.ops.mkldnn
    if dtype == torch.float32:
        return True
    if dtype == torch.bfloat16:
        return hasattr(mkldnn, "_is_mkldnn_bf16_supported") and bool(mkldnn._is_mkldnn_bf16_supported())
    if dtype == torch.float16:
        return hasattr(mkldnn, "_is_mkldnn_fp16_supported") and bool(mkldnn._is_mkldnn_fp16_supported())
    return False


def _has_onednn(net: VGG) -> bool:
    """True where `net` is on the CPU in a dtype this CPU's oneDNN computes, and torch has its fused ops."""
    param = next(net.parameters())
    return (
        param.device.type == "cpu"
        and onednn_computes(param.dtype)
        and torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    )


def _onednn_head(classifier: nn.Module, x: torch.Tensor, packed: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """The eval-mode classifier with oneDNN's linear, each ReLU fused into the linear before it.

    For float32 on CPU, where torch's F.linear goes through the BLAS (MKL), which is slower on fc6-fc8
    (benchmarks/bench_cpu_paths.py); in bf16, F.linear is oneDNN's but reorders its weight on every
    call. `packed` maps a child's index to its weight already in oneDNN's layout (`_pack_linears`).
    """
    packed = packed or {}
    modules = list(classifier.children()) if isinstance(classifier, nn.Sequential) else [classifier]
    i = 0
    while i < len(modules):
        m = modules[i]
        if isinstance(m, nn.Linear):
            fuse = i + 1 < len(modules) and isinstance(modules[i + 1], nn.ReLU)
            weight = packed.get(i, m.weight)
            x = torch.ops.mkldnn._linear_pointwise(x, weight, m.bias, "relu" if fuse else "none", [], "")
            i += 2 if fuse else 1
            continue
        if not isinstance(m, nn.Dropout):  # eval-mode dropout is the identity
            x = m(x)
        i += 1
    return x


# One step of the feature extractor: a module to call, or a convolution to run with its ReLU fused in.
_Step = tuple[nn.Module, bool]


def _in_channels(net: VGG) -> int:
    """The input channels of the first convolution (3 for RGB)."""
    first = next((m for m in net.features.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else 3


def _fused_steps(features: nn.Module) -> list[_Step]:
    """`features` as (module, relu_fused) steps: each zero-padded Conv2d takes the ReLU after it.

    Identities (left by folded BatchNorm) are dropped; anything else is kept as it is, in order.
    """
    children = features.children() if isinstance(features, nn.Sequential) else [features]
    modules = [m for m in children if not isinstance(m, nn.Identity)]
    steps: list[_Step] = []
    i = 0
    while i < len(modules):
        m = modules[i]
        fusable = isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str)
        if fusable and i + 1 < len(modules) and isinstance(modules[i + 1], nn.ReLU):
            steps.append((m, True))
            i += 2
        else:
            steps.append((m, False))
            i += 1
    return steps


def _run_steps(
    steps: list[_Step],
    x: torch.Tensor,
    packed: dict[int, torch.Tensor] | None = None,
    start: int = 0,
    int_pools: frozenset[int] = frozenset(),
    winograd: dict[int, WinogradConvReLU] | None = None,
) -> torch.Tensor:
    """The feature extractor, with each fused step one oneDNN convolution+ReLU call.

    `packed` maps a step's index to its convolution weight already in oneDNN's blocked layout; `steps`
    are the steps from index `start` on. The 2x2 pools at the indices in `int_pools` (`integer_pools`)
    compare the values' bits as integers. The steps in `winograd` run by Winograd F(4x4, 3x3) for the
    input shapes it `wins`.
    """
    packed = packed or {}
    winograd = winograd or {}
    for i, (m, relu_fused) in enumerate(steps, start):
        if i in winograd and wins(x.shape, winograd[i].conv.out_channels):
            x = winograd[i](x)
        elif relu_fused:
            assert isinstance(m, nn.Conv2d)
            weight = packed.get(i, m.weight)
            x = torch.ops.mkldnn._convolution_pointwise(
                x, weight, m.bias, m.padding, m.stride, m.dilation, m.groups, "relu", [], ""
            )
        elif _halves(m) and min(x.shape[-2:]) >= 2:
            x = _max_pool_2x2(x, as_int=i in int_pools)
        else:
            x = m(x)
    return x


def _step_modules(steps: list[_Step], winograd: dict[int, WinogradConvReLU]) -> list[nn.Module]:
    """`steps` as modules, one per step: a convolution with its ReLU fused becomes Sequential(conv, ReLU),
    or the step's module in `winograd`."""
    return [
        winograd.get(i) or (nn.Sequential(m, nn.ReLU()) if relu_fused else m) for i, (m, relu_fused) in enumerate(steps)
    ]


def _winograd_steps(steps: list[_Step], dtype: torch.dtype) -> dict[int, WinogradConvReLU]:
    """The fused convolutions that Winograd F(4x4, 3x3) computes for some shapes (`applies`), by step index."""
    with torch.no_grad():
        return {
            i: WinogradConvReLU(m)
            for i, (m, fused) in enumerate(steps)
            if fused and isinstance(m, nn.Conv2d) and applies(m, dtype)
        }


def _halves(m: nn.Module) -> bool:
    """Whether `m` is VGG's max-pool: 2x2, stride 2, no padding or dilation, floor mode, no indices."""
    return (
        isinstance(m, nn.MaxPool2d)
        and m.kernel_size in (2, (2, 2))
        and m.stride in (2, (2, 2))
        and m.padding in (0, (0, 0))
        and m.dilation in (1, (1, 1))
        and not m.ceil_mode
        and not m.return_indices
    )


def _max_pool_2x2(x: torch.Tensor, as_int: bool = False) -> torch.Tensor:
    """VGG's 2x2 max-pool as the maximum of four strided views: the same values (NaN included).

    ATen's CPU max-pool also writes the int64 index of each maximum, even without autograd: four times
    the bytes of a bf16 output. This took half its time on bf16 (conv1_2's output, 2 images: 0.81 ms
    against 1.65) and 0.95 against 1.32 ms in float32.

    With `as_int`, the maximum is taken over the bits read as signed integers of the same width, which
    orders floats whose sign bit is clear (+0 to +inf, and NaN above) as their values: only for such
    input, as oneDNN's fused ReLU writes where `fused_relu_clears_sign` holds. Elsewhere it is wrong:
    negatives order backwards, and a NaN with the sign bit set loses to any other value.
    """
    if as_int and x.dtype.itemsize in _SAME_WIDTH_INT:
        return _strided_max(x.view(_SAME_WIDTH_INT[x.dtype.itemsize])).view(x.dtype)
    return _strided_max(x)


def _strided_max(x: torch.Tensor) -> torch.Tensor:
    """The maximum of the four 2x2 corners' strided views of `x`, in its own dtype."""
    n, c, h, w = x.shape
    sn, sc, sh, sw = x.stride()
    offset = x.storage_offset()

    def corner(row: int, col: int) -> torch.Tensor:  # one view per op (x[..., 0::2, 1::2] dispatches two)
        # floor mode: h // 2 rows, so an odd last row (or column) is never read
        return x.as_strided((n, c, h // 2, w // 2), (sn, sc, 2 * sh, 2 * sw), offset + row * sh + col * sw)

    out = torch.maximum(corner(0, 0), corner(0, 1))
    torch.maximum(out, corner(1, 0), out=out)
    return torch.maximum(out, corner(1, 1), out=out)


def fused_relu_clears_sign(dtype: torch.dtype, conv: nn.Conv2d | None = None, size: int = 8) -> bool:
    """Whether oneDNN's convolution with its ReLU fused in writes no value with the sign bit set, in `dtype`.

    oneDNN picks its kernel by dtype, shapes and the CPU's instructions, and not every kernel's ReLU
    clears the sign bit: the JIT convolutions take max(x, 0), which gives +0 for a negative, for -0 and
    for a NaN; the GEMM-based one (which a convolution with few input channels gets on CPUs without
    AVX2, or under ONEDNN_MAX_CPU_ISA=AVX) writes -0 and keeps NaNs. So the check runs `conv`'s own
    geometry (channels, kernel, stride, padding, dilation, groups; VGG's 64-channel 3x3 by default) on
    a `size` x `size` input holding infinities and NaNs, whose sums hold NaNs and negatives before the
    ReLU, with the weight packed for that shape as `InferenceVGG` packs its own. Cached per dtype,
    geometry and size.

    Args:
        dtype: the dtype the convolution runs in.
        conv: the convolution whose kernel to check (only its geometry is used); None for VGG's 3x3.
        size: the input's height and width.

    Returns:
        True where the output had no sign bit set: `InferenceVGG` then takes a pool right after that
        convolution on the bits as integers (`_max_pool_2x2`); False where it had one, or oneDNN does
        not compute `dtype`.
    """
    geometry: tuple[object, ...]
    if conv is None:
        geometry = (64, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    else:
        padding = (0, 0) if isinstance(conv.padding, str) else tuple(conv.padding)
        channels = (conv.in_channels, conv.out_channels)
        geometry = (*channels, conv.kernel_size, conv.stride, padding, conv.dilation, conv.groups)
    return _probe_fused_relu(dtype, geometry, size)


@functools.cache
def _probe_fused_relu(dtype: torch.dtype, geometry: tuple[object, ...], size: int) -> bool:
    """`fused_relu_clears_sign` for a (in, out, kernel, stride, padding, dilation, groups) geometry."""
    if dtype.itemsize not in _SAME_WIDTH_INT or not onednn_computes(dtype):
        return False
    c_in, c_out, kernel, stride, padding, dilation, groups = geometry
    assert isinstance(c_in, int) and isinstance(c_out, int) and isinstance(groups, int)
    x = torch.randn(1, c_in, size, size, generator=torch.Generator().manual_seed(0))
    x[0, :, 0, 0], x[0, :, 0, 1] = math.inf, -math.inf
    x[0, -1, size // 2, size // 2], x[0, 0, -1, -1] = math.nan, -math.nan
    shape = (c_out, c_in // groups, *kernel)  # type: ignore[misc]
    w = torch.arange(math.prod(shape)).remainder_(7).sub_(3).view(shape).float()  # both signs, cheaply
    x, w = (t.to(dtype).contiguous(memory_format=torch.channels_last) for t in (x, w))
    args = (list(padding), list(stride), list(dilation), groups)  # type: ignore[call-overload]
    try:
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_convolution_weight(w, *args, [1, c_in, size, size])
            y = torch.ops.mkldnn._convolution_pointwise(x, packed, None, *args, "relu", [], "")
    except RuntimeError:  # no oneDNN convolution for this dtype or geometry here after all
        return False
    return not _has_sign_bit(y)


def integer_pools(features: nn.Module, dtype: torch.dtype) -> frozenset[int]:
    """The indices of the fused steps of `features` that are 2x2 pools which may compare bits as integers.

    The indices are those `InferenceVGG` runs the steps by. Each such pool comes right after a
    convolution with its ReLU fused in for which `fused_relu_clears_sign` holds. oneDNN picks the kernel
    by the CPU's instructions and the channels; an independent review's sweep of about 2,400
    convolutions (channels 3-512, maps 2x2 to 112x112, batch 1-8) found no map size at which a kernel
    that cleared the sign bit at one size did not at another, so the check runs at 8x8 only (at the
    layer's size for a 224 px image as well, it took six times as long: new JIT kernels for each).

    Args:
        features: a folded VGG's feature extractor.
        dtype: the dtype it runs in.

    Returns:
        The indices of those pools among the fused steps.
    """
    steps = _fused_steps(features)
    pools = set()
    for i in range(1, len(steps)):
        (conv, fused), (pool, _) = steps[i - 1], steps[i]
        if not (fused and _halves(pool) and isinstance(conv, nn.Conv2d)):
            continue
        if fused_relu_clears_sign(dtype, conv):
            pools.add(i)
    return frozenset(pools)


def mark_non_finite(images: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`out` with every value NaN in the rows whose image holds a NaN or an infinity, as eager VGG gives.

    oneDNN's fused ReLU (and int8's quantization) turns a NaN into a number, so without this an image
    that is not finite would get plausible logits from the fused CPU path; eager VGG's ReLU and max-pool
    carry the NaN (an infinity meets weights of both signs and becomes one) through to every logit. The
    check is one sum over the batch (21 µs for a bf16 image at 224 px, 206 µs for 8, on the 2-core
    Xeon); only a batch whose sum is not finite is looked at image by image.

    Args:
        images: the batch the model took, (N, C, H, W).
        out: what the model gave for it, N rows first; changed in place.

    Returns:
        `out`.
    """
    if bool(torch.isfinite(images.sum(dtype=torch.float32))):  # one pass: a NaN or an infinity makes the sum one
        return out
    bad = ~torch.isfinite(images).flatten(1).all(1)  # or finite values too large to add up in float32
    out.masked_fill_(bad.view(-1, *[1] * (out.dim() - 1)), math.nan)
    return out


def _has_sign_bit(x: torch.Tensor) -> bool:
    """Whether any value of the floating tensor `x` has its sign bit set (-0 and negative NaNs included).

    Args:
        x: a float32, bf16 or float16 tensor.

    Returns:
        True if one of its values, read as a signed integer of the same width, is negative.
    """
    return bool((x.contiguous().view(_SAME_WIDTH_INT[x.dtype.itemsize]) < 0).any())


def _input_shapes(steps: list[_Step], c: int, h: int, w: int) -> list[tuple[int, int, int]]:
    """The (C, H, W) each step takes in for a (c, h, w) image, and last the shape of what the steps give.

    Exact for convolutions and VGG's 2x2, stride 2 pools; other modules are taken to keep the shape
    (the shapes only choose weight layouts and chunk sizes, never the results).
    """
    shapes = [(c, h, w)]
    for m, _ in steps:
        if isinstance(m, nn.Conv2d):
            c, h, w = m.out_channels, _conv_out(h, m, 0), _conv_out(w, m, 1)
        elif isinstance(m, nn.MaxPool2d):
            h, w = max(h // 2, 1), max(w // 2, 1)
        shapes.append((c, h, w))
    return shapes


def _pack_convolutions(
    steps: list[_Step], in_channels: int, batch: int, size: int, start: int = 0, stop: int | None = None
) -> dict[int, torch.Tensor]:
    """Each fused convolution's weight among `steps[start:stop]` reordered once into oneDNN's blocked
    layout, by step index.

    The layout is the one oneDNN picks for a (batch, C, size, size) input; any other input still gets
    correct results (oneDNN reorders again when the layouts differ), only slower.
    """
    packed: dict[int, torch.Tensor] = {}
    shapes = _input_shapes(steps, in_channels, size, size)
    for i, ((m, relu_fused), (c, h, w)) in enumerate(zip(steps, shapes)):
        if start <= i < (len(steps) if stop is None else stop) and isinstance(m, nn.Conv2d) and relu_fused:
            weight = m.weight.contiguous(memory_format=torch.channels_last)
            args = (list(m.padding), list(m.stride), list(m.dilation), m.groups, [batch, c, h, w])
            packed[i] = torch.ops.mkldnn._reorder_convolution_weight(weight, *args)
    return packed


def images_per_chunk(features: nn.Module, shape: tuple[int, int, int, int], dtype: torch.dtype) -> int:
    """How many images of a batch `InferenceVGG` runs through the first steps of `features` at once on CPU.

    As many as keep the largest activation within `CHUNK_BYTES` (at least 1, at most the batch): a
    larger one would be a fresh mmap of the allocator, page-faulted in on every call.

    Args:
        features: the feature extractor (a folded VGG's `features`).
        shape: the batch, (N, C, H, W).
        dtype: the dtype it computes in.

    Returns:
        The chunk size, from 1 to N.
    """
    return _chunk_plan(_fused_steps(features), shape, dtype)[0]


def whole_batch_from(features: nn.Module, shape: tuple[int, int, int, int], dtype: torch.dtype) -> int:
    """The first fused step of `features` from which `InferenceVGG` runs a batch whole on CPU.

    The steps before it take `images_per_chunk` images at a time; from it on every activation of the
    whole batch is within `CHUNK_BYTES`, so the deeper convolutions, which hold nine tenths of VGG's
    convolution weights, read them once per batch rather than once per chunk (vgg16 bf16, batch 8 at
    224 px: 108.5 ms against 117.0 with every step chunked). In VGG it always follows a pool (or is 0).

    Args:
        features: the feature extractor (a folded VGG's `features`).
        shape: the batch, (N, C, H, W).
        dtype: the dtype it computes in.

    Returns:
        An index into the fused steps (their count where even the last activation is too large).
    """
    return _chunk_plan(_fused_steps(features), shape, dtype)[1]


def _chunk_plan(steps: list[_Step], shape: tuple[int, int, int, int], dtype: torch.dtype) -> tuple[int, int]:
    """(`images_per_chunk`, `whole_batch_from`) of `steps` for a batch of `shape`, from one walk of the shapes."""
    n, c, h, w = shape
    per_image = [math.prod(s) * dtype.itemsize for s in _input_shapes(steps, c, h, w)]  # what step i takes in
    images = max(1, min(n, CHUNK_BYTES // max(max(per_image), 1)))
    first = len(steps)
    while first > 0 and max(per_image[first - 1 :]) * n <= CHUNK_BYTES:
        first -= 1
    return images, first


def _conv_out(n: int, conv: nn.Conv2d, dim: int) -> int:
    """The output length along `dim` of `conv` for an input of length `n`."""
    pad = conv.padding[dim] if isinstance(conv.padding, tuple) else 0
    span = conv.dilation[dim] * (conv.kernel_size[dim] - 1) + 1
    return max((n + 2 * int(pad) - span) // conv.stride[dim] + 1, 1)


def _pack_linears(classifier: nn.Module, batch: int) -> dict[int, torch.Tensor]:
    """Each nn.Linear weight of `classifier` reordered once into oneDNN's layout, by child index."""
    children = classifier.children() if isinstance(classifier, nn.Sequential) else [classifier]
    return {
        i: torch.ops.mkldnn._reorder_linear_weight(m.weight, batch)
        for i, m in enumerate(children)
        if isinstance(m, nn.Linear)
    }


@functools.cache
def keep_activations_on_heap() -> bool:
    """Raise glibc's mmap threshold to its largest dynamic value, once per process.

    glibc serves a block at or above its mmap threshold (128 KiB at start) with a fresh mmap, which the
    kernel page-faults in on first touch; freeing such a block raises the threshold to the block's size
    (at most 32 MiB) and the heap's trim threshold to twice that (mallopt(3)). Which sizes a process has
    freed so far therefore decided whether VGG's activations were reused from the heap or mapped and
    page-faulted in again on every call. Freeing one block just under 32 MiB does what glibc would do
    after any such free, and leaves its adaptive behaviour on (an explicit `mallopt` would turn it off).
    Nothing is done elsewhere: other C libraries, or a malloc preloaded in glibc's place, only see one
    allocation freed.

    Returns:
        True where the process runs on glibc (the block was allocated and freed), False elsewhere.
    """
    if not _on_glibc():
        return False
    libc = ctypes.CDLL(None)  # the process's own malloc, the one torch's CPU allocator calls
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free(libc.malloc(GLIBC_MMAP_THRESHOLD_MAX - (64 << 10)))  # under the maximum with glibc's header
    return True


def _on_glibc() -> bool:
    """Whether this process's C library is glibc (confstr names it; elsewhere the name is unknown or empty)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # no confstr (Windows), or no such name (macOS, musl)
        return False


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively: AVX512_BF16 or AMX-BF16, with oneDNN able to use it.

    Plain AVX-512 only emulates bf16 (converting to float32), where bf16 gains little over float32 and a
    training step is slower; with the native instructions a VGG runs 3-5 times faster in bf16
    (benchmarks/bench_cpu_peers.py, bench_train.py). A ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA) cap below
    avx512_core_bf16 counts as no.

    Returns:
        True where `optimize_for_inference` picks bf16 and fine-tuning bf16 autocast on this CPU by default.
    """
    if settings.onednn_isa_cap() in _NO_BF16_CAPS:
        return False
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    caps: dict[str, object] = get_capabilities() if get_capabilities is not None else {}
    return any(caps.get(name) for name in BF16_INSTRUCTIONS) and onednn_computes(torch.bfloat16)


def default_dtype(device: torch.device) -> torch.dtype:
    """The dtype `optimize_for_inference` runs in on `device` unless told otherwise.

    Args:
        device: where the model will run.

    Returns:
        bf16 on CUDA GPUs with native bf16 (Ampere and later), fp16 on older ones; bf16 on CPUs with
        native bf16 (`cpu_has_native_bf16`: AVX512_BF16 or AMX, where it runs 3-5 times faster and
        agrees with float32 to a logit cosine above 0.999); float32 elsewhere.
    """
    if device.type == "cuda":
        # including_emulation=False: pre-Ampere GPUs "support" bf16 only by emulating it, slowly.
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


class InferenceVGG(PackedModel):
    """A prepared VGG for inference only: validates and converts its input, runs without autograd.

    The input may be any floating dtype on any device: it is moved to the module's device, dtype and
    channels_last layout; the logits come back in the input's dtype, on the module's device. Build it
    with `optimize_for_inference`, which folds and converts the model first. Its weights are packed for
    its device and dtype: converting it (`.half()`, `.to(...)`), loading a state dict into it or pickling
    it is refused with the fix (`vggnet.deploy.packed`); `copy.deepcopy` works.

    Args:
        net: the folded, converted VGG (its state dict keeps the `features.N` and `classifier.N` keys).
        compile: torch.compile the forward.
        cuda_graphs: compile with CUDA graphs (mode "reduce-overhead"); only with `compile` on CUDA.
        static_shapes: compile for one input shape (`dynamic=False`).
        batch_size: the batch the oneDNN weight layouts are chosen for (default 1), as the convolutions take
            it (`images_per_chunk` images at a time at 224 px); others run too.
        dtype_note: why the model runs in its dtype, shown by `repr` (e.g. this CPU's native bf16).
        onednn_graph: on the fused CPU path, run batches as oneDNN Graph programs made for their shapes
            (`vggnet.deploy.onednn_graph`), where this torch has TorchScript's oneDNN fuser.
        winograd: on the fused CPU path in float32, compute the convolutions Winograd `applies` to by it,
            for the shapes it `wins` (`vggnet.deploy.winograd`).
    """

    def __init__(
        self,
        net: VGG,
        *,
        compile: bool = False,
        cuda_graphs: bool = False,
        static_shapes: bool = False,
        batch_size: int | None = None,
        dtype_note: str = "",
        onednn_graph: bool = True,
        winograd: bool = True,
    ) -> None:
        super().__init__()
        self.net = net
        self.dtype_note = dtype_note
        self._static_shapes = static_shapes
        self._wants_programs = onednn_graph
        self._wants_winograd = winograd
        pool = net.avgpool
        # The pool is an identity only when it is the stock 7x7 adaptive average pool.
        self._pool_is_7x7 = isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (
            POOLED_SIZE,
            (POOLED_SIZE, POOLED_SIZE),
        )
        self.compiled = compile
        self.cuda_graphs = cuda_graphs
        # Compiled on CPU, inductor's freezing turns the weights into constants, which its oneDNN
        # lowering needs for the linear layers (and prepacks them, which pays at batch 8, at the cost
        # of a packed copy of the classifier's weights). On CUDA freezing gained nothing.
        self._freezing = compile and self.device.type == "cpu"
        onednn = _has_onednn(net)
        # Compiled, inductor fuses the ReLUs itself and prepacks the weights (freezing).
        self._onednn_classifier = onednn and (not compile or (self._freezing and self.dtype == torch.float32))
        self._steps = _fused_steps(net.features) if onednn and not compile else None
        int_pools = integer_pools(net.features, self.dtype) if self._steps is not None else None
        self._int_pools = int_pools or frozenset()
        self._batch = batch_size or 1  # what the weights are packed for, and the one batch size programs run
        self._plans: dict[tuple[tuple[int, ...], torch.dtype], tuple[int, int]] = {}  # see _plan
        self._repack()

    _made_from_weights = ("_packed_convs", "_packed_linears", "_winograd", "_programs", "_run")

    def _repack(self) -> None:
        """What is made from the prepared net's weights: their oneDNN copies, the programs, the compiled forward.

        Made when the model is, and again for a deep copy (oneDNN's packed tensors cannot be copied).
        """
        self._packed_convs, self._packed_linears = self._prepack(self._batch)
        steps = self._steps if self._wants_winograd else None
        self._winograd = _winograd_steps(steps, self.dtype) if steps is not None else {}
        self._programs: Programs | None = None  # oneDNN Graph programs, on the fused path where asked for
        if self._wants_programs and self._steps is not None and onednn_graph_available() and traceable(self.net):
            skip = (POOLED_SIZE, POOLED_SIZE) if self._pool_is_7x7 else None  # the map at which the pool is skipped
            self._programs = Programs(self.net, _step_modules(self._steps, self._winograd), skip)
        # None: self._logits, called as a method (a bound method kept here would be a reference cycle,
        # leaving the model and its programs to the cyclic garbage collector)
        self._run: Callable[[torch.Tensor], torch.Tensor] | None = None
        if self.compiled:
            # "reduce-overhead" is inductor plus CUDA graphs; a known batch size compiles for it alone.
            mode = "reduce-overhead" if self.cuda_graphs else None
            dynamic = False if self._static_shapes else None
            self._run = torch.compile(self._logits, mode=mode, dynamic=dynamic)

    def _prepack(self, batch: int) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """The oneDNN-layout copies of the convolution and linear weights (none off the fused path).

        Chosen for `batch` images of 224 px; other shapes stay correct (oneDNN reorders as needed). The
        copies cost as much memory again as the weights.
        """
        if self._steps is None:
            return {}, {}
        c = _in_channels(self.net)
        chunk, whole_from = _chunk_plan(self._steps, (batch, c, 224, 224), self.dtype)
        with torch.no_grad():
            # the first steps packed for the chunks they take, the rest for the whole batch
            convs = _pack_convolutions(self._steps, c, chunk, 224, stop=whole_from)
            convs.update(_pack_convolutions(self._steps, c, batch, 224, start=whole_from))
            linears = _pack_linears(self.net.classifier, batch) if self._onednn_classifier else {}
        return convs, linears

    remake = "optimize the VGG again (optimize_for_inference(model, device=..., dtype=...))"

    def prepared_for(self) -> str:
        """The device and dtype the weights were packed for.

        Returns:
            e.g. "cpu, torch.bfloat16".
        """
        return f"{self.device}, {self.dtype}"

    def is_packed(self) -> bool:
        """Whether the weights have copies the parameters do not show (what makes conversions unsafe).

        Returns:
            True on the fused CPU path (oneDNN's copies, the programs) and where compiled (frozen or
            captured weights); False otherwise (float64 on CPU, or CUDA without compile), where the model
            may be converted, loaded into and pickled as any module.
        """
        return self._steps is not None or self.compiled

    @property
    def device(self) -> torch.device:
        """Where the model runs (its parameters' device)."""
        return next(self.net.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model computes in (its parameters' dtype)."""
        return next(self.net.parameters()).dtype

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        # (N, 3, H, W) -> (N, 512, H/32, W/32)
        x = self.net.features(x) if self._steps is None else self._run_features(x)
        if self.net.global_pool == "":  # no pooling and no classifier: the map itself, as VGG.forward_head
            return x
        if not (self._pool_is_7x7 and x.shape[-2:] == (POOLED_SIZE, POOLED_SIZE)):
            x = self.net.avgpool(x)
        x = torch.flatten(x, 1)  # (N, 512, 7, 7) -> (N, 25088)
        if self._onednn_classifier:
            return _onednn_head(self.net.classifier, x, self._packed_linears)
        out: torch.Tensor = self.net.classifier(x)
        return out

    def _run_features(self, x: torch.Tensor) -> torch.Tensor:
        """The fused feature extractor over `x`: `images_per_chunk` images at a time through the first
        steps, then the whole batch from `whole_batch_from` on."""
        assert self._steps is not None
        n, k = self._plan(x)
        packed, int_pools = self._packed_convs, self._int_pools
        winograd = self._winograd if exact_float32() else {}  # its products must be float32: else directly
        if k == 0:
            return _run_steps(self._steps, x, packed, int_pools=int_pools, winograd=winograd)
        head = [
            _run_steps(self._steps[:k], x[i : i + n], packed, int_pools=int_pools, winograd=winograd)
            for i in range(0, len(x), n)
        ]
        return _run_steps(self._steps[k:], torch.cat(head), packed, start=k, int_pools=int_pools, winograd=winograd)

    def check_input(self, x: torch.Tensor) -> None:
        """VGG.check_input, and a floating dtype (normalised images, not raw uint8 pixels).

        Args:
            x: a batch of images, (N, C, H, W).

        Raises:
            UsageError: `x` is not a batch of images the model takes, or not floating point.
        """
        self.net.check_input(x)
        if not x.is_floating_point():
            raise UsageError(
                f"VGG expects normalised floating-point images, got dtype {x.dtype}; "
                "convert with the weights' transforms() (e.g. vggnet.VGG16_Weights.DEFAULT.transforms())"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of a batch of normalised images.

        Args:
            x: (N, C, H, W) floating-point images, H and W at least 32, on any device.

        Returns:
            (N, num_classes) logits in `x`'s dtype, on the module's device; NaN throughout the row of an
            image that holds a NaN or an infinity, as eager VGG gives.

        Raises:
            UsageError: `x` is not a batch of normalised images the model takes.
        """
        self.check_input(x)
        out_dtype = x.dtype
        if self.device.type == "cpu":
            keep_activations_on_heap()
        # Asynchronous only towards a GPU: a GPU-to-CPU copy must have landed before CPU kernels read it.
        non_blocking = self.device.type == "cuda"
        x = x.to(self.device, self.dtype, non_blocking=non_blocking).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._compile_config():
            program = self._program_for(x)
            run = program if program is not None else self._run or self._logits
            out = run(x)
            if self._steps is not None:  # oneDNN's fused ReLU turns a NaN into 0
                out = mark_non_finite(x, out)
        # A CUDA graph's output lives in a static buffer that the next replay overwrites.
        return out.to(out_dtype, copy=self.cuda_graphs)

    @property
    def onednn_graph(self) -> bool:
        """Whether batches run as oneDNN Graph programs (from each shape's second call; False once one failed)."""
        return self._programs is not None and not self._programs.failed

    @property
    def winograd(self) -> bool:
        """Whether some convolutions run by Winograd F(4x4, 3x3) for the shapes it wins (float32 on CPU)."""
        return bool(self._winograd)

    def _program_for(self, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The oneDNN Graph program for `x` (channels-last, the model's dtype), or None: run it eagerly.

        The program takes the batch as the eager path does: `images_per_chunk` images at a time through
        the first steps, then whole (made whole throughout, batch 8 ran slower than eagerly: 187
        against 141 ms for vgg16 in bf16). Only batches of the size the eager path's weights are packed
        for (`batch_size`) get one: its logits are then the eager path's, bit for bit, so a shape's
        first call (eager) and later ones (the program) agree; with weights packed for another batch,
        oneDNN reorders them for a kernel of its own, whose bf16 logits differed in the last bits.
        Under CPU autocast, which the eager path ignores, TorchScript would run another, unfused
        version with autocast's casts: such calls run eagerly. So do calls where Winograd's products
        would not be float32 (`exact_float32`: autocast, or float32 matmul precision "medium"), whose
        eager path then takes the direct convolutions.
        """
        if self._programs is None or len(x) != self._batch or torch.is_autocast_enabled("cpu"):
            return None
        if self._winograd and not exact_float32():
            return None
        return self._programs.get(x, Plan(*self._plan(x)))

    def _plan(self, x: torch.Tensor) -> tuple[int, int]:
        """`_chunk_plan` of the fused steps for `x`'s shape and dtype, worked out once per shape (a walk
        of the steps' shapes, 21 µs for vgg16); at most `_MAX_PLANS` are kept, then all forgotten at once."""
        key = (tuple(x.shape), x.dtype)
        plan = self._plans.get(key)
        if plan is None:
            assert self._steps is not None
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            n, c, h, w = x.shape
            plan = self._plans[key] = _chunk_plan(self._steps, (n, c, h, w), x.dtype)
        return plan

    def _compile_config(self) -> contextlib.AbstractContextManager[object]:
        """Inductor settings for a call that may compile (torch.compile's `options` drop `freezing`)."""
        if not self._freezing:
            return contextlib.nullcontext()
        import torch._inductor.config as inductor_config

        patch: contextlib.AbstractContextManager[object] = inductor_config.patch(freezing=True)
        return patch

    def extra_repr(self) -> str:
        """The device, the dtype (and why, when it was chosen for this machine), compiled, CUDA graphs."""
        note = f" ({self.dtype_note})" if self.dtype_note else ""
        return (
            f"device={self.device}, dtype={self.dtype}{note}, compiled={self.compiled}, "
            f"cuda_graphs={self.cuda_graphs}, onednn_graph={self.onednn_graph}, winograd={self.winograd}"
        )


def _dtype_note(device: torch.device, dtype: torch.dtype) -> str:
    """What `repr` says about a dtype `optimize_for_inference` chose itself."""
    if device.type == "cpu" and dtype == torch.bfloat16:
        return "this CPU's default: it computes bf16 natively (AVX512_BF16/AMX); dtype=torch.float32 for float32"
    return f"the default on {device.type}"


def optimize_for_inference(
    model: VGG,
    *,
    device: DeviceArg = None,
    dtype: torch.dtype | None = None,
    batch_size: int | None = None,
    compile: bool | None = None,
    onednn_graph: bool = True,
    winograd: bool = True,
) -> InferenceVGG:
    """An inference-only copy of `model` that runs as fast as this machine allows; `model` is untouched.

    Any input of at least 32x32 pixels works; bad input is refused like `VGG` refuses it. The
    process-wide `torch.backends.cudnn.benchmark` is left to the caller: turn it on for fixed sizes.

    Args:
        model: a vggnet VGG with weights (not on the meta device).
        device: where to run (default: where `model`'s parameters are).
        dtype: default `default_dtype(device)`: bf16 on CUDA GPUs that have it, fp16 on older GPUs, bf16
            on CPUs that compute it natively (AVX512_BF16 or AMX, as OpenVINO does; the repr says so),
            float32 on other CPUs. `torch.float32` for full precision.
        batch_size: the batch you will feed, if fixed. On CPU the oneDNN weight layouts are chosen for
            it (for the chunks of it the convolutions take, `images_per_chunk`); on CUDA with compile and
            a batch up to `CUDA_GRAPH_MAX_BATCH`, the forward is recorded as CUDA graphs. Other batch
            sizes still work.
        compile: torch.compile the forward (default: on for CUDA, off for CPU). The first call of each
            new input shape compiles (tens of seconds); later calls are fast. All optimized models share
            one compiled function, and torch.compile keeps at most 8 versions of it per process (dynamo's
            `recompile_limit`); past that the forward runs uncompiled (torch logs a warning). Many models
            or shapes in one process: call `torch.compiler.reset()` between them, or raise the limit.
        onednn_graph: on CPU, not compiled: run each batch of `batch_size` images (default 1) as a
            oneDNN Graph program, made on the second call of its shape (about 0.4 s for vgg16; at most 4
            image sizes) through TorchScript's oneDNN fuser, 2-8% faster (`vggnet.deploy.onednn_graph`),
            with the eager path's logits, bit for bit; other batch sizes run eagerly. A program holds
            oneDNN's packed copy of the weights (285 MB for vgg16 in bf16) until the model is deleted.
            False: the eager path alone.
        winograd: on CPU in float32, not compiled: compute the 3x3 convolutions whose input and output
            channels have a harmonic mean of at least 160 (vgg16's from conv3_1 on) by Winograd F(4x4,
            3x3) in the calls where it pays (at least 32 tiles of 4x4, every buffer within 32 MiB;
            `vggnet.deploy.winograd`), except under CPU autocast or a reduced float32 matmul
            precision (then directly): vgg16 ran 1.14x as fast at batch 1 and 1.23x at batch 8 (2-core
            Xeon), within a relative error of 1e-4 of the exact convolution (about 1e-5 measured), at the
            cost of a transformed copy of those weights (four times their size: 231 MB for vgg16) and
            0.5-0.6 s more to build (0.78-0.91 s against 0.27-0.28 for vgg16). False: oneDNN's direct
            convolutions throughout.

    Returns:
        The prepared `InferenceVGG`.

    Raises:
        UsageTypeError: `model` is not a vggnet VGG.
        UsageError: a bad `batch_size` or `dtype` (int8 needs `vggnet.deploy.quantize.quantize`), or no
            weights (meta device).
        DeviceError: CUDA asked for where there is none.
    """
    target = _check_arguments(model, device, dtype, batch_size)
    note = "" if dtype is not None else _dtype_note(target, default_dtype(target))
    dtype = dtype if dtype is not None else default_dtype(target)
    compile = compile if compile is not None else target.type == "cuda"
    cuda_graphs = compile and target.type == "cuda" and batch_size is not None and batch_size <= CUDA_GRAPH_MAX_BATCH

    net = fold_batchnorm(model)
    net.requires_grad_(False)
    net.to(device=target, dtype=dtype).to(memory_format=torch.channels_last)
    logger.debug(
        "optimize_for_inference: device=%s dtype=%s compile=%s cuda_graphs=%s", target, dtype, compile, cuda_graphs
    )
    static = batch_size is not None
    return InferenceVGG(
        net,
        compile=compile,
        cuda_graphs=cuda_graphs,
        static_shapes=static,
        batch_size=batch_size,
        dtype_note=note,
        onednn_graph=onednn_graph,
        winograd=winograd,
    )


def _check_arguments(model: VGG, device: DeviceArg, dtype: torch.dtype | None, batch_size: int | None) -> torch.device:
    """optimize_for_inference's refusals; returns the target device."""
    if not isinstance(model, VGG):
        raise UsageTypeError(f"optimize_for_inference expects a vggnet VGG, got {type(model).__name__}")
    if batch_size is not None:
        check_int("batch_size", batch_size)
    if any(p.is_meta for p in model.parameters()):
        raise UsageError(
            "the model's parameters are on the meta device (no values to optimize): build it with weights, "
            "e.g. vggnet.vgg16(weights='DEFAULT'), or load a state dict into it with load_state_dict(..., assign=True)"
        )
    target = torch.device(device) if device is not None else next(model.parameters()).device
    if target.type == "meta":
        raise UsageError("device='meta' holds no values to compute with; use device='cpu' or 'cuda'")
    if target.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {target} asked for, but CUDA is not available; use device='cpu'")
    if dtype in (torch.int8, torch.qint8, torch.quint8):
        # int8 needs calibration images and an accuracy check: vggnet/quantize.py (issue 16).
        raise UsageError(
            f"dtype must be a floating-point dtype here, got {dtype}; int8 needs calibration images: use "
            "vggnet.deploy.quantize.quantize(model, calibration), which calibrates, compares with float32 and falls "
            "back to float32 where oneDNN has no int8 kernels"
        )
    if dtype is not None and not dtype.is_floating_point:
        raise UsageError(f"dtype must be a floating-point dtype, got {dtype}")
    return target
