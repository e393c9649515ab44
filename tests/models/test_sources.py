"""sources.classify: what a weights argument names, decided before anything is read, one set of rules in every error."""

from pathlib import Path

import pytest

import vggnet
from vggnet import cli
from vggnet.errors import WeightsFileNotFound
from vggnet.models import sources as sources
from vggnet.models.config import SOURCE_RULES
from vggnet.models.sources import classify
from vggnet.models.weights import Weights
from vggnet.train import finetune as finetuning

PHOTO = Path(__file__).parents[1] / "photos" / "coffee.jpg"


@pytest.mark.parametrize("value", [None, "none", "random", "NONE"])
def test_random_sources(value):
    assert classify(value).kind == "random"


@pytest.mark.parametrize(
    ("value", "label", "arch"),
    [
        ("DEFAULT", "VGG16_Weights.IMAGENET1K_V1", "vgg16"),
        ("IMAGENET1K_FEATURES", "VGG16_Weights.IMAGENET1K_FEATURES", "vgg16"),
        ("VGG19_BN_Weights.DEFAULT", "VGG19_BN_Weights.IMAGENET1K_V1", "vgg19_bn"),
        (vggnet.VGG13_Weights.DEFAULT, "VGG13_Weights.IMAGENET1K_V1", "vgg13"),
    ],
)
def test_record_names_and_members(value, label, arch):
    source = classify(value)
    assert (source.kind, source.label, source.arch) == ("record", label, arch)
    assert source.record is vggnet.get_weight(label).value


def test_a_short_name_is_looked_up_in_the_given_arch():
    assert classify("DEFAULT", "vgg11_bn").record is vggnet.VGG11_BN_Weights.IMAGENET1K_V1.value
    record = Weights(url="https://example.org/mine-0123abcd.pth", sha256="0123abcd")
    assert classify(record) == sources.Source("record", record.url, record, record.url)


def test_files_and_urls(tmp_path, monkeypatch):
    assert classify("https://example.org/w.pth").kind == "url"
    path = tmp_path / "weights"  # no suffix, no separator: a file because it exists
    path.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert classify("weights") == sources.Source("file", "weights")
    assert classify(path).text == str(path) and classify(path.as_uri()).kind == "url"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert classify("~/weights").text == str(path)  # expanded


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("nope.pth", WeightsFileNotFound, "weights file nope.pth not found; weights is a record name"),
        ("runs/x", WeightsFileNotFound, "weights file runs/x not found"),
        ("file:///no/such/file.pth", WeightsFileNotFound, "no such checkpoint file exists at /no/such/file.pth"),
        ("s3://bucket/w.pth", ValueError, "unsupported URL scheme 's3'"),
        ("IMAGENET1K_V7", ValueError, "unknown weights 'IMAGENET1K_V7' for VGG16_Weights; valid: VGG16_Weights"),
        ("VGG17_Weights.DEFAULT", ValueError, "valid: VGG11_Weights.IMAGENET1K_V1"),
        (3, ValueError, "weights must be a record name, a file path, a URL or None, got int 3"),
    ],
)
def test_bad_sources_name_the_rules(tmp_path, monkeypatch, value, error, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=message) as info:
        classify(value)
    assert value == 3 or SOURCE_RULES in str(info.value)  # the same words in every error


def test_a_folder_is_not_a_weights_file(tmp_path):
    with pytest.raises(WeightsFileNotFound, match="is a folder, not a file"):
        classify(str(tmp_path))


def test_the_same_words_from_the_builders_finetune_and_predict(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    expected = f"weights file nope.pth not found; weights is {SOURCE_RULES}"
    with pytest.raises(FileNotFoundError) as built:
        vggnet.vgg11(weights="nope.pth")
    with pytest.raises(FileNotFoundError) as tuned:
        finetuning.finetune(tmp_path, weights="nope.pth")
    assert str(built.value).startswith(expected) and str(tuned.value) == str(built.value)
    assert cli.main(["predict", str(PHOTO), "--weights", "nope.pth"]) == 2
    assert expected in capsys.readouterr().err
