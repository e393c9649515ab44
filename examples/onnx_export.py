"""Export a model to ONNX with its preprocessing inside, then classify photos with onnxruntime alone.

    python examples/onnx_export.py                  # vgg16 with ImageNet's weights (528 MB, once): vgg16.onnx
    python examples/onnx_export.py --smoke          # vgg11 with random weights: what CI runs

With `include_preset=True` the ONNX graph takes uint8 images (N, 3, H, W) of any size and does the
resize, center crop and normalisation itself, so the code that runs it needs onnxruntime, NumPy and
Pillow only: no torch, no vggnet (the second half of `main`). The logits are compared with PyTorch's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vggnet
from vggnet.deploy.export import export

PHOTOS = Path(__file__).parents[1] / "tests" / "photos"


def main() -> None:
    parser = argparse.ArgumentParser(description="export to ONNX and run it with onnxruntime")
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--weights", default="DEFAULT", help="DEFAULT (ImageNet), none (random), or a file")
    parser.add_argument("--out", type=Path, default=Path("vgg16.onnx"))
    parser.add_argument("--smoke", action="store_true", help="vgg11 with random weights")
    args = parser.parse_args()

    model = vggnet.vgg11(weights=None) if args.smoke else vggnet.get_model(args.arch, weights=args.weights)
    model.eval()
    export(model, args.out, "onnx", include_preset=True, dynamic_size=True)  # uint8 in, any batch and size
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.0f} MiB)")

    # --- deployment: onnxruntime, NumPy and Pillow only ---
    import onnxruntime as ort

    session = ort.InferenceSession(str(args.out), providers=["CPUExecutionProvider"])
    for path in sorted(PHOTOS.glob("*.[jp][pn]g")):
        pixels = np.asarray(Image.open(path).convert("RGB"))  # (H, W, 3) uint8, any size
        images = pixels.transpose(2, 0, 1)[None]  # (1, 3, H, W)
        (logits,) = session.run(None, {"images": images})
        top = int(logits[0].argmax())
        with torch.no_grad():  # the same image through PyTorch: the preset, then the model
            reference = model(vggnet.VGG16_Weights.DEFAULT.transforms()(torch.from_numpy(images.copy())))
        difference = float(np.abs(logits - reference.numpy()).max())
        label = vggnet.VGG16_Weights.DEFAULT.meta["categories"][top]
        print(f"{path.name}: {label} (class {top}); largest difference from PyTorch {difference:.1e}")


if __name__ == "__main__":
    main()
