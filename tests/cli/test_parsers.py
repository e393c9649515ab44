"""The parsers: `vggnet --help`, every `vggnet CMD --help` and every argument error answer without importing torch.

Start-up time is measured by benchmarks/bench_startup.py; here each case runs in a fresh process and
the test checks which modules it imported, which a time cannot show.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vggnet.cli import COMMANDS

PROBE = r"""
import contextlib, io, json, sys
from vggnet.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    status = main(sys.argv[1:])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "numpy", "PIL", "requests", "tqdm"))
loaded = sorted(m for m in sys.modules if m.startswith("vggnet."))
print(json.dumps({"status": status, "heavy": heavy, "loaded": loaded}))
"""


def probe(*argv: str) -> dict:
    """Run `vggnet ARGV` in a fresh process: its exit status, the heavy modules and vggnet's modules it imported."""
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_help_lists_every_command_and_imports_no_command_module():
    result = probe("--help")
    assert result["status"] == 0 and result["heavy"] == []
    # the table's help lines are enough: not one command module is loaded
    assert result["loaded"] == sorted(["vggnet.cli", "vggnet.cli.args", "vggnet.cli.output", "vggnet.errors",
                                        "vggnet.models", "vggnet.models.config", "vggnet.data",
                                        "vggnet.data.constants", "vggnet.settings"])  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "--help"],
        ["summary", "vgg99"],
        ["predict", "x.jpg", "--batch-size", "0"],
        ["convert", "a.pth", "b.txt"],
    ],
)
def test_a_command_help_and_argument_errors_import_no_torch(argv):
    result = probe(*argv)
    assert result["status"] in (0, 2) and result["heavy"] == []


@pytest.mark.slow
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_help_imports_no_torch_and_only_its_own_module(command):
    result = probe(command, "--help")
    assert result["status"] == 0 and result["heavy"] == []
    own = f"vggnet.cli.{COMMANDS[command][0]}"
    others = {f"vggnet.cli.{module}" for module, _ in COMMANDS.values()} - {own}
    assert own in result["loaded"] and not others & set(result["loaded"])


@pytest.mark.slow
def test_a_run_imports_torch_and_what_the_command_needs():
    result = probe("summary", "vgg11", "--json")
    assert result["status"] == 0 and "torch" in result["heavy"]
    assert "vggnet.models.summary" in result["loaded"] and "vggnet.deploy.quantize" not in result["loaded"]
    assert not any(m.startswith("torch._dynamo") for m in result["heavy"])  # nothing compiles here


def test_choices_spelled_in_the_parsers_are_the_librarys():
    from vggnet.cli import artifacts, perception, training
    from vggnet.deploy.export import EXPORT_FORMATS
    from vggnet.hub import WRITE_SUFFIXES
    from vggnet.seeing.explain import METHODS
    from vggnet.train.finetune import AUGMENTS, MODES

    assert artifacts.EXPORT_FORMATS == EXPORT_FORMATS
    assert tuple(WRITE_SUFFIXES) == artifacts.WRITE_SUFFIXES
    assert perception.METHODS == METHODS
    assert (training.MODES, training.AUGMENTS) == (MODES, AUGMENTS)
