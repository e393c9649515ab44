"""The meta-device inspector: every number against the records and against a count by hand."""

import json
import math
import re
import sys
import xml.etree.ElementTree as ET

import pytest
import torch

import vggnet
from tests.reference import ARCHS, RECORDS, VGG16_CLASSIFIER_PARAMS, VGG16_CONV_PARAMS, VGG16_FC6_PARAMS
from vggnet.errors import OutputPathError
from vggnet.models.config import CONFIGS, arch_config
from vggnet.models.summary import format_summary, plot_summary, summarize
from vggnet.models.taps import feature_names

HEAD = ["avgpool", "fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8"]


def hand_count(arch, height, width, num_classes=1000):
    """(params, MACs per image, conv MACs) from Table 1 alone: 3x3 convs, five floor-halving pools, 3 FCs."""
    row, batch_norm = arch_config(arch)
    params = macs = 0
    c, h, w = 3, height, width
    for v in row:
        if v == "M":
            h, w = h // 2, w // 2
            continue
        params += 9 * c * v + v + (2 * v if batch_norm else 0)
        macs += h * w * v * 9 * c
        c = v
    conv_macs = macs
    for n_in, n_out in ((512 * 7 * 7, 4096), (4096, 4096), (4096, num_classes)):
        params += n_in * n_out + n_out
        macs += n_in * n_out
    return params, macs, conv_macs


@pytest.mark.parametrize("arch", ARCHS)
def test_totals_at_224_match_the_records_and_a_hand_count(arch):
    _, _, num_params, _, _, gflops, _ = RECORDS[arch]
    s = summarize(arch)
    params, macs, conv_macs = hand_count(arch, 224, 224)
    assert s.params == params == num_params
    assert s.macs == macs and s.conv_macs == conv_macs
    assert round(s.macs / 1e9, 3) == gflops
    assert s.params == sum(p.numel() for p in vggnet.get_model(arch, device="meta").parameters())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size", [(97, 161), (320, 320)])
