"""Image restoration with a perceptual loss: a small CNN learns to undo blur and noise on photo crops.

    python examples/perceptual_restoration.py                        # vgg16's ImageNet weights (528 MB, once)
    python examples/perceptual_restoration.py --weights none --smoke # random VGG, two steps: what CI runs

The loss is L1 on pixels plus `PerceptualLoss` on vgg16's relu1_2 ... relu3_3 (Johnson et al. 2016): the
VGG is frozen and in eval mode; gradients flow to the restored image only. The photos are the ones in
tests/photos (any folder of images works: --photos DIR). PSNR on held-out crops is printed before and after.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import vggnet
from vggnet.data.decode import load_image, pil_to_tensor
from vggnet.seeing.losses import PerceptualLoss


def crops(folder: Path, size: int, count: int, seed: int) -> torch.Tensor:
    """`count` random size x size RGB crops in [0, 1] from the images in `folder`: (count, 3, size, size)."""
    images = [pil_to_tensor(load_image(p)).float() / 255 for p in sorted(folder.iterdir()) if p.suffix != ".md"]
    generator = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        image = images[i % len(images)]
        top = int(torch.randint(image.shape[1] - size + 1, (1,), generator=generator))
        left = int(torch.randint(image.shape[2] - size + 1, (1,), generator=generator))
        out.append(image[:, top : top + size, left : left + size])
    return torch.stack(out)


def degrade(clean: torch.Tensor, seed: int) -> torch.Tensor:
    """Blur (down- then up-sampled by 2) plus Gaussian noise: what the network learns to undo."""
    blurred = F.interpolate(F.avg_pool2d(clean, 2), scale_factor=2, mode="bilinear", align_corners=False)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed)) * 0.05
    return (blurred + noise).clamp(0, 1)


class Restorer(nn.Module):
    """Five 3x3 convolutions predicting a correction that is added to the degraded image."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
        for _ in range(3):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.body(x)).clamp(0, 1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]."""
    return float(10 * torch.log10(1 / F.mse_loss(x, y)))


def main() -> None:
    parser = argparse.ArgumentParser(description="train a small restoration CNN with a perceptual loss")
    parser.add_argument("--weights", default="DEFAULT", help="the VGG's weights: DEFAULT (ImageNet), none, a file")
    parser.add_argument("--photos", type=Path, default=Path(__file__).parents[1] / "tests" / "photos")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--size", type=int, default=96, help="crop side in pixels (VGG needs at least 32)")
    parser.add_argument("--smoke", action="store_true", help="two steps on 48 px crops")
    args = parser.parse_args()
    steps, size = (2, 48) if args.smoke else (args.steps, args.size)

    torch.manual_seed(0)
    vgg = vggnet.vgg16(weights=args.weights)  # "none": random weights
    loss_fn = PerceptualLoss(vgg, layers=["relu1_2", "relu2_2", "relu3_3"], distance="l1", input_range="0-1")
    model = Restorer()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    val_clean = crops(args.photos, size, 8, seed=1)
    val_input = degrade(val_clean, seed=1)
    print(f"held-out PSNR of the degraded crops: {psnr(val_input, val_clean):.2f} dB")
    for step in range(steps):
        clean = crops(args.photos, size, 8, seed=100 + step)
        restored = model(degrade(clean, seed=100 + step))
        loss = F.l1_loss(restored, clean) + 0.1 * loss_fn(restored, clean)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step + 1}/{steps}: loss {loss.item():.4f}")
    with torch.no_grad():
        print(f"held-out PSNR after {steps} steps: {psnr(model(val_input), val_clean):.2f} dB")


if __name__ == "__main__":
    main()
