"""Pipeline throughput: `predict_images` and `evaluate` over a folder of real JPEGs against the bare model.

    python benchmarks/bench_pipeline.py [--device cpu|cuda] [--smoke] [--out DIR] [--workers W]

The question (issue 14): does the data pipeline keep the model busy? Three candidates, at the same
batch size, on the same model (random weights: nothing is downloaded), in the same process:

- "bare model": the forward the pipeline runs (`vggnet.batch.logits_fn`: `optimize_for_inference`,
  uncompiled) on a batch of random tensors already in memory, as many batches as the folder holds;
- "predict": `vggnet.predict.predict_images` over the folder, JPEG decoding and preprocessing in
  DataLoader workers, one JSON line per image written to a temporary file;
- "evaluate": `vggnet.evaluate.evaluate` over the same images, laid out as 4 ImageNet synset folders.

They run in interleaved rounds (bare, predict, evaluate, bare, ...) and the median round counts; a
pipeline's figure is its own images/s (the loop over the images; model preparation excluded), and
`share_of_bare` is that over the bare model's. The images are 500x375 JPEGs of smooth noise (the
size of a typical ImageNet photo), preprocessed by the ImageNet preset (resize 256, crop 224).

--smoke: vgg11 at 32x32 (crop) on 16 small images, batch 4, one round: checks the machinery.
Results go to DIR/pipeline-<device>-<UTC date>.json (default benchmarks/results/). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # a checkout without `pip install -e .` (the GPU machines have none)

from vggnet import get_model  # noqa: E402
from vggnet.batch import Session, logits_fn  # noqa: E402
from vggnet.bench import environment, save_results  # noqa: E402
from vggnet.evaluate import evaluate  # noqa: E402
from vggnet.images import imagenet_synsets  # noqa: E402
from vggnet.predict import predict_images  # noqa: E402
from vggnet.transforms import ImageClassification  # noqa: E402
from vggnet.weights import IMAGENET_CATEGORIES  # noqa: E402


def write_jpegs(root: Path, count: int, size: tuple[int, int], classes: int = 4) -> None:
    """`count` JPEGs (quality 90) of smooth random colour in ImageNet's layout: `classes` synset folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    width, height = size
    for i in range(count):
        folder = root / imagenet_synsets()[i % classes]
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
        img.save(folder / f"{i:05d}.jpg", quality=90)


def bare(forward: Any, batch: int, crop: int, batches: int, device: torch.device) -> float:
    """Images/s of the model alone on in-memory batches."""
    x = torch.randn(batch, 3, crop, crop)
    forward(x)  # warm-up
    _sync(device)
    tic = time.perf_counter()
    for _ in range(batches):
        forward(x)
    _sync(device)
    return batch * batches / (time.perf_counter() - tic)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="vgg11, tiny images, one round (CI)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON (default %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the library's)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, 1 with --smoke)")
    args = parser.parse_args(argv)

    if args.smoke:
        arch, batch, images, image_size, preset = "vgg11", 4, 16, (64, 48), ImageClassification(crop_size=32)
    else:
        batch = 128 if args.device == "cuda" else 16
        arch, images, image_size = "vgg16", batch * (16 if args.device == "cuda" else 8), (500, 375)
        preset = ImageClassification(crop_size=224)
    rounds = args.rounds or (1 if args.smoke else 3)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = get_model(arch).eval()
    session = Session(device, batch, args.workers)
    forward = logits_fn(model, session)
    report: dict[str, Any] = {
        "suite": "pipeline", "smoke": args.smoke, **environment(device), "arch": arch, "batch_size": batch,
        "images": images, "image_size": list(image_size), "crop": preset.crop_size, "workers": session.workers,
        "rounds": rounds, "complete": False,
    }  # fmt: skip
    name = "pipeline" + ("-smoke" if args.smoke else "")
    figures: dict[str, list[float]] = {"bare model": [], "predict": [], "evaluate": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        tic = time.perf_counter()
        write_jpegs(data, images, image_size)
        print(
            f"wrote {images} JPEGs of {image_size[0]}x{image_size[1]} in {time.perf_counter() - tic:.1f} s", flush=True
        )
        for round_ in range(rounds):
            figures["bare model"].append(bare(forward, batch, preset.crop_size, images // batch, device))
            summary = predict_images(
                model, preset, [data], Path(tmp) / "out.jsonl", categories=IMAGENET_CATEGORIES, batch_size=batch,
                workers=session.workers, device=device, progress=False,
            )  # fmt: skip
            figures["predict"].append(summary.images_per_s)
            result = evaluate(
                model, preset, data, batch_size=batch, workers=session.workers, device=device, progress=False
            )
            figures["evaluate"].append(result.images_per_s)
            print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in figures.items()), flush=True)
    medians = {k: statistics.median(v) for k, v in figures.items()}
    report["img_per_s"] = {k: round(v, 2) for k, v in medians.items()}
    report["rounds_img_per_s"] = {k: [round(x, 2) for x in v] for k, v in figures.items()}
    report["share_of_bare"] = {k: round(medians[k] / medians["bare model"], 3) for k in ("predict", "evaluate")}
    report["complete"] = True
    path = save_results(name, report, args.out)
    base = medians["bare model"]
    for k in ("predict", "evaluate"):
        print(f"{k}: {medians[k]:.1f} img/s = {report['share_of_bare'][k]:.0%} of the bare model's {base:.1f}")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
