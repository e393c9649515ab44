import pytest

from vggnet.config import ARCHS, CONFIGS, arch_config, layer_names

from .reference import LAYOUT


def test_table_rows_are_the_papers():
    convs = {letter: sum(1 for v in row if v != "M") for letter, row in CONFIGS.items()}
    assert convs == {"A": 8, "B": 10, "D": 13, "E": 16}
    assert all(row.count("M") == 5 and row[-1] == "M" for row in CONFIGS.values())
    with pytest.raises(TypeError):
        CONFIGS["F"] = (64, "M")  # type: ignore[index]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_layer_names_follow_the_reference_layout(arch):
    length, convs, pools = LAYOUT[arch]
    names = layer_names(arch)
    assert len(names) == length
    assert [i for i, n in enumerate(names) if n.startswith("conv")] == convs
    assert [i for i, n in enumerate(names) if n.startswith("pool")] == pools
    assert names[-1] == "pool5" and names[0] == "conv1_1"
    assert ("bn1_1" in names) == arch.endswith("_bn")


def test_unknown_arch_lists_the_valid_ones():
    with pytest.raises(ValueError, match="vgg16_bn"):
        arch_config("vgg17")
