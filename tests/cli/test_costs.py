"""summary and bench (vggnet.cli.costs)."""

from __future__ import annotations

import json

import pytest

from vggnet.cli import main

# --- summary -----------------------------------------------------------------------------------------


def test_summary_prints_the_table_and_totals(capsys):
    assert main(["summary", "vgg16"]) == 0
    out = capsys.readouterr().out
    assert "138,357,544" in out and "15.47G" in out and "15,470,264,320" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "102,764,544" in rows["fc6"] and "(1, 512, 7, 7)" in rows["pool5"] and "(1, 512, 7, 7)" in rows["avgpool"]
    lines = [line.split() for line in out.splitlines()]
    assert ["classifier", "123,642,856", "89.4%", "fc6,", "fc7,", "fc8"] in lines
    assert ["fc6", "102,764,544", "74.3%", "the", "largest", "layer"] in lines
    assert ["convolutions", "15.35G", "99.2%"] in lines


def test_summary_json_at_another_size(capsys):
    assert main(["summary", "VGG19_BN", "--input-size", "97x161", "--batch-size", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["arch"] == "vgg19_bn" and data["input_size"] == [97, 161] and data["batch_size"] == 2
    assert data["params"] == 143_678_248 == sum(layer["params"] for layer in data["layers"])
    assert data["macs"] == sum(layer["macs"] for layer in data["layers"])
    by_name = {layer["name"]: layer for layer in data["layers"]}
    assert by_name["pool5"]["output_shape"] == [2, 512, 3, 5] and by_name["avgpool"]["output_shape"] == [2, 512, 7, 7]
    assert set(by_name["conv1_1"]) >= {"name", "type", "output_shape", "params", "macs"}


@pytest.mark.slow
def test_summary_plots(tmp_path, capsys):
    import xml.etree.ElementTree as ET

    svg = tmp_path / "vgg16.svg"
    assert main(["summary", "vgg16", "--plot", str(svg)]) == 0
    assert f"plot written to {svg}" in capsys.readouterr().err
    assert ET.parse(svg).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert main(["summary", "vgg16", "--plot", str(tmp_path / "x.png")]) == 1
        assert "pip install matplotlib" in capsys.readouterr().err
    else:
        assert main(["summary", "vgg16", "--plot", str(tmp_path / "x.png"), "--quiet"]) == 0
        assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"


def test_summary_sizes_stay_unbounded(capsys):
    assert main(["summary", "vgg11", "--input-size", "4096", "--json"]) == 0  # the meta device allocates nothing
    assert json.loads(capsys.readouterr().out)["input_size"] == [4096, 4096]
