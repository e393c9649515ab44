"""Argument checks the public functions share, so that one kind of bad value gets one message: counts,
numbers in a range, choices, devices; and `same_bits`, the one bit-for-bit comparison of tensors.

Only `check_device`, `available_devices` and `same_bits` need torch, and they import it when called: the
command line can check its arguments without importing torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from vggnet.errors import DeviceError, UsageError

if TYPE_CHECKING:
    import torch

__all__ = [
    "available_devices",
    "check_choice",
    "check_device",
    "check_float",
    "check_int",
    "check_workers",
    "field_problems",
    "is_int",
    "max_workers",
    "same_bits",
]

WORKERS_PER_CPU = 4  # data-loading processes per CPU core at most: more only queue for the same cores


def is_int(value: object, *, least: int | None = None, most: int | None = None) -> bool:
    """Whether `value` is an int from `least` to `most`: the test `check_int` makes, for a caller with its own message.

    Args:
        value: What was given; True and False are not counts here, though Python's bool is an int.
        least: The smallest value allowed (included); None: no lower bound.
        most: The largest value allowed (included); None: no upper bound.

    Returns:
        True for a whole number in the range; False otherwise, for a float such as 2.0 too.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return (least is None or value >= least) and (most is None or value <= most)


def check_int(
    name: str, value: object, *, least: int = 1, most: int | None = None, what: str = "", fix: str = ""
) -> None:
    """ValueError unless `value` is a whole number from `least` to `most` (a bool is not a count).

    Args:
        name: The argument's name, as the caller spells it.
        value: What was given.
        least: The smallest value allowed; 1 (the default) reads "a positive integer".
        most: The largest value allowed; None: no upper bound.
        what: What the number is ("pixels", "the outputs of fc8"), said in brackets after the range.
        fix: What to do instead, said after the value given.

    Raises:
        UsageError: (a ValueError) `value` is not an int, is a bool or is out of range; the message names
            all three.
    """
    if is_int(value, least=least, most=most):
        return
    if most is not None:
        kind = f"an integer from {least} to {most}"
    else:
        kind = "a positive integer" if least == 1 else f"an integer >= {least}"
    raise UsageError(f"{name} must be {kind}{f' ({what})' if what else ''}, got {value!r}{f'; {fix}' if fix else ''}")


