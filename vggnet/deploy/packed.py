"""The base of the models whose weights are packed once, when they are made: `InferenceVGG` and `Int8VGG`.

Such a model holds copies of its weights that its parameters do not show: oneDNN's blocked layouts,
frozen oneDNN Graph programs, int8 weights packed per batch size. Changing the parameters afterwards left
those copies behind: `.half()` or `.to(torch.float64)` made the next call fail inside oneDNN ("could not
create a primitive descriptor"), and a `load_state_dict` with the model's own keys changed the parameters
while the packed copies kept computing with the old weights. So `PackedModel` refuses, with the fix:

- a conversion that would change a tensor (`.to()`, `.half()`, `.double()`, `.cuda()`, `to_empty()`, ...);
  one that changes nothing (`.to("cpu")` on the CPU, `.float()` on a float32 model) is fine;
- `load_state_dict`;
- pickling (`torch.save`, multiprocessing): oneDNN's opaque tensors have no storage to save.

`copy.deepcopy` makes a working copy (`InferenceVGG` makes its packed copies again for the copy).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn

import torch
from torch import nn

from vggnet.errors import UnsupportedError

__all__ = ["PackedModel"]


class PackedModel(nn.Module):
    """A module whose weights were packed for one device and dtype when it was made; see the module docstring.

    Subclasses say how to make one again (`remake`) and what it was made for (`prepared_for`).
    """

    remake = "make it again from the VGG"  # the fix each refusal ends with

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

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> PackedModel:
        """nn.Module's conversions (`.to()` and the rest), where `fn` leaves every tensor as it is; else refused.

        Raises:
            UnsupportedError: `fn` would convert a parameter or buffer.
        """
        for t in _tensors(self, recurse):
            if fn(t) is not t:  # Tensor.to() returns the tensor itself where nothing changes
                raise self.refusal(
                    "cannot be converted (.to(), .half(), .cuda(), to_empty())",
                    f"its weights were packed for {self.prepared_for()} when it was made; ",
                )
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        return self

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> NoReturn:
        """Refused: the packed copies of the weights would keep the old ones.

        Raises:
            UnsupportedError: always, with the fix.
        """
        raise self.refusal(
            "cannot load a state dict", "its weights were packed when it was made; load it into the VGG, then "
        )

    def __getstate__(self) -> NoReturn:
        """Refused: oneDNN's packed tensors cannot be saved (`torch.save`, pickle, multiprocessing).

        Raises:
            UnsupportedError: always, with the fix.
        """
        raise self.refusal(
            "cannot be saved or pickled (oneDNN's packed weights have no storage to save)",
            "save the VGG (vggnet.save) and, where it is loaded, ",
        )

    def __copy__(self) -> PackedModel:
        """A shallow copy, as `copy.copy` makes of any module (it would otherwise fall back on pickling)."""
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        return clone

    def __deepcopy__(self, memo: dict[int, Any]) -> PackedModel:
        """A copy whose children copy themselves (pickling, which deepcopy would fall back on, is refused)."""
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone


def _tensors(module: nn.Module, recurse: bool) -> Iterator[torch.Tensor]:
    """The parameters and buffers `nn.Module._apply` converts."""
    yield from module.parameters(recurse=recurse)
    yield from module.buffers(recurse=recurse)
