"""The documentation's promises: what it generates matches the code, and the code it shows runs.

- The generated parts (docs/hooks.py): the models table (its rows: tests/test_readme.py), the command
  reference (every command and option of the parsers), the speed tables (every results file), the
  layout and the changelog.
- Every ```python block of README.md and docs/ runs, offline, in a fresh process (slow), unless the
  line before it is `<!-- not run: REASON -->`; the blocks that include an example file are the
  examples' own tests (tests/test_examples.py).
- Every `vggnet ...` line of a ```bash block parses with the real parser, so no page shows an option
  that does not exist; every command is in the README's table.

`mkdocs build --strict` itself (no broken link, no missing reference) is a step of .ci/run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import offline_env

ROOT = Path(__file__).parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^```\s*(?:\{\s*\.)?(\w+)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
NOT_RUN = re.compile(r"<!--\s*not run:\s*(\S.*?)\s*-->\s*$")
SNIPPET = re.compile(r'^--8<--\s+"([^"]+)"', re.M)


def load_hooks() -> ModuleType:
    """docs/hooks.py as a module (MkDocs loads it by path, not as a package)."""
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = load_hooks()


def blocks(language: str) -> list[tuple[str, str, str | None]]:
    """(where, code, reason it is not run or None) of every fenced block of `language` in the pages."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group(1) != language:
                continue
            line = text.count("\n", 0, match.start()) + 1
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = NOT_RUN.search(before)
            found.append((f"{page.relative_to(ROOT)}:{line}", match.group(2), marker.group(1) if marker else None))
    return found


PYTHON = [(where, code) for where, code, reason in blocks("python") if reason is None and not SNIPPET.search(code)]


# --- generated parts -------------------------------------------------------------------------------


def test_the_command_reference_has_every_command_and_option():
    from vggnet.cli import COMMANDS, build_parser

    reference = hooks.cli_reference()
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in subparsers.choices.items():
        assert f"### `vggnet {name}`" in reference
        for action in parser._actions:
            if action.help is argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings or [action.metavar or action.dest]:
                assert f"`{option}" in reference, f"{name}: {option}"
    assert list(subparsers.choices) == list(COMMANDS)


def test_the_speed_page_shows_every_results_file(tmp_path):
    text = hooks.speed_tables()
    for path in (ROOT / "benchmarks" / "results").glob("*.json"):
        assert f"`{path.name}`" in text or f"`benchmarks/results/{path.name}`" in text
    assert "Not tabulated" not in text  # every file of the repository has a table
    (tmp_path / "new-suite.json").write_text('{"suite": "unheard of", "date": "2030-01-01"}')
    assert "`benchmarks/results/new-suite.json`" in hooks.speed_tables(tmp_path)  # listed, not a build error


