"""The process group under torchrun: which rank this process is, barriers, and sums over the ranks.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; with WORLD_SIZE > 1, `init_distributed` initialises the
process group (NCCL on CUDA, gloo on CPU) and leaves it initialised: a later call reuses it, and
`torch.distributed.destroy_process_group()` ends it. Fine-tuning and the batch commands (predict,
evaluate, embed) share it; rank 0 alone logs and writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from vggnet import settings

__all__ = ["Dist", "init_distributed"]


@dataclass
class Dist:
    """This process's place under torchrun: its rank among `world` processes (rank 0, world 1 alone).

    Attributes:
        rank: this process's rank, 0 to world - 1.
        world: the number of processes.
        local_rank: its rank on this machine (the GPU it uses).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def on(self) -> bool:
        """More than one process: DDP, shards, sums over the ranks."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that logs, shows progress and writes."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for alone)."""
        if self.on:
            dist.barrier()

    def sum(self, *values: float) -> list[float]:
        """Sums over ranks (float64 on the process group's device).

        Args:
            *values: this rank's numbers (counts, seconds); every rank passes as many.

        Returns:
            Each value summed over the ranks, as floats; the values themselves alone.
        """
        if not self.on:
            return list(values)
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return [float(v) for v in t.tolist()]


def init_distributed(device: torch.device) -> Dist:
    """The process group torchrun asks for (WORLD_SIZE > 1), initialised once; else a single process.

    Args:
        device: the device this process runs on: NCCL for CUDA (which also becomes the current CUDA device),
            gloo otherwise.

    Returns:
        This process's rank, world size and local rank.
    """
    launch = settings.torchrun()
    if launch.world <= 1:
        return Dist()
    rank, world, local_rank = launch.rank, launch.world, launch.local_rank
    if not dist.is_initialized():
        # Left initialised for the rest of the program: re-initialising under torchrun's store hangs,
        # so a second `finetune` call reuses it. The command line destroys it before exiting.
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank)
