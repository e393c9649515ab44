"""What the commands print: results on stdout (plain text, tables, JSON), errors on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

PROG = "vggnet"


def error(message: str) -> None:
    """One line on stderr, as argparse says its own errors.

    Args:
        message: what went wrong, without the "vggnet: error: " prefix.
    """
    print(f"{PROG}: error: {message}", file=sys.stderr)


def print_json(data: Any) -> None:
    """`data` as indented JSON on stdout; NaN is refused (JSON has none: say null).

    Args:
        data: what `json.dumps` takes: dicts, lists, strings, finite numbers, None.
    """
    print(json.dumps(data, indent=2, allow_nan=False))


def print_predictions(predictions: Iterable[Mapping[str, Any]]) -> None:
    """One indented line per {"index", "label", "probability"}, as predict and explain show the top classes.

    Args:
        predictions: the classes, best first; probability in 0-1.
    """
    for pred in predictions:
        print(f"  {pred['probability']:7.2%}  {pred['label']} ({pred['index']})")


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; the columns listed in `right` right-aligned.

    Args:
        header: the column titles.
        rows: the cells, one sequence of strings per row.
        right: the indices of the columns to right-align (numbers).

    Returns:
        The header, a rule of dashes and the rows, joined by newlines.
    """
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(row) for row in rows)])


def mib(n: float) -> str:
    """A size in bytes as "1,234.5 MiB".

    Args:
        n: the size in bytes.

    Returns:
        The size in MiB with one decimal and thousands separators.
    """
    return f"{n / 2**20:,.1f} MiB"