def test_the_peer_and_format_benchmarks_get_tables(tmp_path):
    machine = {"cpu_model": "Xeon X", "isa": ["amx_bf16", "avx512_bf16"], "openvino": "2026.4.1"}
    row = {"name": "openvino default", "precision": "bf16", "ms": 24.2, "speedup_vs_torchvision": 5.9}
    row |= {"top1_agreement": 96.9, "cosine": 0.99997}
    batch = {"batch": 8, "load_before": [3.05, 3, 3], "load_after": [3.96, 3, 3], "rows": [row]}
    peers = {"suite": "cpu_peers", "machine": machine, "weights": "seeded random", "images": 32, "image_size": 224}
    (tmp_path / "cpu_peers-cpu-2030-01-01.json").write_text(json.dumps({**peers, "batches": [batch]}))
    latency = {name: {"latency_ms": ms} for name, ms in [("vggnet eager", 120.0), ("pt2 (torch.export.load)", 60.0)]}
    formats = {"suite": "formats", "load": {"safetensors (mmap)": {"load_s": 0.01, "load_and_touch_s": 0.2}}}
    formats |= {"latency_batch1": latency, "max_abs_diff": {"pt2 (torch.export.load)": 2e-6}}
    formats |= {"artifact_load_s": {"pt2 (torch.export.load)": 0.6}}
    (tmp_path / "formats-cpu-2030-01-01.json").write_text(json.dumps(formats))
    text = hooks.speed_tables(tmp_path)
    assert "Not tabulated" not in text
    assert "ISA amx_bf16, avx512_bf16" in text
    assert "| 8 | openvino default | bf16 | 24.2 | 5.90x | 96.9% | 0.99997 | 3.05 -> 3.96 |" in text
    assert "| pt2 (torch.export.load) | 600.0 |" in text
    assert "| pt2 (torch.export.load) | 60.0 | 2.00x | 2.0e-06 |" in text and "| safetensors (mmap) | 10.0 |" in text
    assert "Timing: the candidates in one fixed order" in text  # a file from before the timing was recorded
    timing = {"order": "shuffled each round", "seed": "0-8", "settle_s": 0.05, "untimed_calls": 1}
    one = batch | {"batch": 1, "timing": timing | {"seed": "0-1"}}
    timed = {**peers, "batches": [one, batch | {"timing": timing}]}
    (tmp_path / "cpu_peers-cpu-2030-01-01.json").write_text(json.dumps(timed))
    text = hooks.speed_tables(tmp_path)
    assert "order shuffled each round (seed 0-1, 0-8); before each turn 50 ms of idle cores and 1 untimed" in text


def test_the_layer_benchmark_gets_a_table(tmp_path):
    row = {"path": "int8", "dtype": "int8", "batch": 1, "wall_ms": 15.77, "onednn_ms": 12.97, "outside_onednn_ms": 2.8}
    row |= {"primitives_per_call": 18, "onednn_ms_by_kind": {"matmul": 4.92, "convolution": 7.91}}
    probe = {"channels": 16, "map": 4, "by_dtype": {"bfloat16": {"wall_us": 59.2, "onednn_us": 5.1}}}
    data = {"suite": "cpu_layers", "machine": {"cpu_model": "Xeon X"}, "calls": 20, "rows": [row]}
    (tmp_path / "cpu_layers-cpu-2030-01-01.json").write_text(json.dumps({**data, "fixed_cost_probe": probe}))
    text = hooks.speed_tables(tmp_path)
    assert "| int8 | int8 | 1 | 15.77 | 12.97 | 2.80 | 18 | convolution 7.91, matmul 4.92 |" in text
    assert "| one 16-channel 3x3 convolution on 4x4 |" in text and "| bfloat16 | 59.2 | 5.1 |" in text


def test_the_winograd_benchmark_gets_its_tables(tmp_path):
    layer = {"layer": "512->512 @ 28x28", "batch_size": 8, "ms": {"direct": 90.5, "winograd": 48.25}}
    layer |= {"direct_over_winograd": 1.8756, "relative_error": {"direct": 3.1e-6, "winograd": 5.9e-6}}
    model = {"name": "winograd", "batch_size": 1, "ms": 91.94, "speedup_vs_direct": 1.124}
    model |= {"relative_error_vs_eager": 1.9e-6}
    data = {"suite": "winograd", "arch": "vgg16", "layers": [layer | {"rule_takes_winograd": True}], "models": [model]}
    (tmp_path / "winograd-cpu-2030-01-01.json").write_text(json.dumps(data))
    text = hooks.speed_tables(tmp_path)
    assert "| 512->512 @ 28x28 | 8 | 90.50 | 48.25 | 1.88x | 5.9e-06 | 3.1e-06 | Winograd |" in text
    assert "| vgg16 winograd | 1 | 91.9 | 1.12x | 1.9e-06 |" in text


def test_the_layout_page_shows_each_package_and_layer():
    layout, layers = hooks.layout(), hooks.layers()
    for package in hooks.PACKAGES:
        assert f"`vggnet/{package}/`" in layout
        assert f"`vggnet.{package}`" in layers
    assert "add_<name>" in hooks.cli_howto()


