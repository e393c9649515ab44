"""The README's promises: the models table is the records', the commands it shows are the ones CI runs."""

import re
from pathlib import Path

from tests.test_docs import hooks

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def test_models_table_is_generated_from_the_records():
    # the docs' own table (docs/hooks.py), made from the records: the README shows the same
    assert hooks.models_table() in README, (
        "regenerate with: python -c 'from tests.test_docs import hooks; print(hooks.models_table())'"
    )
    # two rows as ../shared/reference/checkpoints.md gives them, with the IMAGENET1K_FEATURES row between
    table = hooks.models_table().splitlines()
    vgg16 = table.index(
        "| `vgg16` | `VGG16_Weights.IMAGENET1K_V1` | 138,357,544 | 15.470 | 71.592 | 90.382 | 527.796 |"
    )
    assert table[vgg16 + 1] == (
        "| `vgg16` | `VGG16_Weights.IMAGENET1K_FEATURES` | 138,357,544 | 15.470 | n/a | n/a | 527.802 |"
    )
    assert (
        table[-1]
        == "| `vgg19_bn` | `VGG19_BN_Weights.IMAGENET1K_V1` | 143,678,248 | 19.632 | 74.218 | 91.842 | 548.143 |"
    )


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    setup = re.search(r"^(pip install -e \"\.\[test\]\")$", README, re.M)
    test = re.search(r"^(python -m pytest -n 2)$", README, re.M)
    slow = re.search(r"^(python -m pytest -m slow\b.*)$", README, re.M)
    assert setup and test and slow
    assert {setup.group(1), test.group(1), slow.group(1)} <= set(ci.splitlines())
