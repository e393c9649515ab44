"""What the benchmark scripts share and `vggnet bench` does not: a results file's header, writing it, a time budget.

The scripts import it as a sibling module (`import harness`): Python puts a script's own folder first
on `sys.path`, so `python benchmarks/bench_x.py` finds it from any working directory. It is not part
of the wheel; the measuring itself (`run_bench`, `time_interleaved`, the peak kernels) is
`vggnet.deploy.bench`, which `vggnet bench` needs too.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from vggnet.deploy.bench import device_name, kernel_settings, load_average, versions

__all__ = ["Budget", "environment", "save_results"]


def environment(device: torch.device) -> dict[str, Any]:
    """What a results file records about where and when it was measured."""
    return {
        "device": str(device),
        "device_name": device_name(device),
        "versions": versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average": list(load_average()),
        "threads": torch.get_num_threads(),
        "environment": kernel_settings(),
    }


class Budget:
    """A benchmark script's time budget, started at construction; `seconds=None` never runs out.

    `skip(**what)` is the check before each part: once the budget is spent it records `what`, with
    the reason, under `skipped` and returns True, and the script goes on to the next part (so the
    parts after it are listed too)."""

    def __init__(self, seconds: float | None, *, reason: str = "over --budget-s") -> None:
        self.seconds = seconds
        self.reason = reason
        self.skipped: list[dict[str, Any]] = []  # the scripts put this very list in their JSON
        self._start = time.perf_counter()

    def spent(self) -> float:
        return time.perf_counter() - self._start

    def left(self) -> float:
        return math.inf if self.seconds is None else self.seconds - self.spent()

    def skip(self, **what: Any) -> bool:
        if self.left() >= 0:
            return False
        self.skipped.append({**what, "reason": self.reason})
        return True


def save_results(name: str, data: Mapping[str, Any], out_dir: str | os.PathLike[str], *, dated: bool = True) -> Path:
    """Write `data` as `<out_dir>/<name>-<device type>-<UTC date>.json` (creating the folder); return the path.

    With `dated=False` the file is `<out_dir>/<name>.json` (a script's `--json PATH`).
    """
    device = torch.device(str(data.get("device", "cpu"))).type
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    path = Path(out_dir) / (f"{name}-{device}-{date}.json" if dated else f"{name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Through a temporary file and a rename: a run killed while writing leaves the previous version whole.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def save_run(suite: str, data: Mapping[str, Any], args: argparse.Namespace) -> Path:
    """Write a script's results where its options say, print the path and return it.

    `--json PATH` names the file; otherwise it is dated in `--out`, as `<suite>-smoke-...` under `--smoke`.
    """
    if args.json is not None:
        saved = save_results(args.json.stem, data, args.json.parent, dated=False)
    else:
        saved = save_results(f"{suite}-smoke" if args.smoke else suite, data, args.out)
    print(f"saved {saved}")
    return saved


@contextlib.contextmanager
def work_folder(given: Path | None, prefix: str) -> Iterator[Path]:
    """`given` (created if missing, kept), or a temporary folder removed afterwards, however the run ends.

    The scripts write full-size checkpoints (hundreds of MB) there; a temporary one is never left behind.
    """
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
