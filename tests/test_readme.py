"""The README's promises: the models table is the records', the commands it shows are the ones CI runs."""

import re
from pathlib import Path

import vggnet

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def models_table() -> str:
    rows = [
        "| model | weights | params | GFLOPS | acc@1 | acc@5 | file MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for arch in vggnet.list_models():
        for name, member in vggnet.get_model_weights(arch).__members__.items():
            if name == "DEFAULT":
                continue
            w = member.value
            acc1, acc5 = (f"{w.metrics[k]:.3f}" if w.metrics[k] == w.metrics[k] else "n/a" for k in ("acc@1", "acc@5"))
            rows.append(
                f"| `{arch}` | `{member}` | {w.num_params:,} | {w.gflops:.3f} | {acc1} | {acc5} | {w.file_size:.3f} |"
            )
    return "\n".join(rows)


def test_models_table_is_generated_from_the_records():
    assert models_table() in README, (
        "regenerate with: python -c 'from tests.test_readme import models_table as t; print(t())'"
    )


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    setup = re.search(r"^(pip install -e \"\.\[test\]\")$", README, re.M)
    test = re.search(r"^(python -m pytest)$", README, re.M)
    slow = re.search(r"^(python -m pytest -m slow\b.*)$", README, re.M)
    assert setup and test and slow
    assert {setup.group(1), test.group(1), slow.group(1)} <= set(ci.splitlines())
