"""The process group context outside torchrun: one process, rank 0 (torchrun itself: test_finetune, test_cli)."""

import torch

from vggnet.data.distributed import Dist, init_distributed


def test_without_torchrun_a_single_process_is_rank_0_of_1(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed(torch.device("cpu"))
    assert ctx == Dist(rank=0, world=1, local_rank=0)
    assert ctx.main and not ctx.on
    ctx.barrier()  # nothing to wait for
    assert ctx.sum(1.5, 2.0, 3) == [1.5, 2.0, 3]  # the figures as they are
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node 1: no process group either
    assert init_distributed(torch.device("cpu")) == Dist()


def test_rank_0_alone_is_main():
    assert [Dist(rank, 3).main for rank in range(3)] == [True, False, False]
    assert all(Dist(rank, 3).on for rank in range(3))
