"""The trainers' parts on their own: the schedule, one step, the training preset, saving and restoring a trainer.

The trainers end to end (both modes, one process and torchrun): tests/test_finetune.py.
"""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vggnet
from vggnet.data.transforms import ImageClassification, TrainClassification
from vggnet.train.runs import EpochStats, FinetuneResult, checkpoint_state, save_checkpoint
from vggnet.train.trainers import CROP_SCALES, Trainer, _schedule, restore, train_preset, train_step, training_state


def lrs(lr: float, warmup_epochs: int, epochs: int) -> list[float]:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    schedule = _schedule(optimizer, SimpleNamespace(warmup_epochs=warmup_epochs, epochs=epochs))
    seen = []
    for _ in range(epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return seen


def test_the_learning_rate_warms_up_then_follows_a_cosine():
    assert lrs(0.01, 1, 3) == pytest.approx([0.005, 0.01, 0.005])
    cosine = [0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert lrs(1.0, 0, 4) == pytest.approx(cosine)  # 1, 0.85, 0.5, 0.15: no warm-up
    assert lrs(1.0, 3, 4) == pytest.approx([0.25, 0.5, 0.75, 1.0])  # the warm-up takes the run


def test_a_train_step_returns_its_summed_loss_and_correct_count():
    torch.manual_seed(0)
    net = nn.Linear(4, 2)
    x, y = torch.randn(8, 4), torch.tensor([0, 1] * 4)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    with torch.no_grad():
        expected_loss = F.cross_entropy(net(x), y).item() * 8
        expected_correct = int((net(x).argmax(1) == y).sum())
    loss, correct = train_step(net, optimizer, x, y, torch.device("cpu"), amp=False)
    assert loss.item() == pytest.approx(expected_loss) and int(correct) == expected_correct  # before the step
    losses = [train_step(net, optimizer, x, y, torch.device("cpu"), amp=False)[0].item() for _ in range(20)]
    assert losses[-1] < losses[0] < expected_loss


def test_the_training_preset_follows_augment_hflip_and_crop_scale():
    eval_preset = ImageClassification(crop_size=48, mean=(0.5,), std=(0.25,), interpolation="bicubic")
    assert train_preset(eval_preset, "none", None, None) is eval_preset  # no crop, no flip
    flipped = train_preset(eval_preset, "none", True, None)
    assert isinstance(flipped, nn.Sequential) and flipped[1] is eval_preset
    standard = train_preset(eval_preset, None, None, None)
    assert isinstance(standard, TrainClassification) and standard.scale == CROP_SCALES["standard"] == (0.08, 1.0)
    assert (standard.crop_size, standard.mean, standard.interpolation, standard.hflip_prob) == (
        48, [0.5], "bicubic", 0.5
    )  # fmt: skip
    light = train_preset(eval_preset, "light", False, None)
    assert light.scale == (0.6, 1.0) and light.hflip_prob == 0.0
    assert train_preset(eval_preset, "light", None, (0.7, 1.0)).scale == (0.7, 1.0)


def stand_in(seed: int) -> Trainer:
    """A trainer's state without a data set: a gap-head vgg11, SGD on its Linear, the schedule, a generator."""
    torch.manual_seed(seed)
    trainer = Trainer()
    trainer.model = vggnet.vgg11(head="gap", num_classes=2)
    trainer.optimizer = torch.optim.SGD(trainer.model.get_classifier().parameters(), lr=0.1, momentum=0.9)
    trainer.schedule = _schedule(trainer.optimizer, SimpleNamespace(warmup_epochs=1, epochs=4))
    trainer.generator = torch.Generator().manual_seed(seed)
    return trainer


def test_a_restored_trainer_continues_where_the_saved_one_was(tmp_path):
    saved = stand_in(0)
    fc = saved.model.get_classifier()
    fc(torch.randn(3, 512)).sum().backward()
    saved.optimizer.step()  # momentum buffers to keep
    saved.schedule.step()
    torch.randperm(10, generator=saved.generator)
    history = [EpochStats(epoch=1, train_loss=0.6, val_acc=75.0, seconds=1.0)]
    result = FinetuneResult(model=saved.model, classes=["a", "b"], history=history, best_epoch=1, best_val_acc=75.0)
    state = {"state_dict": checkpoint_state(saved.model, head_only=True),
             "train": training_state(saved, result, epoch=1, bad_epochs=0)}  # fmt: skip
    save_checkpoint(state, tmp_path / "last.pth")
    previous = torch.load(tmp_path / "last.pth", weights_only=True)  # all of it loads without pickled code

    fresh, again = stand_in(1), FinetuneResult(model=saved.model, classes=["a", "b"])
    assert not torch.equal(fresh.model.get_classifier().weight, fc.weight)
    assert restore(previous, fresh, again) == (2, 0)  # the next epoch, no epochs without progress
    assert torch.equal(fresh.model.get_classifier().weight, fc.weight)
    assert fresh.optimizer.param_groups[0]["lr"] == saved.optimizer.param_groups[0]["lr"]
    momentum = fresh.optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, saved.optimizer.state_dict()["state"][0]["momentum_buffer"])
    assert torch.equal(fresh.generator.get_state(), saved.generator.get_state())
    assert again.history == history and (again.best_epoch, again.best_val_acc) == (1, 75.0)


# --- issue 27: bf16 where the CPU has it ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("capabilities", "onednn", "cap", "native"),
    [
        ({"amx_bf16": True, "avx512_bf16": True}, True, "", True),  # Sapphire Rapids and later
        ({"amx_bf16": False, "avx512_bf16": True}, True, "", True),  # Cooper Lake, Zen 4
        ({"amx_bf16": False, "avx512_bf16": False, "avx512": True}, True, "", False),  # AVX-512 alone converts
        ({"amx_bf16": True, "avx512_bf16": True}, False, "", False),  # a torch whose oneDNN lacks bf16
        ({"amx_bf16": True, "avx512_bf16": True}, True, "AVX2", False),  # oneDNN capped below bf16
        ({"amx_bf16": True, "avx512_bf16": True}, True, "avx512_core_amx", True),
    ],
)
def test_bf16_is_native_only_where_the_cpu_and_onednn_compute_it(monkeypatch, capabilities, onednn, cap, native):
    from vggnet.deploy import inference
    from vggnet.train import trainers

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    monkeypatch.setattr(inference, "onednn_computes", lambda dtype: onednn and dtype == torch.bfloat16)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert inference.cpu_has_native_bf16() is native
    assert trainers.default_amp(torch.device("cpu")) is native
    assert trainers.default_amp(torch.device("cuda")) is True  # as before: bf16 autocast on every GPU
    assert trainers.default_amp(torch.device("meta")) is False


def test_the_trainers_train_channels_last():
    from vggnet.train import trainers

    batch = trainers._to(torch.randn(2, 1, 32, 32), torch.device("cpu"))
    assert batch.is_contiguous(memory_format=torch.channels_last)
    labels = trainers._to(torch.tensor([1, 0]), torch.device("cpu"))  # not an image batch: left alone
    assert labels.tolist() == [1, 0]
