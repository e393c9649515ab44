import pytest

from vggnet.models.config import CONFIGS, arch_config


def test_table_rows_are_the_papers():
    convs = {letter: sum(1 for v in row if v != "M") for letter, row in CONFIGS.items()}
    assert convs == {"A": 8, "B": 10, "D": 13, "E": 16}
    assert all(row.count("M") == 5 and row[-1] == "M" for row in CONFIGS.values())
    with pytest.raises(TypeError):
        CONFIGS["F"] = (64, "M")  # type: ignore[index]


def test_unknown_arch_lists_the_valid_ones():
    with pytest.raises(ValueError, match="vgg16_bn"):
        arch_config("vgg17")
