"""vggnet.checks: the shared argument checks, their messages, and that they load without torch."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vggnet.checks import (
    WORKERS_PER_CPU,
    check_choice,
    check_float,
    check_int,
    check_workers,
    field_problems,
    is_int,
    max_workers,
    same_bits,
)

CHECKS = Path(__file__).resolve().parent.parent / "vggnet" / "checks.py"


@pytest.mark.parametrize(
    ("value", "least", "most", "expected"),
    [
        (3, None, None, True),
        (-3, None, None, True),
        (True, None, None, False),  # a bool is not a count
        (2.0, None, None, False),
        ("2", None, None, False),
        (0, 0, 5, True),
        (5, 0, 5, True),  # both bounds included
        (-1, 0, 5, False),
        (6, 0, 5, False),
    ],
)
def test_is_int_takes_ints_in_range_and_no_bools(value, least, most, expected):
    assert is_int(value, least=least, most=most) is expected


def test_check_int_says_the_range_what_the_number_is_and_the_fix():
    check_int("n", 1)
    check_int("n", 0, least=0)
    check_int("n", 7, least=2, most=7)
    with pytest.raises(ValueError, match=r"^n must be a positive integer, got 0$"):
        check_int("n", 0)
    with pytest.raises(ValueError, match=r"^n must be an integer >= 0 \(workers\), got True$"):
        check_int("n", True, least=0, what="workers")
    with pytest.raises(ValueError, match=r"^n must be an integer from 2 to 7, got 8; use 7$"):
        check_int("n", 8, least=2, most=7, fix="use 7")


@pytest.mark.parametrize(
    ("value", "ok"),
    [(0.0, False), (0.5, True), (1, True), (1.0000001, False), (True, False), (math.nan, False), ("0.5", False)],
)
def test_check_float_open_below_closed_above(value, ok):
    def check() -> None:
        check_float("p", value, above=0.0, most=1.0, expected="in (0, 1]", fix="e.g. 0.5")

    if ok:
        check()
    else:
        with pytest.raises(ValueError, match=rf"^p must be in \(0, 1\], got {value!r}; e.g. 0.5$"):
            check()


def test_check_float_bounds_each_kind():
    check_float("x", 0.0, least=0.0, below=1.0, expected="in [0, 1)")
    with pytest.raises(ValueError, match=r"x must be in \[0, 1\), got 1.0"):
        check_float("x", 1.0, least=0.0, below=1.0, expected="in [0, 1)")
    with pytest.raises(ValueError, match="got inf"):
        check_float("x", math.inf, above=0.0, below=math.inf, expected="a positive number")
    with pytest.raises(ValueError, match="got nan"):
        check_float("x", math.nan, expected="a number")  # NaN is refused even without bounds
    check_float("x", -5, expected="a number")


def test_check_choice_lists_the_choices_bare_or_quoted():
    check_choice("mode", "full", ("linear", "full"))
    with pytest.raises(ValueError, match=r"^mode must be one of linear, full, got 'fast'$"):
        check_choice("mode", "fast", ("linear", "full"))
    with pytest.raises(ValueError, match=r"^version must be one of '0.1', '0.0', got '0.2'$"):
        check_choice("version", "0.2", {"0.1": 1, "0.0": 2}, quote=True)  # a mapping: its keys


def test_workers_are_a_few_per_cpu_core():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert max_workers() == WORKERS_PER_CPU * cores
    check_workers("workers", 0)
    check_workers("workers", max_workers())
    most = max_workers()
    for bad in (most + 1, 100000, -1, 2.0, True):
        message = rf"^workers must be an integer from 0 to {most} \(4 per CPU core, {cores} here\), got {bad!r}; each"
        with pytest.raises(ValueError, match=message):
            check_workers("workers", bad)


def test_the_checks_load_without_torch():
    # The command line can check its arguments before torch is imported: checks.py needs it only for devices.
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('checks', {str(CHECKS)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "module.check_int('n', 1); module.check_float('x', 0.5, least=0, most=1, expected='a probability')\n"
        "print('torch' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


def test_field_problems_names_every_missing_or_mistyped_field_and_takes_no_bool_for_an_int():
    fields = {"arch": str, "in_chans": int, "classes": list, "epoch": int, "acc": (int, float)}
    record = {"arch": 16, "in_chans": True, "classes": ["a"], "acc": "99%"}
    assert field_problems(record, fields, " from the file") == [
        "'arch' is an int, not a str",
        "'in_chans' is a bool, not an int",
        "'epoch' is missing from the file",
        "'acc' is a str, not an int or float",
    ]
    assert field_problems({"arch": "vgg16", "in_chans": 3, "classes": [], "epoch": 1, "acc": 0.5}, fields) == []


def test_same_bits_compares_bytes_not_values():
    import torch

    nan = torch.tensor([math.nan, 1.0])
    assert same_bits(nan, nan.clone())  # torch.equal says NaN != NaN
    assert not torch.equal(nan, nan.clone())
    assert not same_bits(torch.tensor([-0.0]), torch.tensor([0.0]))  # equal values, other bits
    assert not same_bits(torch.zeros(2), torch.zeros(2, dtype=torch.float64))
    assert not same_bits(torch.zeros(2), torch.zeros(1, 2))
    assert same_bits(torch.arange(6.0).view(2, 3).t(), torch.arange(6.0).view(2, 3).t().contiguous())


def test_same_bits_refuses_what_is_not_a_dense_tensor():
    """A quantized tensor's bytes viewed as uint8 crashed the process (torch 2.14): it is not the same, safely."""
    import torch

    q = torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.quint8)
    assert not same_bits(q, q)
    assert not same_bits(torch.ones(2).to_sparse(), torch.ones(2).to_sparse())
    assert not same_bits([1.0], [1.0]) and not same_bits(torch.ones(1), 1.0)
