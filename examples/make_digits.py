"""Write scikit-learn's handwritten digits as PNG folders: OUT/{train,val,test}/<digit>/<n>.png.

    python examples/make_digits.py digits/              # 1,797 images, 8x8 gray, 60/20/20
    python examples/make_digits.py digits/ --per-class 20

The digits ship with scikit-learn (no download). Each class is split the same way every time (a fixed
seed), so runs on these folders can be compared. The other examples and the fine-tuning tutorial read them.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path


def write_digits(out: Path, per_class: int | None = None, seed: int = 0) -> dict[str, int]:
    """Write the digits as 8-bit gray PNGs under `out`; return the number of images per split."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = random.Random(seed)
    counts = {"train": 0, "val": 0, "test": 0}
    for digit in range(10):
        index = [i for i, t in enumerate(digits.target) if t == digit]
        rng.shuffle(index)
        index = index[:per_class]
        n_held = max(1, round(len(index) * 0.2))
        splits = {"test": index[:n_held], "val": index[n_held : 2 * n_held], "train": index[2 * n_held :]}
        for split, chosen in splits.items():
            folder = out / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = np.round(digits.images[i] * (255 / 16)).astype("uint8")  # 0..16 -> 0..255
                Image.fromarray(pixels).save(folder / f"{i}.png")
            counts[split] += len(chosen)
    return counts


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to write train/, val/ and test/ into")
    parser.add_argument("--per-class", type=int, default=None, help="at most this many images of each digit")
    args = parser.parse_args()
    print(write_digits(args.out, args.per_class))
