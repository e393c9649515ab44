"""Your own training loop: a VGG trained on scikit-learn's digits, saved with vggnet.save, scored by `vggnet evaluate`.

    python examples/train_digits.py [--epochs 3] [--weights none|DEFAULT] [--out DIR] [--smoke]

The 1,797 8x8 digits of `sklearn.datasets.load_digits` (no download) are written as 32x32 gray PNGs in
DIR/digits/{train,test}/<digit>/ (every fifth image held out). A plain PyTorch loop trains vgg11_bn with
the small-data head (`head="gap"`) and AdamW: one epoch of the head alone, then `--epochs` of everything
(bf16 autocast and channels_last on a GPU). `vggnet.save` writes the model with its class names and its
preset (resize to 32, no crop, the digits' own mean and std) to DIR/digits.safetensors, and

    vggnet evaluate DIR/digits/test --weights DIR/digits.safetensors

reads them back: it prints the accuracy this script measured, to the image. `--weights DEFAULT` starts
from ImageNet's features (a 507 MB download); the default trains from scratch. `--smoke`: 30 training
images a class and one epoch, to check the machinery.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import vggnet
from vggnet.data.transforms import ImageClassification


def write_digits(root: Path) -> None:
    """The digits (0-16 per pixel) as 8-bit 32x32 PNGs in root/{train,test}/<digit>/; every fifth one is test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (pixels, digit) in enumerate(zip(digits.images, digits.target)):
        folder = root / ("test" if i % 5 == 0 else "train") / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray((pixels * (255 / 16)).round().astype("uint8"), mode="L")
        image.resize((32, 32), Image.Resampling.BILINEAR).save(folder / f"{i:04d}.png")


def read_folder(folder: Path, preset: ImageClassification) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Every image of folder/<class>/ through `preset`: (N, 3, 32, 32) floats, (N,) labels, the class names."""
    classes = sorted(p.name for p in folder.iterdir())
    files = [(path, label) for label, name in enumerate(classes) for path in sorted((folder / name).glob("*.png"))]
    x = torch.stack([preset(Image.open(path)) for path, _ in files])
    return x, torch.tensor([label for _, label in files]), classes


def train_epoch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, device: torch.device) -> float:
    """One epoch of AdamW over the parameters that require a gradient; returns the mean loss."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.05)
    fast = device.type == "cuda"  # bf16 autocast and channels_last pay off on GPUs; on 2 CPU cores they cost time
    model.train()
    total = 0.0
    for batch in torch.randperm(len(y)).split(64):
        images = x[batch].to(device, memory_format=torch.channels_last if fast else torch.contiguous_format)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            loss = F.cross_entropy(model(images), y[batch].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    return total / len(y)


@torch.no_grad()
def correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """How many images the model classifies right (on the CPU in float32, in batches of 32, as `vggnet evaluate`)."""
    model.eval()
    return sum(int((model(x[i : i + 32]).argmax(1) == y[i : i + 32]).sum()) for i in range(0, len(y), 32))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs of the whole network after the head's (default 3)"
    )
    parser.add_argument("--weights", default="none", help="none (from scratch, the default) or DEFAULT (ImageNet's)")
    parser.add_argument("--out", type=Path, help="where the images and the model go (default: a temporary folder)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="30 training images a class, one epoch")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        return run(args, args.out or Path(tmp))


def run(args: argparse.Namespace, out: Path) -> int:
    torch.manual_seed(0)
    device = torch.device(args.device)
    write_digits(out / "digits")
    pixels = np.stack([np.asarray(Image.open(p)) for p in (out / "digits/train").glob("*/*.png")]) / 255
    mean, std = float(pixels.mean()), float(pixels.std())
    # the preset the model is trained and evaluated with: resize to 32 (the PNGs' size), no crop, the digits' numbers
    preset = ImageClassification(crop_size=32, resize_size=32, mean=[mean] * 3, std=[std] * 3)
    x, y, classes = read_folder(out / "digits/train", preset)
    if args.smoke:
        keep = torch.cat([torch.nonzero(y == k)[:30, 0] for k in range(len(classes))])
        x, y = x[keep], y[keep]
    model = vggnet.vgg11_bn(weights=args.weights, head="gap", num_classes=len(classes)).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)

    model.features.requires_grad_(False)  # the new head first, on features that stay put
    print(f"head only: loss {train_epoch(model, x, y, 1e-3, device):.3f}", flush=True)
    model.features.requires_grad_(True)
    epochs = 1 if args.smoke else args.epochs
    for epoch in range(epochs):
        print(f"epoch {epoch + 1}: loss {train_epoch(model, x, y, 1e-3, device):.3f}", flush=True)

    # scored on the CPU in float32 here and by `vggnet evaluate` (on a GPU it would run in bf16)
    x_test, y_test, _ = read_folder(out / "digits/test", preset)
    model = model.cpu().to(memory_format=torch.contiguous_format)
    right = correct(model, x_test, y_test)
    path = vggnet.save(model, out / "digits.safetensors", classes=classes, preset=preset, epochs=epochs)
    print(json.dumps({"script": {"correct": right, "images": len(y_test)}}), flush=True)

    command = [sys.executable, "-m", "vggnet", "evaluate", str(out / "digits/test"), "--weights", str(path),
               "--device", "cpu", "--json", "--quiet"]  # fmt: skip
    scored = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    theirs = round(scored["acc1"] * scored["images"])
    print(json.dumps({"vggnet evaluate": {"correct": theirs, "images": scored["images"]}}))
    same = (theirs, scored["images"]) == (right, len(y_test))
    print(f"accuracy: script {right / len(y_test):.2%}, vggnet evaluate {scored['acc1']:.2%}: "
          f"{'the same' if same else 'DIFFERENT'}")  # fmt: skip
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
