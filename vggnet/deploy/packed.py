"""The base of the models whose weights are packed once, when they are made: `InferenceVGG` and `Int8VGG`.

Such a model holds copies of its weights that its parameters do not show: oneDNN's blocked layouts,
frozen oneDNN Graph programs, int8 weights packed per batch size, a compiled forward. Changing the
parameters afterwards left those copies behind: after `.half()` the next call failed inside oneDNN
("could not create a primitive descriptor"), and a `load_state_dict` with the model's own keys changed
the parameters while the packed copies kept computing with the old weights. So, where a model holds
packed copies (`is_packed`), `PackedModel` refuses, with the fix:

- a conversion that would change a tensor (`.to()`, `.half()`, `.double()`, `.cuda()`, `to_empty()`, a
  new memory format); one that changes nothing (`.to("cpu")` on the CPU, `.float()` on a float32 model)
  is fine;
- loading a state dict, into the model itself or into anything holding it (`nn.Module.load_state_dict`
  asks each module for its part: `_load_from_state_dict`);
- pickling (`torch.save`, multiprocessing): oneDNN's opaque tensors have no storage to save.

`copy.deepcopy` makes a working copy. Reaching inside (the prepared VGG an optimized model runs is its
`net`) is not guarded: change the VGG you made the model from, and make it again.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from vggnet.errors import UnsupportedError

__all__ = ["PackedModel"]


class PackedModel(nn.Module):
    """A module whose weights were packed for one device and dtype when it was made; see the module docstring.

    Subclasses say how to make one again (`remake`), what it was made for (`prepared_for`) and whether
    it holds packed copies at all (`is_packed`).
    """

    remake = "make it again from the VGG"  # the fix each refusal ends with
    # attributes made from the weights: not deep-copied, but made again for the copy by `_repack`
    _made_from_weights: tuple[str, ...] = ()

    def _repack(self) -> None:
        """Make the attributes named in `_made_from_weights` from this model's weights (for a deep copy)."""

    def is_packed(self) -> bool:
        """Whether the model holds copies of its weights that its parameters do not show.

        Returns:
            True here; a subclass that sometimes packs nothing says so.
        """
        return True

    def prepared_for(self) -> str:
        """Where and in what the model computes, as the refusals name it.

        Returns:
            e.g. "cpu, torch.bfloat16".
        """
        return "its device and dtype"

    def refusal(self, what: str, fix: str) -> UnsupportedError:
        """The error for something this model cannot do.

        Args:
            what: what it cannot do, after the class name ("cannot load a state dict").
            fix: why, and what to do instead; `remake` is added at the end.

        Returns:
            The UnsupportedError to raise, one line.
        """
        return UnsupportedError(f"{type(self).__name__} {what}: {fix}{self.remake}")

    def train(self, mode: bool = True) -> PackedModel:
        """Only `train(False)`/`eval()`: the model is prepared for inference (BatchNorm folded, dropout gone).

        Args:
            mode: must be False.

        Returns:
            This module, in eval mode.

        Raises:
            UnsupportedError: `mode` is True.
        """
        if mode:
            raise self.refusal("is inference-only", "train the VGG itself, then ")
        return super().train(False)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> PackedModel:
        """nn.Module's conversions (`.to()` and the rest), where `fn` leaves every tensor as it is or nothing is
        packed; else refused.

        Raises:
            UnsupportedError: `fn` would replace a parameter or buffer of a packed model.
        """
        for t in _tensors(self, recurse) if self.is_packed() else ():
            converted = fn(t)
            if converted is not t:  # Tensor.to() returns the tensor itself where nothing changes
                raise self.refusal(
                    f"cannot be converted {_change(t, converted)}",
                    f"its weights were packed for {self.prepared_for()} when it was made; ",
                )
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        return self

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Refused where the model is packed: its packed copies would keep the old weights.

        `nn.Module.load_state_dict`, on this model or on one holding it, asks each module for its part here.

        Raises:
            UnsupportedError: the model is packed.
        """
        if self.is_packed():
            raise self.refusal(
                "cannot load a state dict", "its weights were packed when it was made; load it into the VGG, then "
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        """The state pickle saves, where nothing is packed; else refused.

        Returns:
            The module's attributes, as pickle takes them by default.

        Raises:
            UnsupportedError: the model is packed (oneDNN's packed tensors cannot be saved).
        """
        if self.is_packed():
            raise self.refusal(
                "cannot be saved or pickled (oneDNN's packed weights have no storage to save)",
                "save the VGG (vggnet.save) and, where it is loaded, ",
            )
        return dict(self.__dict__)

    def __copy__(self) -> PackedModel:
        """A shallow copy, as `copy.copy` makes of any module (it would otherwise fall back on pickling)."""
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        return clone

    def __deepcopy__(self, memo: dict[int, Any]) -> PackedModel:
        """A copy of everything (hooks and your own attributes included) but what is made from the weights,
        which is made again from the copied ones (`_repack`): oneDNN's packed tensors cannot be copied, and
        pickling, which deepcopy would fall back on, is refused."""
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        state = {k: v for k, v in self.__dict__.items() if k not in self._made_from_weights}
        clone.__dict__.update(copy.deepcopy(state, memo))
        clone._repack()
        return clone


def _change(before: torch.Tensor, after: torch.Tensor) -> str:
    """What a conversion would have done to a tensor, as the refusal says it ("to torch.float16")."""
    if after.device != before.device:
        return f"to {after.device}"
    if after.dtype != before.dtype:
        return f"to {after.dtype}"
    return "to new tensors (another memory format, or to_empty())"


def _tensors(module: nn.Module, recurse: bool) -> Iterator[torch.Tensor]:
    """The parameters and buffers `nn.Module._apply` converts."""
    yield from module.parameters(recurse=recurse)
    yield from module.buffers(recurse=recurse)
