"""Pipeline throughput: `predict_images` and `evaluate` over a folder of real JPEGs against the bare model.

    python benchmarks/bench_pipeline.py [--device cpu|cuda] [--smoke] [--out DIR] [--workers W] [--budget-s S]

The question (issue 14): does the data pipeline keep the model busy? Three candidates, at the same
batch size, on the same model (random weights: nothing is downloaded), in the same process:

- "bare model": the forward the pipeline runs (`vggnet.batch.engine.logits_fn`: `optimize_for_inference`,
  uncompiled) on a batch of random tensors already in memory, as many batches as the folder holds;
- "predict": `vggnet.batch.predict.predict_images` over the folder, JPEG decoding and preprocessing in
  DataLoader workers, one JSON line per image written to a temporary file;
- "evaluate": `vggnet.batch.evaluate.evaluate` over the same images, laid out as 4 ImageNet synset folders.

They run in interleaved rounds (bare, predict, evaluate, bare, ...) and the median round counts; a
pipeline's figure is its own images/s (the loop over the images; model preparation excluded), and
`share_of_bare` is that over the bare model's. The images are 500x375 JPEGs of smooth noise (the
size of a typical ImageNet photo), preprocessed by the ImageNet preset (resize 256, crop 224).

--smoke: vgg11 at 32x32 (crop) on 16 small images, batch 4, one round: checks the machinery.
Results go to DIR/pipeline-<device>-<UTC date>.json (default benchmarks/results/; pipeline-smoke-...
with --smoke), headed by `harness.environment`, rewritten after each round: `results` holds one row
per round, `pending` the rounds not reached yet (what a killed run lacks), `skipped` those not
started because --budget-s had passed. Nothing is asserted.
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

from harness import Budget, environment, save_results

from vggnet import VGG, get_model
from vggnet.batch.engine import Session, logits_fn
from vggnet.batch.evaluate import evaluate
from vggnet.batch.predict import predict_images
from vggnet.data.images import imagenet_synsets
from vggnet.data.transforms import ImageClassification
from vggnet.models.weights import IMAGENET_CATEGORIES

FIGURES = ("bare model", "predict", "evaluate")


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
    args = _parser().parse_args(argv)
    budget = Budget(args.budget_s)
    arch, batch, images, image_size, preset = _sizes(args.smoke, args.device)
    rounds = args.rounds or (1 if args.smoke else 3)
    device = torch.device(args.device)
    session = Session(device, batch, args.workers)
    report: dict[str, Any] = {
        "suite": "pipeline", "smoke": args.smoke, **environment(device), "arch": arch, "batch_size": batch,
        "images": images, "image_size": list(image_size), "crop": preset.crop_size, "workers": session.workers,
        "budget_s": args.budget_s, "complete": False, "results": [],
        "pending": [{"round": r} for r in range(1, rounds + 1)], "skipped": budget.skipped,
    }  # fmt: skip
    name = "pipeline" + ("-smoke" if args.smoke else "")
    save_results(name, report, args.out)  # a run killed in its first round still leaves a file that says so
    if budget.left() >= 0:
        torch.manual_seed(0)
        model = get_model(arch).eval()
        forward = logits_fn(model, session)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        for part in list(report["pending"]):
            report["pending"].remove(part)
            if budget.skip(**part):
                print(f"round {part['round']}: skipped, over --budget-s {args.budget_s:.0f}", flush=True)
                continue
            if not data.exists():
                tic = time.perf_counter()
                write_jpegs(data, images, image_size)
                seconds = time.perf_counter() - tic
                print(f"wrote {images} JPEGs of {image_size[0]}x{image_size[1]} in {seconds:.1f} s", flush=True)
            figures = _figures(model, forward, preset, data, Path(tmp) / "out.jsonl", session, images, device)
            row = {"round": part["round"], **figures}
            report["results"].append({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()})
            print(f"round {part['round']}: " + ", ".join(f"{k} {row[k]:.1f} img/s" for k in FIGURES), flush=True)
            save_results(name, report, args.out)
    if report["results"]:
        _medians(report)
    report["complete"] = True
    report["elapsed_s"] = round(budget.spent(), 1)
    path = save_results(name, report, args.out)
    print(f"results: {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="vgg11, tiny images, one round (CI)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON (default %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the library's)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, 1 with --smoke)")
    parser.add_argument("--budget-s", type=float, default=None, help="start no round after this many seconds")
    return parser


def _sizes(smoke: bool, device: str) -> tuple[str, int, int, tuple[int, int], ImageClassification]:
    """(arch, batch size, image count, (width, height) of the JPEGs, preset) for the run."""
    if smoke:
        return "vgg11", 4, 16, (64, 48), ImageClassification(crop_size=32)
    batch = 128 if device == "cuda" else 16
    return "vgg16", batch, batch * (16 if device == "cuda" else 8), (500, 375), ImageClassification(crop_size=224)


def _figures(
    model: VGG,
    forward: Any,
    preset: ImageClassification,
    data: Path,
    out: Path,
    session: Session,
    images: int,
    device: torch.device,
) -> dict[str, float]:
    """One round's images/s: the bare model, then predict (writing to `out`), then evaluate."""
    batch = session.batch_size
    row = {"bare model": bare(forward, batch, preset.crop_size, images // batch, device)}
    summary = predict_images(
        model, preset, [data], out, categories=IMAGENET_CATEGORIES, batch_size=batch, workers=session.workers,
        device=device, progress=False,
    )  # fmt: skip
    row["predict"] = summary.images_per_s
    row["evaluate"] = evaluate(
        model, preset, data, batch_size=batch, workers=session.workers, device=device, progress=False
    ).images_per_s
    return row


def _medians(report: dict[str, Any]) -> None:
    """The median of the rounds of each figure and the pipelines' shares of the bare model's, printed and kept."""
    medians = {k: statistics.median(r[k] for r in report["results"]) for k in FIGURES}
    report["img_per_s"] = medians
    report["share_of_bare"] = {k: round(medians[k] / medians["bare model"], 3) for k in ("predict", "evaluate")}
    for k in ("predict", "evaluate"):
        share = report["share_of_bare"][k]
        print(f"{k}: {medians[k]:.1f} img/s = {share:.0%} of the bare model's {medians['bare model']:.1f}")


if __name__ == "__main__":
    raise SystemExit(main())
