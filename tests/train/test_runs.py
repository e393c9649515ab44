"""A run's folder: atomic checkpoint writes, the history file and its curves, what resuming may continue,
one run at a time, and a last.pth checked as every checkpoint is."""

import dataclasses
import errno
import os
from pathlib import Path

import pytest
import torch

import vggnet
import vggnet.train.finetune
from tests.helpers import hold_lock, release
from vggnet.errors import (
    EXIT_FAILURE,
    BadCheckpointError,
    DiskError,
    InUseError,
    OutputExistsError,
    OutputPathError,
    exit_code,
)
from vggnet.models.finetuned import FORMAT
from vggnet.train.runs import (
    CHECKPOINT_NAME,
    HISTORY_NAME,
    LAST_NAME,
    LOCK_NAME,
    EpochStats,
    check_resumed_state,
    checkpoint_state,
    plot_history,
    previous_run,
    read_history,
    run_folder,
    save_checkpoint,
    write_history,
)


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "best.pth"
    save_checkpoint({"epoch": 1}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(DiskError, match=r"cannot write .*best.pth: No space left on device; nothing was written"):
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


def last_checkpoint(recipe: dict, epoch: int = 1, **train) -> dict:
    """What `finetune` writes to last.pth after `epoch` epochs of a linear probe (the gap head's Linear only)."""
    g = torch.Generator().manual_seed(0)
    head = {"classifier.0.weight": torch.randn(2, 512, generator=g), "classifier.0.bias": torch.zeros(2)}
    preprocessing = {"crop_size": 32, "resize_size": 36, "mean": [0.5] * 3, "std": [0.25] * 3,
                     "interpolation": "bilinear"}  # fmt: skip
    return {
        "format": FORMAT, "arch": "vgg11", "in_chans": 3, "head": "gap", "classes": ["blue", "red"],
        "preprocessing": preprocessing, "mode": "linear", "epoch": epoch, "val_acc": 50.0, "weights": "None",
        "state_dict": head,
        "train": {
            "epoch": epoch, "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(2, 512)}}, "param_groups": []},
            "schedule": {}, "rng": torch.get_rng_state(), "generator": g.get_state(),
            "history": [dataclasses.asdict(s) for s in HISTORY[:epoch]], "best_epoch": 1, "best_val_acc": 50.0,
            "bad_epochs": 0, "recipe": recipe, "stopped_early": False, "finished": False, **train,
        },
    }  # fmt: skip


def write_run(out: Path, epoch: int, recipe: dict, **train) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(last_checkpoint(recipe, epoch, **train), out / LAST_NAME)
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
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert previous_run(out, recipe, 3, resume=False, overwrite=True) is None
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # kept until the new run's first checkpoint


def _cut(state, path):
    path.write_bytes(path.read_bytes()[:2000])


def _pickled_code(state, path):
    torch.save({**state, "train": os.system}, path)  # a reference to a function: torch pickles it by name


def _edit(change):
    def tamper(state, path):
        change(state)
        torch.save(state, path)

    return tamper


TAMPERED = {
    "cut short": (_cut, r"could not be read as a PyTorch checkpoint \(corrupt, cut short\?\): PytorchStreamReader"),
    "pickled code": (_pickled_code, r"it holds a reference to posix.system .*none of it ran"),
    "no recipe": (_edit(lambda s: s["train"].pop("recipe")), r"resumed: 'recipe' is missing from the training"),
    "no training state": (_edit(lambda s: s.pop("train")), r"resumed: 'train' \(the training state\) is missing"),
    "no arch": (_edit(lambda s: s.pop("arch")), r"says it was written by vggnet finetune .* but 'arch' is missing"),
    "a text epoch": (_edit(lambda s: s["train"].update(epoch="1")), r"cannot be resumed: 'epoch' is a str"),
    "a short history": (_edit(lambda s: s["train"].update(epoch=2)), r"its history does not hold the 2 epochs it says"),
    "a text lr": (_edit(lambda s: s["train"]["recipe"].update(lr="0.01")), r"its recipe's lr \('0.01'\) is not of"),
    "NaN weights": (
        _edit(lambda s: s["state_dict"]["classifier.0.weight"].fill_(float("nan"))),
        r"is damaged: \['classifier.0.weight'\] hold\(s\) NaN or Inf, which no saved run holds",
    ),
    "a list as optimizer state": (  # was an AttributeError
        _edit(lambda s: s["train"]["optimizer"].update(state=[1, 2])),
        r"cannot be resumed: its optimizer state is not a mapping of parameters to their values",
    ),
    "a list in the optimizer state": (  # its NaN went unseen
        _edit(lambda s: s["train"]["optimizer"].update(state={0: [torch.tensor(float("nan"))]})),
        r"cannot be resumed: its optimizer state is not a mapping",
    ),
    "Inf momentum": (
        _edit(lambda s: s["train"]["optimizer"]["state"][0]["momentum_buffer"].fill_(float("inf"))),
        r"is damaged: \['optimizer state 0 momentum_buffer'\] hold\(s\) NaN or Inf",
    ),
}  # fmt: skip


@pytest.mark.parametrize("how", TAMPERED)
def test_a_tampered_last_pth_is_one_line_naming_the_file_and_what_to_do(tmp_path, how):
    out, recipe = tmp_path / "run", {"arch": "vgg11", "lr": 0.01}
    write_run(out, 1, recipe)
    tamper, message = TAMPERED[how]
    tamper(torch.load(out / LAST_NAME, weights_only=True), out / LAST_NAME)
    with pytest.raises(BadCheckpointError, match=message) as err:
        previous_run(out, recipe, 3, resume=True, overwrite=False)
    text = str(err.value)
    assert "\n" not in text and str(out / LAST_NAME) in text and exit_code(err.value) == EXIT_FAILURE
    assert text.endswith("start the run again (--overwrite), or put back a good copy of it")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_or_a_link_as_last_pth_is_refused_not_waited_on_or_followed(tmp_path):
    out, recipe = tmp_path / "run", {"arch": "vgg11", "lr": 0.01}
    out.mkdir()
    os.mkfifo(out / LAST_NAME)  # no writer: a plain open() waits for one forever
    with pytest.raises(OutputExistsError, match=r"already holds a run: last\.pth; pass resume"):
        previous_run(out, recipe, 3, resume=False, overwrite=False)
    (out / LAST_NAME).unlink()
    write_run(tmp_path / "other", 1, recipe)
    (out / LAST_NAME).symlink_to(tmp_path / "other" / LAST_NAME)  # another run's file, or /etc/passwd
    with pytest.raises(BadCheckpointError, match=r"last.pth is a symbolic link, not the regular file a run writes"):
        previous_run(out, recipe, 3, resume=True, overwrite=False)
    (out / LAST_NAME).unlink()
    write_run(out, 1, recipe)
    (out / CHECKPOINT_NAME).unlink()
    (out / CHECKPOINT_NAME).symlink_to("/etc/passwd")  # was resumed, then named as the run's best checkpoint
    with pytest.raises(OutputPathError, match=r"best.pth: it is a symbolic link"):
        previous_run(out, recipe, 3, resume=True, overwrite=False)


def test_a_resumed_state_must_fit_the_model_key_for_key():
    model = vggnet.vgg11(head="gap", num_classes=2).state_dict()
    state = dict(model)
    check_resumed_state(state, model, Path("run/last.pth"), head_only=False)
    del state["features.3.weight"]
    with pytest.raises(BadCheckpointError, match=r"run/last.pth does not fit the model of this run \(missing keys "
                       r"\['features.3.weight'\]\); start the run again"):  # fmt: skip
        check_resumed_state(state, model, Path("run/last.pth"), head_only=False)
    head = {
        "classifier.0.weight": torch.zeros(3, 512),
        "classifier.0.bias": torch.zeros(2),
        "fc9.weight": torch.zeros(1),
    }
    with pytest.raises(
        BadCheckpointError, match=r"unexpected keys \['fc9.weight'\]; other shapes \['classifier.0.weight"
    ):
        check_resumed_state(head, model, Path("run/last.pth"), head_only=True)


def test_one_run_at_a_time_in_a_folder_which_starts_clean(tmp_path):
    out = tmp_path / "run"
    holder = hold_lock(out / LOCK_NAME, out)  # another process runs in OUT
    try:
        message = rf"run is being written by another vggnet process \(pid {holder.pid} "
        with pytest.raises(InUseError, match=message), run_folder(out):
            pass
    finally:
        release(holder)
    (out / ".last.pth.1a2b3c4d.tmp").write_bytes(b"half a checkpoint of a killed run")
    (out / "notes.txt").write_text("the user's")
    with run_folder(out):
        assert sorted(os.listdir(out)) == [LOCK_NAME, "notes.txt"]
    assert os.listdir(out) == ["notes.txt"]
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="no weights"), run_folder(fresh):
        raise RuntimeError("no weights")
    assert not fresh.exists()  # made for a run that wrote nothing: not left behind
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputPathError, match="it is not a folder"), run_folder(tmp_path / "file"):
        pass


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