def test_the_changelog_page_includes_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(hooks, "ROOT", tmp_path)
    assert "No `CHANGELOG.md` yet" in hooks.changelog()
    (tmp_path / "CHANGELOG.md").write_text("# Changelog\n\n## 0.2.0\n\n- a change\n")
    assert hooks.changelog() == "## 0.2.0\n\n- a change"


def test_markers_are_replaced():
    page = "\n".join(hooks.MARKERS) + "\n"
    out = hooks.on_page_markdown(page)
    assert "<!-- vggnet:" not in out and "| `vgg16` |" in out


# --- the pages' code -------------------------------------------------------------------------------


def test_blocks_not_run_say_why_and_included_files_exist():
    for where, code, reason in blocks("python"):
        assert reason is None or len(reason) > 5, where
        for included in SNIPPET.findall(code):
            assert (ROOT / included).is_file(), f"{where}: {included}"
    assert len(PYTHON) >= 20  # the pages do show code that runs


def vggnet_commands(code: str) -> list[list[str]]:
    """The arguments of each `vggnet ...` (or `python -m vggnet`, `torchrun ... -m vggnet`) command in shell code."""
    found = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        for command in " ".join(words).replace("&&", "|").replace(";", "|").split("|"):
            parts = []
            for word in command.split():
                if re.match(r"^\d?>>?|^<", word):  # a redirection ends the arguments
                    break
                if not re.match(r"^[A-Z_]+=", word):  # VAR=value prefixes set the environment
                    parts.append("1" if "$" in word else word)  # a shell variable: any value that parses
            if parts[:1] == ["vggnet"]:
                found.append(parts[1:])
            elif "-m" in parts and parts[parts.index("-m") + 1 : parts.index("-m") + 2] == ["vggnet"]:
                found.append(parts[parts.index("-m") + 2 :])
    return found


def test_the_command_finder_sees_every_spelling():
    code = "VGGNET_MIRROR=/m vggnet predict a.jpg  # a comment\ntorchrun --nproc_per_node 2 -m vggnet \\\n  evaluate d"
    code += "\nfind /data | vggnet predict - --output x.csv\npython -m vggnet list > out.txt\n"
    code += 'vggnet finetune "$out/data" --epochs "$epochs" 2>/dev/null\n'
    assert vggnet_commands(code) == [
        ["predict", "a.jpg"],
        ["evaluate", "d"],
        ["predict", "-", "--output", "x.csv"],
        ["list"],
        ["finetune", "1", "--epochs", "1"],
    ]


SHELL = [(where, code) for where, code, _ in blocks("bash")]
SHELL.append(("examples/finetune_evaluate.sh", (ROOT / "examples" / "finetune_evaluate.sh").read_text()))


@pytest.mark.parametrize(("where", "code"), SHELL, ids=[w for w, _ in SHELL])
def test_every_command_shown_parses(where, code):
    from vggnet.cli import build_parser

    parser = build_parser()
    for args in vggnet_commands(code):
        try:
            parser.parse_args(args)
        except SystemExit as exit_:
            if exit_.code != 0:  # --help exits 0
                pytest.fail(f"{where}: vggnet {' '.join(args)} does not parse")


def test_the_readme_lists_every_command():
    from vggnet.cli import COMMANDS

    readme = (ROOT / "README.md").read_text()
    assert [name for name in COMMANDS if f"| `vggnet {name}" not in readme] == []


@pytest.mark.slow
@pytest.mark.parametrize(("where", "code"), PYTHON, ids=[w for w, _ in PYTHON])
def test_python_blocks_run_offline(where, code, tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "photos").symlink_to(ROOT / "tests" / "photos")  # the paths the pages use
    script = tmp_path / "block.py"
    script.write_text(code)
    run = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, f"{where}:\n{code}\n{run.stderr[-3000:]}"
