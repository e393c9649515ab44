"""saved: vggnet's checkpoint format, written by `vggnet.save`, read back with classes and preset by every loader."""

from __future__ import annotations

import errno
import json
import logging
import os
import sys

import pytest
import torch

import vggnet
from tests.helpers import HEAD_KINDS, head_model
from vggnet.data.transforms import ImageClassification
from vggnet.errors import (
    BadCheckpointError,
    DiskError,
    MissingDependency,
    MissingPathError,
    OutputPathError,
    UsageError,
)
from vggnet.models import checkpoint, saved
from vggnet.models.saved import FORMAT, preset_of, read_saved, save

CLASSES = ["cat", "dog", "eel"]
PRESET = ImageClassification(crop_size=32, resize_size=32, mean=[0.3, 0.3, 0.3], std=[0.2, 0.2, 0.2])


@pytest.fixture(scope="module")
def model() -> vggnet.VGG:
    torch.manual_seed(0)
    return vggnet.vgg11_bn(head="gap", num_classes=3).eval()


def same_outputs(a: torch.nn.Module, b: torch.nn.Module, side: int = 32) -> bool:
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


# --- writing and reading back ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", pytest.param(".pth", marks=pytest.mark.slow)])
def test_every_loader_reads_back_the_model_its_classes_and_its_preset(model, tmp_path, suffix):
    path = save(model, tmp_path / f"digits{suffix}", classes=CLASSES, preset=PRESET, epoch=3, note=("a", 1))
    assert path == tmp_path / f"digits{suffix}" and os.listdir(tmp_path) == [path.name]  # no temporary file left
    loaded = vggnet.load(path)
    assert (loaded.arch, loaded.classes, loaded.model.head) == ("vgg11_bn", CLASSES, "gap")
    assert loaded.preset.extra_repr() == PRESET.extra_repr()
    assert loaded.info == {"epoch": 3, "note": ["a", 1]}  # free metadata as JSON gives it back
    assert same_outputs(loaded.model, model)
    for built in (vggnet.vgg11_bn(weights=path), vggnet.get_model("vgg11_bn", weights=str(path))):
        assert same_outputs(built, model)
        cfg = built.pretrained_cfg  # timm's description: the file's preset and class names
        assert cfg["label_names"] == tuple(CLASSES) and cfg["input_size"] == (3, 32, 32) and cfg["crop_pct"] == 1.0
        assert cfg["mean"] == (0.3, 0.3, 0.3) and cfg["url"] == str(path)
        assert preset_of(built).extra_repr() == PRESET.extra_repr()


def test_the_safetensors_header_reads_with_safetensors_itself(model, tmp_path):
    safetensors = pytest.importorskip("safetensors")
    path = save(model, tmp_path / "m.safetensors", classes=CLASSES, preset=PRESET, run="a")
    with safetensors.safe_open(str(path), "pt") as f:
        metadata, keys = f.metadata(), set(f.keys())
    assert metadata["format"] == "pt" and keys == set(model.state_dict())
    header = json.loads(metadata["vggnet"])
    assert header == {
        "format": "vggnet.checkpoint/1", "arch": "vgg11_bn", "head": "gap", "in_chans": 3, "num_classes": 3,
        "classes": CLASSES, "preprocessing": {"crop_size": 32, "resize_size": 32, "mean": [0.3] * 3, "std": [0.2] * 3,
                                              "interpolation": "bilinear", "antialias": True},
        "meta": {"run": "a"}, "vggnet": vggnet.__version__,
    }  # fmt: skip


def test_the_pth_container_holds_the_same_fields_for_a_weights_only_load(model, tmp_path):
    path = save(model, tmp_path / "m.pth", classes=CLASSES, preset=PRESET)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["classes"] == CLASSES and raw["preprocessing"]["crop_size"] == 32
    assert raw["state_dict"].keys() == model.state_dict().keys()


def test_a_data_parallel_model_is_saved_as_the_vgg_inside(model, tmp_path):
    path = save(torch.nn.DataParallel(model), tmp_path / "w.pth", classes=CLASSES)
    assert list(torch.load(path, weights_only=True)["state_dict"]) == list(model.state_dict())


@pytest.mark.slow
def test_a_compiled_model_is_saved_as_the_vgg_inside(model, tmp_path):
    path = save(torch.compile(model), tmp_path / "w.pth", classes=CLASSES)  # compile is lazy: nothing compiles here
    assert list(torch.load(path, weights_only=True)["state_dict"]) == list(model.state_dict())


def test_without_a_preset_or_classes_the_reader_says_once_what_it_assumes(model, tmp_path, caplog):
    path = save(model, tmp_path / "bare.pth")
    with caplog.at_level(logging.WARNING, logger="vggnet"):
        first, again = vggnet.load(path), vggnet.load(path)
    assert first.preset.crop_size == 224 and list(again.categories) == ["class 0", "class 1", "class 2"]
    said = [r.getMessage() for r in caplog.records if r.name == "vggnet.models.checkpoint"]
    assert len(said) == 1  # once per file and process
    assert said[0].startswith(f"{path} records no preset and no class names: assuming ImageNet's preset (resize 256, ")
    assert "'class 0' ... 'class 2'" in said[0] and "--resize, --crop, --mean and --std" in said[0]
    assert "vggnet.save(model, path, classes=[...], preset=...)" in said[0]


