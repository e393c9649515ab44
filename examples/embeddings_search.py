"""Embeddings and a nearest-neighbour search: index images by a VGG layer, find each query's closest images.

    python examples/embeddings_search.py                          # vgg16's ImageNet weights (528 MB, once)
    python examples/embeddings_search.py --weights none --smoke   # random weights, 10 digits a class: CI

The images are scikit-learn's digits written as PNG folders (examples/make_digits.py). `embed_images`
(what `vggnet embed` runs) writes the pooled, L2-normalised pool5 features of train/ and test/ as .npy
shards with an index; `read_embeddings` reads them back. Each test image's nearest train images by cosine
similarity then vote on its digit: the accuracy says how much the layer's features know about digits.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from make_digits import write_digits

import vggnet
from vggnet.batch.embed import embed_images, read_embeddings
from vggnet.data.transforms import ImageClassification


def index(model: vggnet.VGG, folder: Path, out: Path, layer: str) -> tuple[list[str], torch.Tensor]:
    """(image paths, (N, D) unit-norm features) of every image in `folder`, through an embeddings folder."""
    preset = ImageClassification(crop_size=64)  # the digits are 8x8: scaled up to 73, center crop 64
    embed_images(model, preset, [folder], out, layer=layer, pool=True, normalize=True, workers=0, progress=False)
    paths, rows = read_embeddings(out)
    return paths, torch.from_numpy(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description="nearest-neighbour search on VGG embeddings of the digits")
    parser.add_argument("--weights", default="DEFAULT", help="DEFAULT (ImageNet), none (random), or a file")
    parser.add_argument("--layer", default="pool5", help="any tap: relu4_3, pool5, fc7, ...")
    parser.add_argument("-k", type=int, default=5, help="neighbours that vote")
    parser.add_argument("--smoke", action="store_true", help="10 images of each digit")
    args = parser.parse_args()

    model = vggnet.vgg16(weights=args.weights).eval()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_digits(root / "digits", per_class=10 if args.smoke else None)
        train_paths, train = index(model, root / "digits" / "train", root / "train-emb", args.layer)
        test_paths, test = index(model, root / "digits" / "test", root / "test-emb", args.layer)

    labels = torch.tensor([int(Path(p).parent.name) for p in train_paths])  # the digit is the folder's name
    truth = torch.tensor([int(Path(p).parent.name) for p in test_paths])
    similarity = test @ train.T  # cosine: the rows have unit norm
    nearest = similarity.topk(min(args.k, len(train)), dim=1).indices  # (queries, k)
    votes = labels[nearest].mode(dim=1).values
    print(f"{len(train)} indexed, {len(test)} queries, {args.layer} features of {train.shape[1]} dimensions")
    print(f"{args.k}-nearest-neighbour accuracy: {(votes == truth).float().mean():.1%}")
    print(f"{Path(test_paths[0]).name}: nearest {[Path(train_paths[i]).name for i in nearest[0].tolist()]}")


if __name__ == "__main__":
    main()
