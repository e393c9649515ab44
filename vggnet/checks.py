"""Argument checks the public functions share, so that one kind of bad value gets one message: counts, devices."""

from __future__ import annotations

import torch

from vggnet.errors import DeviceError

__all__ = [
    "available_devices",
    "check_device",
    "check_int",
]


def check_int(name: str, value: object, *, least: int = 1, what: str = "") -> None:
    """ValueError unless `value` is a whole number of at least `least` (a bool is not a count).

    `what` says what the number is ("pixels", "the outputs of fc8"); it goes in the message.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        kind = "a positive integer" if least == 1 else f"an integer >= {least}"
        raise ValueError(f"{name} must be {kind}{f' ({what})' if what else ''}, got {value!r}")


def available_devices() -> list[str]:
    """The devices a model can be put on here: cpu, then cuda and cuda:N, then mps."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        found += ["mps", "mps:0"]  # one MPS device
    return found


def check_device(device: str | torch.device | None) -> torch.device | None:
    """`device` as a torch.device if this machine has it ("meta" too); DeviceError listing the valid ones if not."""
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
