"""A run's folder: atomic checkpoint writes, the history file and its curves, what resuming may continue."""

from pathlib import Path

import pytest
import torch

import vggnet
import vggnet.train.finetune
from vggnet.train.runs import (
    CHECKPOINT_NAME,
    HISTORY_NAME,
    LAST_NAME,
    EpochStats,
    checkpoint_state,
    plot_history,
    previous_run,
    read_history,
    save_checkpoint,
    write_history,
)


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "best.pth"
    save_checkpoint({"epoch": 1}, path)

    def broken_save(obj, f):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["best.pth"]


HISTORY = [
    EpochStats(epoch=1, train_loss=0.7, val_acc=50.0, seconds=1.5, train_acc=55.0, val_loss=0.69, lr=0.01),
    EpochStats(epoch=2, train_loss=0.4, val_acc=87.5, seconds=1.25, train_acc=80.0, val_loss=0.5, lr=0.005),
]


def test_the_history_reads_back_as_written_and_draws_its_curves(tmp_path):
    assert write_history(tmp_path, HISTORY) == tmp_path / HISTORY_NAME
    assert read_history(tmp_path) == read_history(tmp_path / HISTORY_NAME) == HISTORY  # the folder or the file
    assert [p.name for p in tmp_path.iterdir()] == [HISTORY_NAME]  # no temporary file left
    png = plot_history(HISTORY, tmp_path / "curves.png", "two epochs")
    Image = pytest.importorskip("PIL.Image")
    with Image.open(png) as image:
        assert image.size == (900, 380) and len(image.getcolors(1 << 16)) > 3  # curves drawn, not a blank page


def write_run(out: Path, epoch: int, recipe: dict, **train) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"epoch": epoch, "train": {"epoch": epoch, "recipe": recipe, **train}}, out / LAST_NAME)
    save_checkpoint({"epoch": epoch}, out / CHECKPOINT_NAME)
    write_history(out, HISTORY[:epoch])


def test_a_run_is_continued_only_when_asked_with_the_same_recipe(tmp_path):
    out, recipe = tmp_path / "run", {"arch": "vgg11", "lr": 0.01}
    assert previous_run(out, recipe, 3, resume=False, overwrite=False) is None  # nothing there: start
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        previous_run(out, recipe, 3, resume=True, overwrite=False)
    write_run(out, 1, recipe, finished=False)
    with pytest.raises(FileExistsError, match=r"already holds a run \(stopped after epoch 1\).*--resume.*--overwrite"):
        previous_run(out, recipe, 3, resume=False, overwrite=False)
    assert previous_run(out, recipe, 3, resume=True, overwrite=False)["train"]["epoch"] == 1
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.01 then, 0.02 now\)"):
        previous_run(out, {**recipe, "lr": 0.02}, 3, resume=True, overwrite=False)
    with pytest.raises(ValueError, match=r"holds a finished run \(1 epochs\)"):
        previous_run(out, recipe, 1, resume=True, overwrite=False)
    assert previous_run(out, recipe, 3, resume=False, overwrite=True) is None
    assert list(out.iterdir()) == []  # overwrite removed the run's files


def test_a_checkpoint_keeps_a_cpu_copy_and_a_probe_only_its_head():
    torch.manual_seed(0)
    model = vggnet.vgg11(head="gap", num_classes=2)
    full = checkpoint_state(model)
    assert full.keys() == model.state_dict().keys()
    head = checkpoint_state(model, head_only=True)
    assert sorted(head) == ["classifier.0.bias", "classifier.0.weight"]
    assert torch.equal(head["classifier.0.weight"], model.classifier[0].weight)
    with torch.no_grad():
        model.classifier[0].weight.add_(1)
    assert not torch.equal(head["classifier.0.weight"], model.classifier[0].weight)  # a copy, not a view
