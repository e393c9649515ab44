"""finetune (vggnet.cli.training): every FinetuneConfig setting is an option, and the other way round."""

from __future__ import annotations

import pytest
import torch

from vggnet.cli import main

# --- finetune: every FinetuneConfig setting is an option, and the other way round (issue 17) ---------


def test_finetune_options_are_the_config_fields():
    import dataclasses

    from vggnet.cli import build_parser
    from vggnet.cli.training import FINETUNE_OPTIONS
    from vggnet.train.finetune import FinetuneConfig

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["finetune"]  # type: ignore[union-attr]
    dests = {a.dest for a in sub._actions} - {"help", "debug", "quiet"}
    fields = {f.name for f in dataclasses.fields(FinetuneConfig) if f.init}
    # DATA is the positional data; progress is the global --quiet; on_epoch is a Python callable (the CLI prints)
    assert fields - {"progress", "on_epoch"} == dests == set(FINETUNE_OPTIONS) | {"data"}


@pytest.mark.slow
def test_finetune_recipe_flags_from_the_command_line(tmp_path, capsys):
    from PIL import Image

    for split, n in (("train", 6), ("val", 2)):
        for k, name in enumerate(("dark", "light")):
            (tmp_path / "d" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.new("L", (40, 36), 40 + 170 * k + 5 * i).save(tmp_path / "d" / split / name / f"{i}.png")
    out, plot = tmp_path / "run", tmp_path / "curves.png"
    argv = ["finetune", str(tmp_path / "d"), "--arch", "vgg11", "--weights", "none", "--mode", "full", "--head", "gap",
            "--image-size", "32", "--epochs", "2", "--batch-size", "4", "--lr", "0.01", "--augment", "light",
            "--no-hflip", "--crop-scale", "0.7", "1", "--label-smoothing", "0.1", "--weight-decay", "1e-4",
            "--warmup-epochs", "1", "--early-stop", "5", "--seed", "3", "--in-chans", "1", "--out", str(out),
            "--plot", str(plot)]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    epochs = [line for line in captured.err.splitlines() if "epoch " in line and "images/s" in line]
    assert len(epochs) == 2 and all("train loss" in e and "val loss" in e and "acc" in e for e in epochs), captured.err
    last = torch.load(out / "last.pth", weights_only=True)
    assert last["in_chans"] == 1 and last["head"] == "gap"
    assert last["train"]["recipe"] == {
        "arch": "vgg11", "mode": "full", "head": "gap", "image_size": 32, "in_chans": 1, "batch_size": 4, "seed": 3,
        "augment": "light", "hflip": False, "crop_scale": [0.7, 1.0], "label_smoothing": 0.1, "weight_decay": 1e-4,
        "warmup_epochs": 1, "val_split": None, "lr": 0.01, "weights": "none",
    }  # fmt: skip
    assert plot.stat().st_size > 0
    assert main(argv) == 2  # a finished run is not overwritten (a usage error: --resume or --overwrite)
    assert "already holds a run (finished after epoch 2)" in capsys.readouterr().err
    assert main([*argv, "--epochs", "3", "--resume"]) == 0
    assert len((out / "history.jsonl").read_text().splitlines()) == 3
    assert main([*argv, "--head", "fc7"]) == 2
    assert "head 'fc7' is a linear probe" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "amp"), [([], None), (["--amp"], True), (["--no-amp"], False)])
def test_finetune_amp_flag_both_ways_and_the_default_left_to_the_library(tmp_path, monkeypatch, capsys, flags, amp):
    # None lets the library decide (bf16 on CUDA and where the CPU computes it: tests/train/test_trainers.py)
    from types import SimpleNamespace

    import vggnet.train.finetune

    seen = {}

    def fake(data, **kwargs):
        seen.update(kwargs)
        return SimpleNamespace(rank=0, stopped_early=False, best_val_acc=100.0, best_epoch=1, checkpoint="best.pth")

    monkeypatch.setattr(vggnet.train.finetune, "finetune", fake)
    assert main(["finetune", str(tmp_path), "--quiet", *flags]) == 0
    assert seen["amp"] is amp
    assert "best val accuracy 100.00%" in capsys.readouterr().out


def test_finetune_quiet_is_quiet_after_a_loud_run_in_the_same_process(tmp_path, monkeypatch, capsys):
    # a run without --quiet logs its epochs at INFO; that level must not outlive it: CI's xdist order once let a
    # later --quiet run print its header line above its one-line error
    import logging
    from types import SimpleNamespace

    import vggnet.train.finetune

    def fake(data, **kwargs):
        logging.getLogger("vggnet.train.finetune").info("fine-tuning header")
        return SimpleNamespace(rank=0, stopped_early=False, best_val_acc=100.0, best_epoch=1, checkpoint="best.pth")

    monkeypatch.setattr(vggnet.train.finetune, "finetune", fake)
    assert main(["finetune", str(tmp_path)]) == 0
    assert "fine-tuning header" in capsys.readouterr().err
    assert main(["finetune", str(tmp_path), "--quiet"]) == 0
    assert "fine-tuning header" not in capsys.readouterr().err
    assert logging.getLogger("vggnet.train.finetune").level == logging.NOTSET  # put back as it was


def test_finetune_help_says_where_amp_is_on_and_how_to_turn_it_off(capsys):
    assert main(["finetune", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--amp, --no-amp" in help_text and "native bf16" in help_text and "--no-amp trains in float32" in help_text
