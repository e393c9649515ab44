"""Running a model over many images: streamed, resumable, one share per rank under torchrun.

The engine behind `vggnet.batch.predict.predict_images`, `vggnet.batch.embed.embed_images` and
`vggnet.batch.evaluate.evaluate`:

- Images are decoded and preprocessed in DataLoader workers (`images.ImageFiles`), so loading runs
  in parallel with the model, and a file that cannot be read comes out as an error, not an exception.
- Under `torchrun` (WORLD_SIZE > 1) rank r reads images r, r + world, ... of the list.
- Results are written as they come, one line per image (`vggnet.batch.output`), so memory does not grow
  with the number of images; a resumed run runs only the images its output lacks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from vggnet.checks import check_int, check_workers
from vggnet.data.distributed import Dist, init_distributed
from vggnet.data.images import Batch, ImageFiles, collate
from vggnet.deploy.inference import optimize_for_inference
from vggnet.models.vgg import VGG

__all__ = ["Session", "autocast", "logits_fn", "slowest", "totals"]

logger = logging.getLogger(__name__)


# --- one process's place in the run -------------------------------------------------------------


class Session:
    """The device and the rank this process runs on (one process, or one of torchrun's), and its data loading.

    Under torchrun the process group is initialised (NCCL on CUDA, each process on its LOCAL_RANK GPU;
    gloo on CPUs).

    Args:
        device: where the model runs; default CUDA when available, else the CPU.
        batch_size: images per batch (per process).
        workers: DataLoader worker processes decoding images; default the cores the model leaves, up to 8
            (0: decode in this process).

    Raises:
        UsageError: a batch size under 1 or a negative worker count.
    """

    def __init__(
        self, device: str | torch.device | None = None, batch_size: int = 32, workers: int | None = None
    ) -> None:
        check_int("batch_size", batch_size)
        if workers is not None:
            check_workers("workers", workers)
        dev = torch.device(device) if device is not None else _default_device()
        self.ctx: Dist = init_distributed(dev)
        if dev.type == "cuda" and self.ctx.on:
            dev = torch.device("cuda", self.ctx.local_rank)
        self.device = dev
        self.batch_size = batch_size
        # Workers decode while the model computes; on a CPU they share the cores with it, so a few.
        self.workers = workers if workers is not None else min(8, max(1, (os.cpu_count() or 1) // self.ctx.world - 1))

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes, logs and shows progress."""
        return self.ctx.main

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (pickled); `value` itself in one process.

        Args:
            value: anything picklable (only rank 0's is used).

        Returns:
            Rank 0's value.
        """
        if not self.ctx.on:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over the ranks (on the process group's device, returned on `t`'s).

        Args:
            t: this rank's tensor; every rank passes one of the same shape and dtype.

        Returns:
            The sum, on `t`'s device (`t` itself in one process).
        """
        if not self.ctx.on:
            return t
        on = t.to(self.device) if dist.get_backend() == "nccl" else t.cpu()
        dist.all_reduce(on)
        return on.to(t.device)

    def batches(self, paths: Sequence[str], indices: Sequence[int], transform: nn.Module) -> Iterator[Batch]:
        """The images `indices` of `paths`, decoded and preprocessed by the workers, in order.

        An unreadable image is logged (ERROR) and reported in its batch's `errors`, not raised.

        Args:
            paths: every image of the run.
            indices: the ones to read (this rank's share, less those already done).
            transform: the preset each image goes through.

        Yields:
            Batches of `batch_size` items, each with its images' indices and its failures.
        """
        if not indices:
            return
        workers = min(self.workers, -(-len(indices) // self.batch_size))  # no more processes than batches
        loader = DataLoader(
            Subset(ImageFiles(paths, transform), indices), self.batch_size, collate_fn=collate,
            num_workers=workers, pin_memory=self.device.type == "cuda", prefetch_factor=4 if workers else None,
        )  # fmt: skip
        for batch in loader:
            for index, message in batch.errors:
                logger.error("cannot read the image %s: %s", paths[index], message)
            yield batch

    def bar(self, total: int, desc: str, progress: bool) -> tqdm[Any]:
        """Rank 0's bar in images, with images/s; shown on a terminal only.

        Args:
            total: the images this rank will run.
            desc: the bar's label.
            progress: False hides it everywhere.

        Returns:
            A tqdm bar (disabled on the other ranks).
        """
        shown = None if progress and self.main else True
        return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=shown, dynamic_ncols=True)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def logits_fn(model: VGG, session: Session, optimize: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """float32 logits of a batch: through `optimize_for_inference` (uncompiled) or the model itself.

    Args:
        model: a vggnet VGG (left untouched with `optimize`; else put in eval mode on the session's device).
        session: gives the device.
        optimize: BatchNorm folded, channels_last, bf16 on CUDA; else the model under bf16 autocast on CUDA.

    Returns:
        A function from a batch (on any device) to its float32 logits on the session's device.
    """
    if optimize:
        # float32 on CPU, bf16 on CUDA GPUs that have it (optimize_for_inference's CPU default, bf16 on
        # CPUs with native bf16, would change predictions and embeddings by a rounding step).
        dtype = torch.float32 if session.device.type == "cpu" else None
        # packed for the session's batches, which then run as oneDNN Graph programs from the second on,
        # with the first's logits bit for bit
        fast = optimize_for_inference(
            model, device=session.device, dtype=dtype, batch_size=session.batch_size, compile=False
        )
        return lambda x: fast(x.to(session.device, non_blocking=True)).float()
    net = model.eval().to(session.device)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(session.device):
            out: torch.Tensor = net(x.to(session.device, non_blocking=True))
        return out.float()

    return run


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 on CUDA GPUs that have it; float32 elsewhere.

    Args:
        device: where the model runs.

    Returns:
        `torch.autocast` in bf16 on such a GPU, else a context that changes nothing.
    """
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def totals(session: Session, ran: int, failed: int, seconds: float) -> tuple[int, int, float]:
    """(images run, images failed) summed over the ranks, and the slowest rank's seconds.

    Args:
        session: the run's session (every rank calls this).
        ran: the images this rank ran.
        failed: the images this rank could not read.
        seconds: this rank's wall-clock time.

    Returns:
        (images run, images failed, seconds) for the whole run.
    """
    summed = session.sum(torch.tensor([ran, failed], dtype=torch.int64)).tolist()
    return int(summed[0]), int(summed[1]), slowest(session, seconds)


def slowest(session: Session, value: float) -> float:
    """The largest `value` over the ranks: a run lasts as long as its slowest rank.

    Args:
        session: the run's session (every rank calls this).
        value: this rank's figure.

    Returns:
        The maximum over the ranks.
    """
    if not session.ctx.on:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    on = t.to(session.device) if dist.get_backend() == "nccl" else t
    dist.all_reduce(on, op=dist.ReduceOp.MAX)
    return float(on.item())
