"""finetuned: what a checkpoint written by `finetune` holds, checked field by field, and telling it from other files."""

import hashlib

import pytest
import torch

from vggnet.errors import BadCheckpointError
from vggnet.models import checkpoint as checkpoint
from vggnet.models.finetuned import FORMAT, backbone_identity, read_finetuned
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


def test_read_finetuned_tells_a_finetuned_checkpoint_from_other_files(tmp_path):
    state = {"w": torch.arange(3.0)}
    plain, legacy, tuned = tmp_path / "plain.pth", tmp_path / "legacy.pth", tmp_path / "best.pth"
    torch.save(state, plain)
    torch.save({"format": FORMAT, "state_dict": state}, legacy, _use_new_zipfile_serialization=False)
    save_checkpoint({"format": FORMAT, "arch": "vgg11", "state_dict": state}, tuned)
    assert read_finetuned(plain, "cpu") is None
    assert read_finetuned(legacy, "cpu") is None  # finetune writes zip files: a legacy-format one is someone else's
    found = read_finetuned(tuned, "cpu")
    assert found is not None and found["arch"] == "vgg11" and torch.equal(found["state_dict"]["w"], state["w"])


def test_backbone_identity_takes_a_records_digest_and_hashes_a_file(tmp_path):
    record = classify("VGG11_Weights.IMAGENET1K_V1")
    assert record.record is not None
    assert backbone_identity(record, None) == {
        "weights": "VGG11_Weights.IMAGENET1K_V1", "url": record.record.url, "sha256": record.record.sha256,
    }  # fmt: skip
    path = tmp_path / "mine.pth"
    path.write_bytes(b"not read as a checkpoint, only hashed")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert backbone_identity(classify(path), path) == {"weights": str(path), "url": str(path), "sha256": digest}
    with pytest.raises(ValueError, match="a random source has no file to identify"):
        backbone_identity(classify(None), None)