def test_a_plain_state_dict_says_once_at_warning_which_preset_and_labels_it_assumed(model, tmp_path, caplog):
    path = tmp_path / "plain.pth"
    torch.save(model.state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="vggnet.models"):
        loaded = vggnet.load(path)
        vggnet.vgg11_bn(weights=path)
    said = [r for r in caplog.records if r.name == "vggnet.models.checkpoint"]
    assert [r.levelno for r in said] == [logging.WARNING]
    assert said[0].getMessage().startswith(f"{path} is a plain state dict: assuming ImageNet's preset (resize 256")
    assert loaded.preset.crop_size == 224 and list(loaded.categories) == ["class 0", "class 1", "class 2"]


# --- what save refuses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"classes": ["a", "b"]}, UsageError, "classes has 2 names but the model has 3 outputs"),
        ({"classes": "abc"}, TypeError, "classes must be a list of names"),
        ({"preset": {"crop_size": 32, "resize": 40}}, TypeError, "its fields are crop_size, resize_size, mean"),
        ({"preset": ImageClassification(crop_size=32, mean=[0.5], std=[0.5])}, UsageError, "normalizes 1 channel"),
        ({"preset": torch.nn.Identity()}, TypeError, "preset must be an ImageClassification"),
        ({"when": object()}, TypeError, "metadata when=<object object"),
        ({"loss": float("nan")}, TypeError, "metadata loss=nan is not a JSON value"),
    ],
)
def test_save_refuses_what_does_not_fit_the_model_and_writes_nothing(model, tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        save(model, tmp_path / "m.pth", **kwargs)
    assert os.listdir(tmp_path) == []


def test_save_refuses_a_model_vggnet_cannot_build_again_and_bad_paths(model, tmp_path):
    replaced = vggnet.vgg11_bn(head="gap", num_classes=3)
    replaced.classifier = torch.nn.Sequential(torch.nn.Linear(512, 3), torch.nn.ReLU(), torch.nn.Linear(3, 3))
    with pytest.raises(UsageError, match="a replaced classifier"):
        save(replaced, tmp_path / "m.pth")
    with pytest.raises(TypeError, match="vggnet saves a vggnet VGG, got Linear"):
        save(torch.nn.Linear(2, 2), tmp_path / "m.pth")
    with pytest.raises(UsageError, match=r"cannot tell which format to write from 'm\.onnx'"):
        save(model, tmp_path / "m.onnx")
    with pytest.raises(MissingPathError, match=r"the folder .*nowhere does not exist"):
        save(model, tmp_path / "nowhere" / "m.pth")
    (tmp_path / "folder.pth").mkdir()
    with pytest.raises(UsageError, match=r"folder\.pth: it is a folder; name the file to write in it"):
        save(model, tmp_path / "folder.pth")


def test_a_write_that_fails_keeps_the_old_file_and_leaves_no_temporary(model, tmp_path, monkeypatch):
    path = save(model, tmp_path / "m.pth", classes=CLASSES)
    before = path.read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(saved.os, "fsync", full)
        with pytest.raises(DiskError, match=f"could not write {path}: No space left on device; nothing was kept"):
            save(model, path, classes=["x", "y", "z"])
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.pth"]

    real_save = torch.save

    def bit_flip(obj, f):  # a write that lands other bytes than were given
        real_save(
            {**obj, "state_dict": {k: v + 1 if v.is_floating_point() else v for k, v in obj["state_dict"].items()}}, f
        )

    monkeypatch.setattr(torch, "save", bit_flip)
    with pytest.raises(DiskError, match="it does not read back as what was written"):
        save(model, path, classes=["x", "y", "z"])
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.pth"]


def test_a_link_at_the_destination_is_refused_not_followed(model, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "m.pth").symlink_to(victim)
    with pytest.raises(OutputPathError, match=r"m.pth: it is a symbolic link; vggnet never writes through one"):
        save(model, tmp_path / "m.pth")
    assert victim.read_text() == "keep me" and (tmp_path / "m.pth").is_symlink()  # neither followed nor replaced


def test_safetensors_is_optional_a_pth_needs_none(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(MissingDependency, match=r"pip install 'vggnet\[safetensors\]', or save to a \.pth file"):
        save(model, tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []
    assert vggnet.load(save(model, tmp_path / "m.pth", classes=CLASSES)).categories == CLASSES


# --- what the reader refuses ------------------------------------------------------------------------


def test_a_dict_of_vggnets_fields_without_a_format_is_read_not_taken_for_a_state_dict(model, tmp_path):
    path = tmp_path / "mine.pth"
    torch.save({"state_dict": model.state_dict(), "classes": CLASSES,
                "preprocessing": {"crop_size": 32, "resize_size": 32}}, path)  # fmt: skip
    loaded = vggnet.load(path)
    assert list(loaded.categories) == CLASSES and loaded.preset.resize_size == 32 and loaded.arch == "vgg11_bn"
    assert same_outputs(loaded.model, model)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"classes": ["a", "b"]}, "does not hold what its header says: it names 2 outputs but fc8 has 3"),
        ({"classes": CLASSES, "preprocessing": {"crop": 32}},
         "holds vggnet's fields but no 'format', but 'preprocessing' is not a valid preset"),
        ({"classes": [1, 2, 3]}, "'classes' is not a list of names"),
        ({"classes": CLASSES, "format": "vggnet.checkpoint/2"},
         "is in vggnet.checkpoint/2, written by a later vggnet; this one reads up to vggnet.checkpoint/1: upgrade"),
        ({"classes": CLASSES, "format": "lightning"}, "its format is 'lightning', which this vggnet does not read"),
        ({"format": FORMAT, "classes": CLASSES}, "says it is in vggnet's format (vggnet.checkpoint/1), but 'arch' is"),
        ({"format": FORMAT, "arch": "vgg11_bn", "head": "vgg", "in_chans": 3, "num_classes": 3},
         "its head is 'vgg' but the tensors are of a gap head"),
        ({"format": FORMAT, "arch": "vgg11_bn", "head": "gap", "in_chans": 1, "num_classes": 3},
         "it says in_chans 1 but the first convolution reads 3"),
        ({"format": FORMAT, "arch": "vgg11_bn", "head": "gap", "in_chans": 3, "num_classes": 3, "global_pool": "max"},
         "'global_pool' is 'max', not 'avg' or '' (with num_classes 0)"),
    ],
)  # fmt: skip
def test_a_header_that_is_wrong_is_refused_in_one_line_naming_it(model, tmp_path, fields, message):
    path = tmp_path / "bad.pth"
    torch.save({**fields, "state_dict": model.state_dict()}, path)
    with pytest.raises(BadCheckpointError) as info:
        vggnet.load(path)
    assert message in str(info.value) and str(info.value).startswith(str(path)) and "\n" not in str(info.value)


