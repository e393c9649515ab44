"""finetuned: the checkpoints `finetune` wrote before vggnet's format, checked field by field and still read."""

import hashlib

import pytest
import torch

import vggnet
from vggnet.errors import BadCheckpointError
from vggnet.models import checkpoint as checkpoint
from vggnet.models.finetuned import FORMAT, backbone_identity
from vggnet.models.saved import read_saved
from vggnet.models.sources import classify
from vggnet.train.runs import save_checkpoint


def test_a_finetuned_checkpoint_with_bad_fields_names_them(tmp_path):
    path = tmp_path / "best.pth"
    save_checkpoint({"format": FORMAT, "arch": "vgg99", "classes": [], "in_chans": "3", "state_dict": {}}, path)
    with pytest.raises(BadCheckpointError) as info:
        checkpoint.load_finetuned(path)
    message = str(info.value)
    assert f"{path} says it was written by vggnet finetune" in message
    problems = ("'in_chans' is a str, not an int", "'preprocessing' is missing", "'classes' is not a non-empty",
                "'arch' is 'vgg99', not one of vgg11")  # fmt: skip
    for problem in problems:
        assert problem in message


def test_an_older_finetune_checkpoint_still_loads_with_its_classes_preset_and_info(tmp_path):
    # written as `finetune` wrote best.pth before vggnet.checkpoint/1, its format spelled out
    torch.manual_seed(0)
    model = vggnet.vgg11_bn(head="gap", num_classes=2).eval()
    preprocessing = {"crop_size": 40, "resize_size": 48, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.4],
                     "interpolation": "bicubic"}  # fmt: skip
    old = {"format": "vggnet.train.finetune/1", "arch": "vgg11_bn", "in_chans": 3, "head": "gap",
           "classes": ["cat", "dog"], "preprocessing": preprocessing, "mode": "full", "epoch": 4, "val_acc": 87.5,
           "weights": "DEFAULT", "state_dict": model.state_dict()}  # fmt: skip
    path = tmp_path / "best.pth"
    save_checkpoint(old, path)
    for loaded in (vggnet.load(path), checkpoint.load_finetuned(path)):
        classes = getattr(loaded, "categories", getattr(loaded, "classes", None))
        assert list(classes) == ["cat", "dog"] and loaded.arch == "vgg11_bn"
        assert loaded.preset.crop_size == 40 and loaded.preset.resize_size == 48
        assert loaded.preset.interpolation == "bicubic" and loaded.preset.std == [0.2, 0.3, 0.4]
        assert loaded.info == {"mode": "full", "epoch": 4, "val_acc": 87.5, "weights": "DEFAULT"}
        x = torch.randn(1, 3, 40, 40)
        assert torch.equal(loaded.model.eval()(x), model(x))


def test_read_saved_tells_a_finetuned_checkpoint_from_other_files(tmp_path):
    state = vggnet.vgg11(head="gap", num_classes=2).state_dict()
    plain, legacy, tuned = tmp_path / "plain.pth", tmp_path / "legacy.pth", tmp_path / "best.pth"
    torch.save(state, plain)
    fields = {"format": FORMAT, "arch": "vgg11", "in_chans": 3, "classes": ["a", "b"], "head": "gap",
              "preprocessing": {"crop_size": 32}, "state_dict": state}  # fmt: skip
    torch.save(fields, legacy, _use_new_zipfile_serialization=False)
    save_checkpoint(fields, tuned)
    assert read_saved(plain) is None
    assert read_saved(legacy) is None  # vggnet writes zip files: a legacy-format one is someone else's
    found = read_saved(tuned)
    assert found is not None and found.header.arch == "vgg11" and found.header.classes == ["a", "b"]
    assert torch.equal(found.state["classifier.0.weight"], state["classifier.0.weight"])


def test_backbone_identity_takes_a_records_digest_or_the_loaded_files(tmp_path):
    record = classify("VGG11_Weights.IMAGENET1K_V1")
    assert record.record is not None
    assert backbone_identity(record, None) == {
        "weights": "VGG11_Weights.IMAGENET1K_V1", "url": record.record.url, "sha256": record.record.sha256,
    }  # fmt: skip
    path = tmp_path / "mine.pth"
    path.write_bytes(b"not read here: the caller loaded it pinned to its digest")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert backbone_identity(classify(path), digest) == {"weights": str(path), "url": str(path), "sha256": digest}
    with pytest.raises(ValueError, match="a file source needs the digest of the file it was loaded from"):
        backbone_identity(classify(path), None)
    with pytest.raises(ValueError, match="a random source needs the digest"):
        backbone_identity(classify(None), None)
