"""Argument checks the public functions share, so that one kind of bad value gets one message."""

from __future__ import annotations

__all__ = ["check_int"]


def check_int(name: str, value: object, *, least: int = 1, what: str = "") -> None:
    """ValueError unless `value` is a whole number of at least `least` (a bool is not a count).

    `what` says what the number is ("pixels", "the outputs of fc8"); it goes in the message.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        kind = "a positive integer" if least == 1 else f"an integer >= {least}"
        raise ValueError(f"{name} must be {kind}{f' ({what})' if what else ''}, got {value!r}")
