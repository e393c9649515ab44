"""Winograd F(4x4, 3x3): VGG's 3x3 convolutions with a quarter of the multiplications, in float32 on CPUs.

Every convolution of VGG is 3x3, stride 1, padding 1. Winograd's minimal filtering (Lavin and Gray,
"Fast Algorithms for Convolutional Neural Networks", 2015) computes a 4x4 tile of such a convolution's
output from a 6x6 tile of its input with 36 multiplications per input and output channel, where the
direct convolution needs 144: the 6x6 input tiles are transformed (`B^T d B`), multiplied by the weights
transformed once (`G g G^T`), as 36 matrix products of (tiles, C_in) by (C_in, C_out), and the 36
products transformed back to the 4x4 tile (`A^T m A`). The three transforms are each one matrix
product over the tile's entries here, and the 36 products one batched matrix product, so the work is
four large `torch.bmm` calls and a few copies. All four are `bmm`, which TorchScript's oneDNN fuser
leaves alone, so a program (`vggnet.deploy.onednn_graph`) runs the same kernels as the eager path and
gives its bits (`aten::matmul` and `mm` it would hand to oneDNN's own matmul).

The products must be float32: CPU autocast would run them in bf16, and so would PyTorch's reduced
float32 matmul precision (`torch.set_float32_matmul_precision("medium")`, oneDNN's `fp32_precision =
"bf16"`), which gave errors of 4e-2 of a layer's largest output. Under either (`exact_float32`) the
convolutions run directly, as they do with autograd on.

What it gains depends on the channels and the shape (`applies`, `wins`). The products save work in
proportion to C_in x C_out per tile, the transforms cost in proportion to C_in + C_out, so the rule is
on their ratio, the channels' harmonic mean (`MIN_CHANNELS`). On the 2-core Xeon (AVX-512), each layer
alone against oneDNN's direct convolution with its weight packed for the shape
(`benchmarks/bench_winograd.py`, `winograd-cpu-2026-12-07.json`): 512 channels at 28x28 took 9.7-9.8 ms
against 12.8-13.2 on one image and 58-61 against 98-100 on eight; 256 at 56x56 9.0-10.3 against
13.0-13.1 on one; but 128 to 128 at 112x112 (harmonic mean 128) 14.4 against 13.5, 64 to 128 8.4
against 7.2, and 64 at 224x224 29 against 14. With fewer than `MIN_TILES` tiles the products are too
short to pay for the transforms (512 channels at 14x14 on one image, 16 tiles: 4.9-5.4 against 3.8-4.0
ms), and a buffer over `MAX_BYTES` is page-faulted in on every call (256 channels at 56x56 on eight
images: 140-147 against 100-102 ms).

The rounding differs from the direct convolution's: the transforms add and subtract multiples of the
input (up to 25 of them for an entry), so the result's largest error, relative to the largest output,
was 4.7e-6 to 8.6e-6 for the vgg16 layers it takes, in float32 (the direct convolution's 1.7e-6 to
3.5e-6, both against float64); `MAX_RELATIVE_ERROR` (1e-4) is what the tests demand. bf16 and int8
keep the direct convolution: in bf16 the transformed values would round to 8 bits of mantissa, and
oneDNN's AMX kernels are faster there anyway.

The ReLU here is oneDNN's: a negative, -0 and a NaN become +0 (`torch.relu` keeps -0 and NaNs, sign bit
and all), so the integer max-pools that follow (`vggnet.deploy.inference`) see no value with its sign
bit set; an image that holds a NaN or an infinity gets NaN logits all the same (`mark_non_finite`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MAX_BYTES",
    "MAX_RELATIVE_ERROR",
    "MIN_CHANNELS",
    "MIN_TILES",
    "WinogradConvReLU",
    "applies",
    "exact_float32",
    "wins",
]

# The largest error the tests allow, relative to the largest output (float32 against float64).
MAX_RELATIVE_ERROR = 1e-4
# The least harmonic mean of the input and output channels, 2 C_in C_out / (C_in + C_out), for which
# Winograd pays: 128 to 256 (171) won, 128 to 128 (128) and 64 to 128 (85) lost.
MIN_CHANNELS = 160
# The largest buffer of one call (36 entries x tiles x the larger channel count, float32): glibc's largest
# heap block (`vggnet.deploy.inference.keep_activations_on_heap`). A larger one is a fresh mmap, page-faulted
# in on every call: 8 images of 256 channels at 56x56 (57.8 MB) ran 0.63-0.89 times as fast as directly.
MAX_BYTES = 32 << 20
# Fewer 4x4 output tiles in one call, and the 36 products are too short to pay for the transforms:
# 512 channels at 14x14 on 1 image (16 tiles) ran 0.61-0.85 times as fast as directly in four runs; on 2
# images (32 tiles), and at 7x7 on 8, Winograd won.
MIN_TILES = 32

_TILE = 4  # output pixels per tile side
_SPAN = _TILE + 2  # input pixels per tile side (the 3x3 kernel's reach)

# Lavin and Gray's F(4x4, 3x3): the points 0, 1, -1, 2, -2 and infinity.
_BT = [
    [4, 0, -5, 0, 1, 0],
    [0, -4, -4, 1, 1, 0],
    [0, 4, -4, -1, 1, 0],
    [0, -2, -1, 2, 1, 0],
    [0, 2, -1, -2, 1, 0],
    [0, 4, 0, -5, 0, 1],
]
_G = [
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
]
_AT = [
    [1, 1, 1, 1, 1, 0],
    [0, 1, -1, 2, -2, 0],
    [0, 1, 1, 4, 4, 0],
    [0, 1, -1, 8, -8, 1],
]


def applies(conv: nn.Module, dtype: torch.dtype) -> bool:
    """Whether `conv` is a convolution Winograd F(4x4, 3x3) computes here, for some input shapes.

    Args:
        conv: a module of a VGG's features.
        dtype: the dtype the model computes in (only float32 qualifies).

    Returns:
        True for a plain 3x3 convolution, stride 1, padding 1, no dilation or groups, whose input and
        output channels have a harmonic mean of at least `MIN_CHANNELS`, in float32.
    """
    return (
        type(conv) is nn.Conv2d
        and dtype == torch.float32
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and 2 * conv.in_channels * conv.out_channels >= MIN_CHANNELS * (conv.in_channels + conv.out_channels)
    )


def wins(shape: torch.Size | tuple[int, ...], out_channels: int) -> bool:
    """Whether an input of `shape` is one Winograd computes faster than the direct convolution.

    Args:
        shape: the convolution's input shape, (N, C_in, H, W).
        out_channels: the convolution's output channels.

    Returns:
        True where the output makes at least `MIN_TILES` tiles of 4x4 and Winograd's largest buffer
        stays within `MAX_BYTES` (measured on the 2-core Xeon: above).
    """
    n, c, h, w = shape
    tiles = n * -(-h // _TILE) * -(-w // _TILE)
    return tiles >= MIN_TILES and _SPAN * _SPAN * tiles * max(c, out_channels) * 4 <= MAX_BYTES


def exact_float32() -> bool:
    """Whether float32 matrix products run in float32 now (Winograd's products must).

    Returns:
        False under CPU autocast or with PyTorch's float32 matmul precision reduced to bf16 ("medium");
        True otherwise (TF32 does not touch CPUs).
    """
    if torch.is_autocast_enabled("cpu"):
        return False
    onednn = getattr(torch.backends.mkldnn, "matmul", None)
    if onednn is not None and hasattr(onednn, "fp32_precision"):
        return str(onednn.fp32_precision) != "bf16"
    return torch.get_float32_matmul_precision() != "medium"


def _kron(rows: Sequence[Sequence[float]]) -> torch.Tensor:
    """The transform over a flattened tile: `M^T t M` for a (k, k) tile `t` is `kron(M^T, M^T) @ t.flatten()`."""
    m = torch.tensor(rows, dtype=torch.float64)
    return torch.kron(m, m)


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 convolution's weight in the Winograd domain, computed in float64.

    Args:
        weight: (C_out, C_in, 3, 3).

    Returns:
        (36, C_in, C_out) in `weight`'s dtype: `G g G^T` for each input and output channel, by tile entry.
    """
    g = torch.tensor(_G, dtype=torch.float64)
    u = torch.einsum("ik,ockl,jl->ijco", g, weight.detach().double(), g)  # (6, 6, C_in, C_out)
    return u.reshape(_SPAN * _SPAN, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def conv3x3_relu(
    x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, b: torch.Tensor, a: torch.Tensor
) -> torch.Tensor:
    """A 3x3, stride 1, padding 1 convolution of `x` followed by a ReLU, by Winograd F(4x4, 3x3).

    Args:
        x: (N, C_in, H, W), channels_last.
        u: the weight from `transform_weight`, (36, C_in, C_out).
        bias: (C_out,), or None.
        b: the input transform over a flattened tile, (36, 36).
        a: the output transform, (16, 36).

    Returns:
        (N, C_out, H, W), channels_last; +0 wherever the convolution gave a negative, -0 or a NaN.
    """
    n, c, h, w = x.shape
    rows, cols = -(-h // _TILE), -(-w // _TILE)
    # zero padding: 1 before, and after it enough to make whole tiles (and their reach)
    padded = F.pad(x, (1, cols * _TILE + 1 - w, 1, rows * _TILE + 1 - h)).contiguous(memory_format=torch.channels_last)
    s_n, s_c, s_h, s_w = padded.stride()
    # (6, 6, N, rows, cols, C): each tile's 36 entries, the tiles overlapping by 2 pixels
    shape, strides = (_SPAN, _SPAN, n, rows, cols, c), (s_h, s_w, s_n, _TILE * s_h, _TILE * s_w, s_c)
    tiles = padded.as_strided(shape, strides).reshape(1, _SPAN * _SPAN, -1)
    del padded
    v = torch.bmm(b.unsqueeze(0), tiles).view(_SPAN * _SPAN, n * rows * cols, c)  # (36, tiles, C_in)
    del tiles
    m = torch.bmm(v, u)  # (36, tiles, C_out)
    del v
    c_out = m.shape[-1]
    y = torch.bmm(a.unsqueeze(0), m.view(1, _SPAN * _SPAN, -1)).view(_TILE, _TILE, n, rows, cols, c_out)
    del m  # each buffer freed once used: 4x less memory held at once
    # (4, 4, N, rows, cols, C_out) -> (N, rows, 4, cols, 4, C_out): the tiles in place, in one copy
    out = torch.empty(n, rows, _TILE, cols, _TILE, c_out, dtype=x.dtype, device=x.device)
    if bias is None:
        out.copy_(y.permute(2, 3, 0, 4, 1, 5))
    else:
        torch.add(y.permute(2, 3, 0, 4, 1, 5), bias, out=out)
    # oneDNN's ReLU: +0 for a negative, -0 and a NaN (`relu` keeps -0 and NaNs, sign bit and all);
    # one `where` took 10 ms on a (8, 28, 28, 512) map where these two took 0.7
    torch.threshold_(out, 0.0, 0.0)
    torch.nan_to_num_(out, nan=0.0, posinf=math.inf)
    image = out.view(n, rows * _TILE, cols * _TILE, c_out)
    if (rows * _TILE, cols * _TILE) != (h, w):  # cut to H x W
        image = image[:, :h, :w].contiguous()
    return image.permute(0, 3, 1, 2)  # (N, H, W, C_out) -> (N, C_out, H, W), channels_last


class WinogradConvReLU(nn.Module):
    """A convolution and its ReLU: by Winograd F(4x4, 3x3) for the shapes it `wins`, directly otherwise.

    Built from a convolution that `applies`; the transformed weight is a buffer (four times the weight:
    36 entries for 9), computed once (vgg16: 0.5-0.6 s for its nine). The choice is made per call
    from the input's shape, so a trace (`vggnet.deploy.onednn_graph`) keeps the one its shape got. With
    autograd on, or where float32 products would not be float32 (`exact_float32`), the convolution runs
    directly, its ReLU then `F.relu`'s (which keeps -0 and NaNs; `InferenceVGG` runs its own direct
    path instead).

    Args:
        conv: the convolution (kept as `conv`, sharing its parameters).
    """

    u: torch.Tensor
    b: torch.Tensor
    a: torch.Tensor

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        with torch.no_grad():
            self.register_buffer("u", transform_weight(conv.weight), persistent=False)
        dtype = conv.weight.dtype
        device = conv.weight.device
        self.register_buffer("b", _kron(_BT).to(device, dtype), persistent=False)
        self.register_buffer("a", _kron(_AT).to(device, dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of `x` and its ReLU.

        Args:
            x: (N, C_in, H, W).

        Returns:
            (N, C_out, H, W), channels_last where Winograd computed it.
        """
        if wins(x.shape, self.conv.out_channels) and not torch.is_grad_enabled() and exact_float32():
            return conv3x3_relu(x, self.u, self.conv.bias, self.b, self.a)
        return F.relu(self.conv(x))
