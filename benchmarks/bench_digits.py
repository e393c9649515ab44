"""Small data from random initialisation: scikit-learn's handwritten digits through `vggnet.train.finetune`.

    python benchmarks/bench_digits.py [--smoke] [--out DIR] [--runs NAME ...] [--epochs N] [--threads T] [--no-amp]

The 1,797 real 8x8 gray digits of `sklearn.datasets.load_digits` (shipped with scikit-learn, no
download) are written out as PNGs in an ImageFolder (`train/`, `val/`, `test/`, stratified 60/20/20
with a fixed seed). Each run is one `finetune` call from random weights at 32x32 with `in_chans=1`;
its best checkpoint (by validation accuracy) is read back with `load_finetuned` and scored on
`test/`. Reported per run: test accuracy, the train/validation accuracy gap at the best epoch,
wall-clock seconds of the `finetune` call (reading the PNGs included), epochs run, the precision it
trained in (finetune's default: bf16 where the CPU computes it natively, else float32; --amp/--no-amp
force it), and, for a shared machine, the CPU seconds the process used and the load average after.

Ten epochs by default (15 before bf16): the recommended run reaches 99.44% test accuracy in bf16 by its
tenth epoch (99.72% in 15 float32 epochs, 98 s on 2 idle cores), for a run of about a minute or less.

--smoke: 12 images a class, one epoch of two runs (checks the machinery, in well under a minute).
Results go to DIR/digits-cpu-<UTC date>.json (default benchmarks/results/; digits-smoke-... with
--smoke) with `harness.environment` (load average included). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # a checkout without `pip install -e .`

from harness import environment, save_results

# name -> finetune keywords; every run: weights=None, in_chans=1, image_size=32, seed 0
RECIPE = {"augment": "light", "hflip": False, "crop_scale": (0.7, 1.0), "label_smoothing": 0.1,
          "weight_decay": 5e-4, "warmup_epochs": 1}  # fmt: skip
RUNS: dict[str, dict[str, Any]] = {
    # the recommended recipe: BatchNorm, the gap head, light augmentation without flips (digits are not symmetric)
    "vgg11_bn-gap-full-light": {"arch": "vgg11_bn", "head": "gap", "mode": "full", "lr": 0.05, **RECIPE},
    "vgg11_bn-gap-full-none": {
        "arch": "vgg11_bn",
        "head": "gap",
        "mode": "full",
        "lr": 0.05,
        "augment": "none",
        "weight_decay": 5e-4,
        "warmup_epochs": 1,
    },
    "vgg11_bn-vgg-full-light": {"arch": "vgg11_bn", "head": "vgg", "mode": "full", "lr": 0.01, **RECIPE},
    "vgg11-gap-full-light": {"arch": "vgg11", "head": "gap", "mode": "full", "lr": 0.01, **RECIPE},
    # linear probes on a random backbone: what a head alone learns without pretrained features
    "vgg11_bn-gap-linear": {"arch": "vgg11_bn", "head": "gap", "mode": "linear", "lr": 0.05},
    "vgg11_bn-fc7-linear": {"arch": "vgg11_bn", "head": "fc7", "mode": "linear", "lr": 0.05},
}
SMOKE_RUNS = ("vgg11_bn-gap-full-light", "vgg11_bn-gap-linear")


def write_digits(root: Path, per_class: int | None, seed: int = 0) -> dict[str, int]:
    """The digits as 8-bit gray PNGs in root/{train,val,test}/<digit>/, stratified 60/20/20; counts per split."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    generator = torch.Generator().manual_seed(seed)
    counts = {"train": 0, "val": 0, "test": 0}
    for digit in range(10):
        index = [i for i, t in enumerate(digits.target) if t == digit]
        order = [index[i] for i in torch.randperm(len(index), generator=generator).tolist()][:per_class]
        n_val = n_test = round(len(order) * 0.2)
        splits = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
        for split, chosen in splits.items():
            folder = root / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = (digits.images[i] * (255 / 16)).round().astype("uint8")  # 0..16 -> 0..255
                Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
            counts[split] += len(chosen)
    return counts