@pytest.mark.slow
def test_another_tools_checkpoint_without_vggnets_fields_is_still_a_state_dict(model, tmp_path):
    path = tmp_path / "lightning.ckpt"
    torch.save({"format": "lightning", "epoch": 3, "state_dict": model.state_dict()}, path)
    assert read_saved(path) is None and same_outputs(vggnet.load(path).model, model)


def test_the_user_may_still_ask_for_another_head_width_then_the_labels_are_generic(model, tmp_path):
    path = save(model, tmp_path / "m.pth", classes=CLASSES, preset=PRESET)
    loaded = checkpoint.load(path, num_classes=5)
    assert loaded.model.num_classes == 5 and list(loaded.categories) == [f"class {i}" for i in range(5)]
    assert loaded.preset.crop_size == 32


@pytest.mark.parametrize(
    "metadata",
    [b'{"vggnet": {"arch": "vgg11"}}', b'{"vggnet": 5}', b'{"vggnet": "' + b"[" * 100_000 + b'"}'],
    ids=["an object", "a number", "nested deep"],
)
def test_a_crafted_safetensors_header_is_a_bad_checkpoint_naming_the_file(tmp_path, metadata):
    header = b'{"__metadata__": ' + metadata + b', "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}'
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))  # was a TypeError, a RecursionError
    with pytest.raises(BadCheckpointError, match=r"crafted.safetensors: its safetensors header is not JSON"):
        read_saved(path)


# --- every head (issue 25) --------------------------------------------------------------------------------

REBUILDABLE = [k for k in HEAD_KINDS if k not in ("identity", "own")]


@pytest.mark.parametrize("kind", HEAD_KINDS)
@pytest.mark.slow
def test_save_then_load_gives_the_same_model_for_every_head(kind, tmp_path):
    model = head_model(kind, arch="vgg11")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    if kind not in REBUILDABLE:  # a classifier of the user's: no builder makes it again; the error says what to do
        with pytest.raises(vggnet.UsageError, match=r"save model\.state_dict"):
            save(model, tmp_path / "m.pth")
        return
    classes = [f"c{i}" for i in range(model.num_classes)] or None
    back = vggnet.load(save(model, tmp_path / "m.pth", classes=classes)).model.eval()
    assert (back.head, back.global_pool, back.num_classes) == (model.head, model.global_pool, model.num_classes)
    assert back.layer_names() == model.layer_names()
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def test_a_gap_model_without_classes_and_an_unpooled_one_load_back(tmp_path):
    torch.manual_seed(0)
    for kwargs in ({"head": "gap", "num_classes": 0}, {"num_classes": 0, "global_pool": ""}):
        path = save(vggnet.vgg11(**kwargs), tmp_path / "m.pth")
        back = vggnet.load(path).model
        assert (back.head, back.global_pool) == (kwargs.get("head", "vgg"), kwargs.get("global_pool", "avg"))