def test_totals_at_other_sizes_match_a_hand_count(arch, size):
    s = summarize(arch, size, batch_size=3)
    params, macs, conv_macs = hand_count(arch, *size)
    assert (s.params, s.macs, s.conv_macs) == (params, macs, conv_macs)
    assert s.input_size == size
    pool5 = s.pool5.output_shape
    assert pool5 == (3, 512, size[0] // 32, size[1] // 32)
    avgpool = next(layer for layer in s.layers if layer.name == "avgpool")
    assert avgpool.output_shape == (3, 512, 7, 7)  # the adaptive pool maps any HxW to 7x7 for fc6


@pytest.mark.parametrize("arch", ARCHS)
def test_rows_carry_the_paper_names_in_forward_order(arch):
    s = summarize(arch)
    assert [layer.name for layer in s.layers] == [*feature_names(arch), *HEAD]
    assert [layer.module for layer in s.layers][-8:] == ["avgpool"] + [f"classifier.{i}" for i in range(7)]
    letter, batch_norm = vggnet.models.config.ARCHS[arch]
    convs = [layer for layer in s.layers if layer.type == "Conv2d"]
    assert len(convs) == sum(v != "M" for v in CONFIGS[letter])
    assert all(layer.type == "BatchNorm2d" for layer in s.layers if layer.name.startswith("bn")) and (
        any(layer.name.startswith("bn") for layer in s.layers) == batch_norm
    )


def test_vgg16_shows_where_the_parameters_and_the_work_are():
    s = summarize("vgg16")
    assert s.params == 138_357_544 and f"{s.macs / 1e9:.2f}" == "15.47"
    assert s.classifier_params == VGG16_CLASSIFIER_PARAMS and s.conv_params == VGG16_CONV_PARAMS
    fc6 = s.largest
    assert (fc6.name, fc6.params, fc6.macs) == ("fc6", VGG16_FC6_PARAMS, 25088 * 4096)
    assert round(s.classifier_params / s.params, 2) == 0.89 and round(fc6.params / s.params, 2) == 0.74
    assert s.conv_macs / s.macs > 0.99
    by_name = {layer.name: layer for layer in s.layers}
    assert by_name["conv1_1"].output_shape == (1, 64, 224, 224)
    assert by_name["conv1_1"].macs == 224 * 224 * 64 * 27
    assert by_name["pool5"].output_shape == by_name["avgpool"].output_shape == (1, 512, 7, 7)
    assert by_name["fc8"].output_shape == (1, 1000)
    assert s.param_bytes("float32") == 4 * s.params and s.param_bytes("bfloat16") == 2 * s.params


def test_activation_memory_by_hand():
    s = summarize("vgg11", 64, batch_size=2)
    by_name = {layer.name: layer for layer in s.layers}
    assert by_name["conv1_1"].activation_bytes == 2 * 64 * 64 * 64 * 4
    assert by_name["relu1_1"].shares_input and by_name["drop6"].shares_input  # in place / eval-mode identity
    assert not by_name["conv1_1"].shares_input and not by_name["pool1"].shares_input
    # vgg11 at 64: 8 convs and 5 pools, then avgpool (512x7x7), fc6, fc7 (4096), fc8 (1000); ReLU/dropout shared
    convs = 64 * 64 * 64 + 128 * 32**2 + 2 * 256 * 16**2 + 2 * 512 * 8**2 + 2 * 512 * 4**2
    pools = 64 * 32**2 + 128 * 16**2 + 256 * 8**2 + 512 * 4**2 + 512 * 2**2
    head = 512 * 49 + 4096 + 4096 + 1000
    assert s.activation_bytes == 2 * 4 * (convs + pools + head)
    assert s.input_bytes == 2 * 3 * 64 * 64 * 4


def test_num_classes_changes_only_fc8():
    s = summarize("vgg16", num_classes=10)
    assert s.params == 138_357_544 - 4096 * 990 - 990
    assert s.layers[-1].output_shape == (1, 10)


@pytest.mark.parametrize("size", [31, (224, 16), 0])
def test_sizes_under_32_name_the_minimum(size):
    with pytest.raises(ValueError, match="at least 32 px"):
        summarize("vgg16", size)


def test_unknown_arch_and_bad_batch():
    with pytest.raises(ValueError, match="valid: vgg11, vgg11_bn"):
        summarize("vgg17")
    with pytest.raises(ValueError, match="batch size"):
        summarize("vgg16", batch_size=0)


def test_the_model_is_built_on_the_meta_device_only(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.init, "kaiming_normal_", lambda *a, **k: calls.append(a))
    s = summarize("vgg19_bn", 4096)  # 4096x4096 would take gigabytes of real activations
    assert calls == [] and s.activation_bytes > 2**30


def test_to_dict_is_json_with_the_documented_schema():
    data = json.loads(json.dumps(summarize("vgg16", (97, 161), batch_size=2).to_dict(), allow_nan=False))
    assert {"arch", "input_size", "params", "macs", "layers"} <= data.keys()
    assert data["arch"] == "vgg16" and data["input_size"] == [97, 161] and data["batch_size"] == 2
    assert data["params"] == 138_357_544 == sum(layer["params"] for layer in data["layers"])
    assert data["macs"] == sum(layer["macs"] for layer in data["layers"])
    assert data["param_bytes"] == {"float32": 4 * 138_357_544, "bfloat16": 2 * 138_357_544}
    assert math.isclose(data["classifier_params_share"], VGG16_CLASSIFIER_PARAMS / 138_357_544)
    for layer in data["layers"]:
        assert {"name", "type", "output_shape", "params", "macs"} <= layer.keys()
        assert isinstance(layer["output_shape"], list) and layer["output_shape"][0] == 2
    pool5 = next(layer for layer in data["layers"] if layer["name"] == "pool5")
    assert pool5["output_shape"] == [2, 512, 3, 5]


def test_text_shows_the_totals_and_what_the_adaptive_pool_does():
    text = format_summary(summarize("vgg16"))
    assert "138,357,544" in text and "15.47G" in text
    assert "89.4%" in text and "74.3%" in text and "99.2%" in text
    assert "pool5 7x7" in text and "identity" in text
    lines = text.splitlines()
    assert any(line.startswith("fc6 ") and "102,764,544" in line for line in lines)
    assert any(line.startswith("avgpool ") and "(1, 512, 7, 7)" in line for line in lines)
    other = format_summary(summarize("vgg16", 160))
    assert "pool5 5x5" in other and "5x5 to 7x7" in other and "25088 inputs" in other


def _bars(svg_path):
    root = ET.parse(svg_path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return [el for el in root.iter("{http://www.w3.org/2000/svg}rect") if el.get("class") == "bar"]


@pytest.mark.parametrize("arch", ["vgg11", "vgg16_bn"])
def test_svg_plot_has_a_bar_per_layer_and_quantity(tmp_path, arch):
    s = summarize(arch)
    path = plot_summary(s, tmp_path / "plot.svg")
    bars = _bars(path)
    weighted = [layer for layer in s.layers if layer.macs]  # convolutions and fc6-fc8
    assert len(bars) == 2 * len(weighted)
    params_bars, macs_bars = bars[: len(weighted)], bars[len(weighted) :]
    widths = [float(b.get("width")) for b in params_bars]
    assert widths.index(max(widths)) == [layer.name for layer in weighted].index("fc6")
    assert [b.find("{http://www.w3.org/2000/svg}title").text.split(":")[0] for b in macs_bars] == [
        layer.name for layer in weighted
    ]


@pytest.mark.slow
def test_png_plot_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot_summary(summarize("vgg16", 160), tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_png_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)  # what an environment without matplotlib looks like
    with pytest.raises(ImportError, match=r"pip install matplotlib.*\.svg"):
        plot_summary(summarize("vgg11"), tmp_path / "plot.png")
    assert not (tmp_path / "plot.png").exists()


def test_unknown_plot_format(tmp_path):
    with pytest.raises(ValueError, match=r"\.svg, \.png"):
        plot_summary(summarize("vgg11"), tmp_path / "plot.txt")


@pytest.mark.parametrize("arch", ARCHS)
def test_receptive_fields_per_layer_equal_the_recurrence(arch):
    from vggnet.models.receptive import receptive_fields

    s = summarize(arch, 160)
    fields = {f.name: f for f in receptive_fields(arch)}
    for layer in s.layers:
        f = fields.get(layer.name)
        got = (layer.receptive_field, layer.jump, layer.start)
        assert got == ((f.size, f.jump, f.start) if f is not None else (None, None, None)), layer.name
    assert s.pool5.receptive_field == {"vgg11": 150, "vgg13": 156, "vgg16": 212, "vgg19": 268}[arch.split("_")[0]]


def test_receptive_fields_in_the_json_the_table_and_the_plot(tmp_path):
    s = summarize("vgg16")
    layers = {layer["name"]: layer for layer in json.loads(json.dumps(s.to_dict()))["layers"]}
    assert (layers["conv5_3"]["receptive_field"], layers["conv5_3"]["jump"], layers["conv5_3"]["start"]) == (
        196,
        16,
        7.5,
    )
    assert layers["fc6"]["receptive_field"] is None and layers["avgpool"]["jump"] is None
    lines = format_summary(s).splitlines()
    assert re.search(r"output shape\s+field\s+jump\s+start\s+params", lines[2])
    assert re.search(r"\(1, 512, 14, 14\)\s+196\s+16\s+7\.5\s", next(li for li in lines if li.startswith("conv5_3 ")))
    assert re.search(r"\(1, 4096\)\s+-\s+-\s+-\s", next(li for li in lines if li.startswith("fc6 ")))
    assert "a pool5 unit sees 212x212 input px" in lines[-1]
    root = ET.parse(plot_summary(s, tmp_path / "plot.svg")).getroot()
    fields = [el for el in root.iter("{http://www.w3.org/2000/svg}rect") if el.get("class") == "field"]
    titles = [el.find("{http://www.w3.org/2000/svg}title").text for el in fields]
    assert len(fields) == 13 and titles[-1] == "conv5_3: 196 px, jump 16"


def test_a_plot_is_written_whole_and_never_through_a_link(tmp_path):
    victim = tmp_path / "notes.txt"
    victim.write_text("a text file elsewhere")
    (tmp_path / "plot.svg").symlink_to(victim)
    with pytest.raises(OutputPathError, match=r"plot.svg: it is a symbolic link; vggnet never writes through one"):
        plot_summary(summarize("vgg11"), tmp_path / "plot.svg")
    assert victim.read_text() == "a text file elsewhere"
    (tmp_path / "plot.svg").unlink()
    plot_summary(summarize("vgg11"), tmp_path / "plot.svg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "plot.svg"]  # no temporary file left