def test_accuracy(checkpoint: Path, test_root: Path) -> float:
    """Percent of test/ the checkpoint classifies right (its own preset and classes)."""
    from vggnet.data.images import ImageFolder
    from vggnet.models.checkpoint import load_finetuned

    finetuned = load_finetuned(checkpoint)
    folder = ImageFolder(test_root, finetuned.preset, finetuned.classes, gray=finetuned.in_chans == 1)
    loader = torch.utils.data.DataLoader(folder, batch_size=256)
    correct = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((finetuned.model(x).argmax(1) == y).sum())
    return 100.0 * correct / len(folder)


def run_one(
    name: str, settings: dict[str, Any], data: Path, out: Path, epochs: int, batch: int, amp: bool | None = None
) -> dict[str, Any]:
    from vggnet.deploy.bench import load_average
    from vggnet.train.finetune import finetune

    tic, cpu = time.perf_counter(), time.process_time()
    result = finetune(data, weights=None, in_chans=1, image_size=32, epochs=epochs, batch_size=batch, amp=amp,
                      out=out / name, progress=False, plot=out / f"{name}.png", **settings)  # fmt: skip
    seconds, cpu_seconds = time.perf_counter() - tic, time.process_time() - cpu
    if result.checkpoint is None:
        raise RuntimeError(f"{name}: no checkpoint written")
    best = result.history[result.best_epoch - 1]
    figures = {
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        "epochs": len(result.history), "seconds": round(seconds, 1),
        "test_acc": round(test_accuracy(result.checkpoint, data / "test"), 2),
        "best_epoch": result.best_epoch, "val_acc": round(best.val_acc, 2), "train_acc": round(best.train_acc, 2),
        "train_val_gap": round(best.train_acc - best.val_acc, 2),
        "checkpoint_bytes": result.checkpoint.stat().st_size,
        "images_per_s": round(sum(s.images_per_s for s in result.history) / len(result.history), 1),
        "precision": torch.load(result.checkpoint, weights_only=True)["meta"].get("precision", "float32"),
        "cpu_seconds": round(cpu_seconds, 1), "load_average_after": list(load_average()),
        "val_acc_by_epoch": [round(s.val_acc, 2) for s in result.history],
    }  # fmt: skip
    print(f"{name}: test {figures['test_acc']:.2f}%, val {best.val_acc:.2f}%, train-val gap "
          f"{figures['train_val_gap']:+.2f}, {seconds:.0f} s ({cpu_seconds:.0f} CPU s), {len(result.history)} epochs, "
          f"{figures['precision']}", flush=True)  # fmt: skip
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny subset, one epoch, two runs")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder of the JSON")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), help="default: all (the smoke's two with --smoke)")
    parser.add_argument("--epochs", type=int, default=10, help="default 10 (1 with --smoke)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    amp_help = "bf16 autocast (default: finetune's, on where the CPU computes bf16 natively)"
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help=amp_help)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.runs or (SMOKE_RUNS if args.smoke else list(RUNS))
    epochs = 1 if args.smoke else args.epochs
    results: dict[str, Any] = {
        **environment(torch.device("cpu")), "threads": torch.get_num_threads(), "smoke": args.smoke,
        "epochs": epochs, "batch_size": args.batch_size, "runs": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "digits"
        results["images"] = write_digits(data, 12 if args.smoke else None)
        print(f"digits: {results['images']} images (train/val/test), {torch.get_num_threads()} threads", flush=True)
        for name in names:
            results["runs"][name] = run_one(
                name, RUNS[name], data, Path(tmp) / "runs", epochs, args.batch_size, args.amp
            )
            path = save_results("digits-smoke" if args.smoke else "digits", results, args.out)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