def max_workers() -> int:
    """The most data-loading processes a run may start: `WORKERS_PER_CPU` per CPU core this process may use.

    Returns:
        4 times the cores this process may run on (its affinity where the system tells it), at least 4.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return WORKERS_PER_CPU * max(cores or 1, 1)


def check_workers(name: str, value: object) -> None:
    """ValueError unless `value` is a count of data-loading processes from 0 to `max_workers()`.

    Args:
        name: The argument's name, as the caller spells it ("workers", "--workers").
        value: What was given.

    Raises:
        ValueError: not an int, negative, or more than `WORKERS_PER_CPU` per core; the message says the bound.
    """
    most = max_workers()
    check_int(name, value, least=0, most=most, what=f"{WORKERS_PER_CPU} per CPU core, {most // WORKERS_PER_CPU} here",
              fix="each is a process decoding images on the same cores; a few are enough")  # fmt: skip


def check_float(
    name: str,
    value: object,
    *,
    expected: str,
    above: float | None = None,
    least: float | None = None,
    below: float | None = None,
    most: float | None = None,
    fix: str = "",
) -> None:
    """ValueError unless `value` is a number (an int or a float; not a bool, not NaN) in the range given.

    `above` and `below` are open bounds, `least` and `most` closed ones; `below=math.inf` refuses
    infinity too.

    Args:
        name: The argument's name, as the caller spells it.
        value: What was given.
        expected: The valid values as the message says them ("in [0, 1), e.g. 0.1",
            "a probability between 0 and 1").
        above: `value` must be greater than this.
        least: `value` must be at least this.
        below: `value` must be less than this.
        most: `value` must be at most this.
        fix: What to do instead, said after the value given.

    Raises:
        UsageError: (a ValueError) "`name` must be `expected`, got `value`", then `fix`.
    """
    if not isinstance(value, bool) and isinstance(value, (int, float)) and not math.isnan(value):
        lower = (above is None or value > above) and (least is None or value >= least)
        if lower and (below is None or value < below) and (most is None or value <= most):
            return
    raise UsageError(f"{name} must be {expected}, got {value!r}{f'; {fix}' if fix else ''}")


def check_choice(name: str, value: object, choices: Collection[object], *, quote: bool = False) -> None:
    """ValueError listing `choices` unless `value` is one of them.

    Args:
        name: The argument's name, as the caller spells it.
        value: What was given.
        choices: The valid values, in the order the message lists them.
        quote: List the choices as Python literals ('0.1', '-1-1'), where bare ones could read as
            numbers or ranges; else as they are typed on the command line (linear, full).

    Raises:
        UsageError: (a ValueError) "`name` must be one of ..., got `value`".
    """
    if value not in choices:
        listed = ", ".join(repr(c) if quote else str(c) for c in choices)
        raise UsageError(f"{name} must be one of {listed}, got {value!r}")


def available_devices() -> list[str]:
    """The devices a model can be put on here: cpu, then cuda and cuda:N, then mps.

    Returns:
        Their names as torch.device takes them ("cpu", "cuda", "cuda:0", ...).
    """
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        found += ["mps", "mps:0"]  # one MPS device
    return found


def check_device(device: str | torch.device | None) -> torch.device | None:
    """`device` as a torch.device if this machine has it ("meta" too).

    Args:
        device: a device name ("cpu", "cuda:1"), a torch.device, or None.

    Returns:
        The torch.device; None for None (the caller's default).

    Raises:
        DeviceError: (a RuntimeError and a usage error) this machine has no such device; the message lists
            the ones it has.
    """
    import torch

    if device is None:
        return None
    try:
        dev: torch.device | None = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        dev = None
    # torch.device spells "cuda:0" and "mps:0" as given; any "cpu:N" is the one CPU device.
    if dev is None or (dev.type not in ("cpu", "meta") and str(dev) not in available_devices()):
        raise DeviceError(f"no device {str(device)!r} here; valid: {', '.join(available_devices())}")
    return dev


def same_bits(a: Any, b: Any) -> bool:
    """Whether `a` and `b` are dense tensors of the same dtype, shape and bytes.

    NaN equals the same NaN and -0.0 is not 0.0, where `torch.equal` says NaN != NaN (a file holding one,
    as the features-only VGG16 record's classifier does, would never read back as written). Anything but
    two dense (strided, not quantized) tensors is not the same: a quantized tensor's bytes cannot be
    viewed as uint8 (torch 2.14 crashed the process on it).

    Args:
        a: a tensor (or anything else, which is not the same).
        b: the other.

    Returns:
        True only for two dense tensors with the same dtype, shape and bytes (on any devices).
    """
    import torch

    dense = [isinstance(t, torch.Tensor) and t.layout == torch.strided and not t.is_quantized for t in (a, b)]
    if not all(dense):
        return False
    a, b = a.detach().cpu(), b.detach().cpu()
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def field_problems(
    record: Mapping[str, Any], fields: Mapping[str, type | tuple[type, ...]], where: str = ""
) -> list[str]:
    """What is missing from `record`, or of another type than `fields` says, one phrase per field.

    A bool never passes for an int (Python counts it as one); a file's dict is checked before it is used.

    Args:
        record: the mapping read from a file.
        fields: each required key and the type (or types) its value must have.
        where: appended to "is missing" (e.g. " from the training state").

    Returns:
        Phrases such as "'arch' is missing" and "'in_chans' is a str, not an int"; empty when all is well.
    """
    problems = []
    for key, kind in fields.items():
        if key not in record:
            problems.append(f"{key!r} is missing{where}")
        elif not isinstance(record[key], kind) or isinstance(record[key], bool):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            problems.append(f"{key!r} is {_a(type(record[key]).__name__)}, not {_a(names)}")
    return problems


def _a(noun: str) -> str:
    """`noun` with its indefinite article: "an int", "a str"."""
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"
