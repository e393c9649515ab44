"""A plain PyTorch training loop around a vggnet model: bf16 autocast, and DDP when torchrun starts it.

    python examples/train_ddp.py                       # one process (CUDA if there is a GPU)
    torchrun --nproc_per_node 2 examples/train_ddp.py  # DDP: gloo on CPUs, NCCL on GPUs (one GPU per process)
    python examples/train_ddp.py --smoke --bf16        # two small steps, bf16 on the CPU too: what CI runs

bf16 autocast is on for GPUs; on a CPU ask for it with --bf16 (it pays where the CPU computes bf16 natively:
AVX512_BF16 or AMX; elsewhere it is emulated and slower than float32).

The data are scikit-learn's 1,797 handwritten digits (8x8 gray, shipped with it) scaled to 32x32, the
smallest input VGG takes (five 2x2 max-pools). The model is vgg11_bn from random weights with one input
channel and the "gap" head (a global average pool and one Linear: 5,130 head parameters instead of 123M).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import vggnet


def digits(split: str) -> TensorDataset:
    """The digits as (N, 1, 32, 32) tensors normalised to [-1, 1], with labels; 80% train, 20% val."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16  # (1797, 1, 8, 8), 0..16 -> 0..1
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False) * 2 - 1
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(y))
    chosen = order[:cut] if split == "train" else order[cut:]
    return TensorDataset(x[chosen], y[chosen])


@torch.no_grad()
def accuracy(model: nn.Module, data: TensorDataset, device: torch.device, bf16: bool) -> float:
    """Top-1 accuracy of `model` on `data` (every process scores all of it: the set is small)."""
    model.eval()
    correct = 0
    for x, y in DataLoader(data, batch_size=256):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x.to(device, memory_format=torch.channels_last))
        correct += int((logits.argmax(1).cpu() == y).sum())
    return correct / len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description="train vgg11_bn on the digits with a plain loop")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--out", default="digits-vgg11_bn.pth", help="where rank 0 saves the state dict")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on a CPU too (always on for GPUs)")
    parser.add_argument("--smoke", action="store_true", help="two steps of 16 images")
    args = parser.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    bf16 = device.type == "cuda" or args.bf16

    torch.manual_seed(0)  # the same initial weights in every process (DDP also broadcasts rank 0's)
    model = vggnet.vgg11_bn(weights=None, num_classes=10, in_chans=1, head="gap")
    model = model.to(device, memory_format=torch.channels_last)
    net: nn.Module = model
    if world > 1:
        if device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = DistributedDataParallel(net, device_ids=[local_rank] if device.type == "cuda" else None)

    train, val = digits("train"), digits("val")
    if args.smoke:
        val = TensorDataset(*val[:64])
    sampler = DistributedSampler(train, seed=0) if world > 1 else None  # each process its share
    batch_size = 16 if args.smoke else args.batch_size
    loader = DataLoader(train, batch_size=batch_size, sampler=sampler, shuffle=sampler is None, drop_last=True)
    epochs, steps = (1, 2) if args.smoke else (args.epochs, len(loader))
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=epochs * steps)

    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)  # a new shuffle each epoch, the same in every process
        net.train()
        for step, (x, y) in enumerate(loader):
            if step == steps:
                break
            x, y = x.to(device, memory_format=torch.channels_last), y.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):  # bf16 convs, float32 weights
                loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over the processes here
            optimizer.step()
            schedule.step()
        val_acc = accuracy(model, val, device, bf16)
        if rank == 0:
            print(f"epoch {epoch + 1}/{epochs}: last loss {loss.item():.3f}, val acc {val_acc:.1%}")

    if rank == 0:
        torch.save(model.state_dict(), args.out)  # vggnet.vgg11_bn(weights=args.out, ...) loads it back
        print(f"saved {args.out}")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
