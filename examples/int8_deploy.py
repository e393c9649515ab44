"""int8 on a CPU: calibrate a model on a few hundred images, check it against float32, time both.

    python examples/int8_deploy.py --checkpoint digits-run/best.pth  # a model fine-tuned on the digits
    python examples/int8_deploy.py --smoke                           # a random vgg11_bn, 20 digits a class: CI

`quantize` (pip install "vggnet[int8]": torchao) exports the model, calibrates every convolution and
linear layer on the calibration images and converts them to oneDNN's int8 kernels (nothing is compiled).
Its report gives the top-1 agreement and logit cosine with float32 on held-out images, both accuracies
where the folders give labels, and the one-time cost. The calibration and held-out folders hold one
sub-folder per class, in the model's class order (here the digits 0-9).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from make_digits import write_digits

import vggnet
from vggnet.data.images import ImageFolder
from vggnet.data.transforms import ImageClassification
from vggnet.deploy.quantize import int8_instructions, quantize


def images_per_second(model: torch.nn.Module, batch: torch.Tensor, rounds: int) -> float:
    """Images per second of `model` on `batch`, after one warm-up call (which packs the int8 weights for its batch)."""
    with torch.inference_mode():
        model(batch)
        tic = time.perf_counter()
        for _ in range(rounds):
            model(batch)
    return rounds * len(batch) / (time.perf_counter() - tic)


def main() -> None:
    parser = argparse.ArgumentParser(description="quantize a digits model to int8 and compare it with float32")
    parser.add_argument("--checkpoint", help="a `vggnet finetune` checkpoint (default: a random vgg11_bn)")
    parser.add_argument("--smoke", action="store_true", help="20 images of each digit, a short timing")
    args = parser.parse_args()
    print(f"int8 instructions on this CPU: {int8_instructions()}")

    if args.checkpoint:
        loaded = vggnet.load(args.checkpoint)  # the model with its own preset and class names
        model, preset = loaded.model, loaded.preset
    else:
        torch.manual_seed(0)
        model = vggnet.vgg11_bn(weights=None, num_classes=10, in_chans=1, head="gap")
        preset = ImageClassification(crop_size=32, mean=(0.5,), std=(0.5,))  # one channel: gray images
    model.eval()

    with tempfile.TemporaryDirectory() as tmp:
        digits = Path(tmp)
        write_digits(digits, per_class=20 if args.smoke else None)
        # calibration: val/ (a few hundred images like the ones the model will see); checked on test/
        fast = quantize(model, digits / "val", held_out=digits / "test", preset=preset, batch_size=32)
        test = ImageFolder(digits / "test", preset, gray=True)
        batch = torch.stack([test[i][0] for i in range(min(32, len(test)))])

    print(fast.report)
    rounds = 2 if args.smoke else 20
    fp32_speed, int8_speed = images_per_second(model, batch, rounds), images_per_second(fast, batch, rounds)
    print(f"float32: {fp32_speed:.0f} img/s, int8: {int8_speed:.0f} img/s")
    with torch.inference_mode():
        agree = (fast(batch).argmax(1) == model(batch).argmax(1)).float().mean()
    print(f"same top-1 class on {agree:.0%} of a batch of {len(batch)}")


if __name__ == "__main__":
    main()
