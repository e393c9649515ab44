"""What a checkpoint's state dict holds, and the checks it passes before it is assigned to a model.

`arch_of_state` reads the architecture off the keys; `model_from_state` builds it on the meta device
and assigns the state dict (a new fc8, a gap head and other input channels handled);
`load_checkpoint_state` assigns it strictly, once every tensor is dense, on the CPU or the asked
device, floating point and finite (else `BadCheckpointError` names the tensors, and nothing is assigned).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from vggnet.errors import BadCheckpointError, CheckpointMismatchError
from vggnet.models.config import ARCHS, IN_CHANNELS, arch_config
from vggnet.models.vgg import VGG, adapt_input_conv, init_module, make_layers

__all__ = ["arch_of_state", "load_checkpoint_state", "model_from_state"]

logger = logging.getLogger(__name__)

_HEAD = "classifier.6."
_GAP_HEAD = "classifier.0."  # fc8 of a head="gap" model
_FIRST = "features.0.weight"


# --- a model from a state dict ---------------------------------------------------------------------


def model_from_state(
    arch: str,
    state: Mapping[str, torch.Tensor],
    device: str | torch.device | None,
    kwargs: dict[str, Any],
    *,
    nonfinite: tuple[str, ...] = (),
    source: str = "the checkpoint",
) -> VGG:
    """Build `arch` on the meta device and assign a checkpoint's state dict (new head and in_chans handled).

    Args:
        arch: the builder name the state dict is for.
        state: the checkpoint's tensors, in vggnet's layout.
        device: where the model's tensors go (default: where they are, the CPU).
        kwargs: what goes to `VGG` (`num_classes`, `head`, `dropout`), and `in_chans` (default: the
            checkpoint's own; 3 channels are adapted to another count). Changed in place: `num_classes`,
            `head` and `init_weights` are filled in.
        nonfinite: state-dict key prefixes whose tensors may hold NaN or Inf.
        source: how messages name the checkpoint.

    Returns:
        The model, every tensor assigned from `state` but a fresh fc8 when `num_classes` differs.

    Raises:
        BadCheckpointError: a tensor fails the checks of `load_checkpoint_state`.
        CheckpointMismatchError: the keys or shapes do not fit `arch`.
    """
    _check_tensors(state, source)  # before reading shapes: every value a tensor
    first = state.get(_FIRST)
    in_chans = kwargs.pop("in_chans", first.shape[1] if first is not None and first.dim() == 4 else IN_CHANNELS)
    if first is not None and first.dim() == 4 and first.shape[1] == IN_CHANNELS != in_chans:
        logger.info("%s: adapting the pretrained first convolution from 3 to %d input channels", arch, in_chans)
        state = {**state, _FIRST: adapt_input_conv(first, in_chans)}
    state_head = _head_of_state(state)
    head = kwargs.setdefault("head", state_head)
    if head == "gap" != state_head:  # fc6-fc7 do not fit a gap head: every layer of `features` is kept
        logger.info(
            "%s: head='gap': the checkpoint's classifier is left out, classifier.0 is freshly initialised", arch
        )
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    head_key = _GAP_HEAD if head == "gap" else _HEAD
    fc8 = state.get(head_key + "weight")
    checkpoint_classes = fc8.shape[0] if fc8 is not None and fc8.dim() == 2 else None
    num_classes = kwargs.setdefault("num_classes", checkpoint_classes or 1000)
    new_head = (checkpoint_classes is not None and num_classes != checkpoint_classes) or (head == "gap" and fc8 is None)
    kwargs["init_weights"] = False
    row, batch_norm = arch_config(arch)
    with torch.device("meta"):
        model = VGG(make_layers(row, batch_norm, in_chans), **kwargs)
    if new_head:
        logger.info(
            "%s: checkpoint has %d classes, num_classes=%d: loading every layer but fc8, which is freshly initialised",
            arch, checkpoint_classes, num_classes,
        )  # fmt: skip
        state = {k: v for k, v in state.items() if not k.startswith(head_key)}
    fresh = (head_key,) if new_head else ()
    load_checkpoint_state(model, state, device=device, fresh=fresh, nonfinite=nonfinite, source=source)
    return model


def _head_of_state(state: Mapping[str, torch.Tensor]) -> str:
    """ "gap" for a state dict whose only classifier layer is a Linear(512, N), else "vgg"."""
    first = state.get(_GAP_HEAD + "weight")
    gap = first is not None and first.shape[1] == 512 and "classifier.3.weight" not in state
    return "gap" if gap else "vgg"


def arch_of_keys(state: Mapping[str, torch.Tensor]) -> str | None:
    keys = {k for k in state if not k.endswith("num_batches_tracked")}  # the 2017 checkpoints lack them
    head = _head_of_state(state)
    for arch in ARCHS:
        row, batch_norm = arch_config(arch)
        with torch.device("meta"):
            layout = VGG(make_layers(row, batch_norm), init_weights=False, head=head).state_dict()
        if keys == {k for k in layout if not k.endswith("num_batches_tracked")}:
            return arch
    return None


def arch_of_state(state: Mapping[str, torch.Tensor], source: str = "the state dict") -> str:
    """The builder whose checkpoints have exactly `state`'s keys (fc8's width and the input channels may differ).

    Args:
        state: a state dict in vggnet's layout.
        source: how the message names the state dict.

    Returns:
        The builder name ("vgg16_bn").

    Raises:
        BadCheckpointError: (a ValueError) no builder's keys fit; the message names them all.
    """
    arch = arch_of_keys(state)
    if arch is None:
        raise BadCheckpointError(f"{source} is not a VGG checkpoint: its keys match none of {', '.join(ARCHS)}")
    return arch


def load_checkpoint_state(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    device: str | torch.device | None = None,
    fresh: tuple[str, ...] = (),
    *,
    nonfinite: tuple[str, ...] = (),
    source: str = "the checkpoint",
) -> None:
    """Assign `state` to a model built on the meta device, strictly, once its tensors pass the checks below.

    Tolerates only missing BatchNorm `num_batches_tracked` (the 2017 checkpoints lack them) and the
    modules named by the `fresh` key prefixes, which are created on `device` and initialised. Every
    tensor must be dense, on the CPU or `device` (where it is then moved), floating point (cast to the
    model's dtype; integers only for `num_batches_tracked`) and finite, except under the `nonfinite`
    key prefixes (a record's `Weights.nonfinite`).

    Args:
        model: a VGG built on the meta device.
        state: the checkpoint's tensors.
        device: where the tensors go; default the CPU.
        fresh: key prefixes of modules the checkpoint does not provide (a new fc8): created on `device` and
            initialised.
        nonfinite: key prefixes whose tensors may hold NaN or Inf.
        source: how messages name the checkpoint.

    Raises:
        BadCheckpointError: a tensor that is sparse, quantized, on another device, of an integer dtype or
            not finite; the message names the tensors, and nothing is assigned.
        CheckpointMismatchError: (a RuntimeError, as `load_state_dict`'s) missing, unexpected or misshaped
            keys, listed sorted.
    """
    _check_tensors(state, source)
    expected = model.state_dict()
    missing = sorted(k for k in expected.keys() - state.keys() if not k.endswith("num_batches_tracked"))
    missing = [k for k in missing if not k.startswith(fresh)] if fresh else missing
    unexpected = sorted(state.keys() - expected.keys())
    wrong_shape = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
        for k in state.keys() & expected.keys()
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong_shape:
        hint = " (is it a checkpoint of another VGG variant?)" if len(missing) + len(unexpected) > 8 else ""
        raise CheckpointMismatchError(
            f"checkpoint does not fit the model{hint}: missing keys {key_list(missing)}; "
            f"unexpected keys {key_list(unexpected)}; shape mismatches {key_list(wrong_shape)}"
        )
    target = torch.device(device) if device is not None else torch.device("cpu")
    full = _checked_values(state, expected, target, nonfinite, source)
    for k in expected.keys() - state.keys():
        if k.endswith("num_batches_tracked"):
            full[k] = torch.zeros((), dtype=torch.long, device=device)
    for name, module in model.named_modules():
        if fresh and (name + ".").startswith(fresh):
            module.to_empty(device=device or "cpu")
            init_module(module)
            full.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    model.load_state_dict(full, strict=True, assign=True)


# --- what a checkpoint's tensors may be --------------------------------------------------------------

_COUNTER = "num_batches_tracked"  # BatchNorm's step counter: the one integer tensor of a VGG state dict


def _check_tensors(state: object, source: str) -> None:
    """BadCheckpointError unless `state` maps names to dense tensors (nothing read from the tensors' data)."""
    if not isinstance(state, Mapping):
        raise BadCheckpointError(f"{source} is not a state dict (a mapping of names to tensors): it is a "
                                 f"{type(state).__name__}")  # fmt: skip
    odd = [f"{str(k)[:60]!r} ({type(v).__name__})" for k, v in state.items()
           if not (isinstance(k, str) and isinstance(v, torch.Tensor))]  # fmt: skip
    if odd:
        raise BadCheckpointError(
            f"{source} is not a state dict: its entries {_some(odd)} are not tensors under string names "
            "(a training checkpoint? pass the state dict it holds)"
        )
    # sparse, quantized and nested tensors have no plain shape to compare, let alone assign
    odd = [f"{k} ({_layout(t)})" for k, t in state.items() if _layout(t)]
    if odd:
        raise BadCheckpointError(
            f"{source} cannot be loaded: {_some(odd)} {'is' if len(odd) == 1 else 'are'} not dense; "
            "nothing was loaded: save dense tensors (t.to_dense(), t.dequantize())"
        )


def _layout(tensor: torch.Tensor) -> str:
    """What makes `tensor` other than a plain dense tensor ("sparse_coo", "quantized", "nested"), else ""."""
    if tensor.is_nested:
        return "nested"
    if tensor.is_quantized:
        return "quantized"
    return "" if tensor.layout == torch.strided else str(tensor.layout).removeprefix("torch.")


def _checked_values(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    target: torch.device,
    nonfinite: tuple[str, ...],
    source: str,
) -> dict[str, torch.Tensor]:
    """`state`'s dense tensors in the model's dtypes on `target`, once each is placed, typed and finite (see above)."""
    bad: dict[str, list[str]] = {}  # what is wrong -> the tensors it is wrong with
    for key, tensor in state.items():
        if tensor.device.type == "meta" and target.type != "meta":
            bad.setdefault("on the meta device, with no values (saved from a model never materialised)", []).append(key)
        elif not _placed(tensor.device, target):
            allowed = "the CPU" if target.type == "cpu" else f"the CPU or {target}"
            bad.setdefault(f"not on {allowed} (pass device= to load there)", []).append(f"{key} ({tensor.device})")
        elif key.endswith(_COUNTER) and (tensor.dtype.is_floating_point or tensor.dtype.is_complex
                                         or tensor.dtype == torch.bool):  # fmt: skip
            bad.setdefault("not of an integer dtype (BatchNorm counts batches)", []).append(f"{key} ({tensor.dtype})")
        elif not key.endswith(_COUNTER) and not tensor.dtype.is_floating_point:
            bad.setdefault("not floating point", []).append(f"{key} ({tensor.dtype})")
    if bad:
        problems = "; ".join(f"{_some(keys)} {'is' if len(keys) == 1 else 'are'} {what}" for what, keys in bad.items())
        raise BadCheckpointError(f"{source} cannot be loaded: {problems}; nothing was loaded")
    # (cast first: a float64 value beyond float32's range becomes inf, and is then refused)
    out = {k: t.to(device=target, dtype=expected[k].dtype).contiguous() for k, t in state.items()}
    if target.type != "meta":  # meta tensors hold no values to check
        _check_finite(out, nonfinite, source)
    return out


def _placed(where: torch.device, target: torch.device) -> bool:
    """True for a tensor on the CPU or on `target` ("cuda" takes any GPU index, "cuda:1" only its own)."""
    if where.type == "cpu":
        return True
    return where.type == target.type and (target.index is None or where.index == target.index)


def _check_finite(state: Mapping[str, torch.Tensor], nonfinite: tuple[str, ...], source: str) -> None:
    """BadCheckpointError naming the tensors that hold NaN or Inf, outside the `nonfinite` key prefixes."""
    flagged = []
    for key, tensor in state.items():
        if not tensor.dtype.is_floating_point or tensor.numel() == 0 or key.startswith(nonfinite):
            continue
        low, high = torch.aminmax(tensor)  # NaN propagates, Inf is an extreme: two scalars, no copy of the tensor
        if not bool(torch.isfinite(low) & torch.isfinite(high)):
            nan, inf = int(tensor.isnan().sum()), int(tensor.isinf().sum())
            flagged.append(f"{key} ({nan:,} NaN, {inf:,} Inf)")
    if flagged:
        raise BadCheckpointError(
            f"{source} holds NaN or Inf in {len(flagged)} tensor(s): {_some(flagged)}; nothing was loaded. "
            "Use a checkpoint from before the values diverged; a record whose layers are known to hold "
            "them (the features-only VGG16 classifier) declares them in Weights(nonfinite=(key prefixes,))"
        )


def key_list(items: list[str], n: int = 8) -> str:
    shown = [item if len(item) <= 100 else item[:97] + "..." for item in items[:n]]  # the file chose the keys
    return str(shown) + (f" and {len(items) - n} more" if len(items) > n else "")


def _some(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")
