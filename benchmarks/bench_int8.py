"""int8 on CPU: accuracy kept on real images, speed against torchvision and vggnet float32, memory, one-time cost.

    python benchmarks/bench_int8.py [--smoke] [--out DIR] [--models NAME ...] [--budget-s S]

Needs torchao (`pip install "vggnet[int8]"`) and scikit-learn (its bundled digits, no download).
The parts, in this order (each records its figures; nothing is asserted):

- accuracy: scikit-learn's 1797 handwritten digits written out as 32x32 PNG files (train 60%,
  val 20%, test 20%, stratified), two models fine-tuned on them from random weights with
  `vggnet.train.finetune` (MODELS: a linear probe, fc8 on the frozen network's fc7 features, 90% and
  small margins; and bench_digits.py's recommended recipe, vgg11_bn with the gap head trained
  whole, 99%; `--models` adds the same two for vgg16), each then `vggnet.deploy.quantize.quantize`d,
  calibrated on 200 training images and checked on the held-out test images: top-1 agreement with
  float32, logit cosine, accuracy of both, quantize time and the first call's.
- memory: bytes of the tensors the float32 model holds against those the int8 module holds
  (int8 weights, their scales, float32 biases), and the process's resident memory after each
  is loaded (the weights packed for oneDNN count there).
- speed: `vggnet.deploy.bench.run_bench` with dtype int8: vggnet eager, vggnet optimized (float32),
  torchvision eager and channels_last (float32) and vggnet int8 on one random input, interleaved
  rounds, ratios to torchvision eager: vgg16 at batch 1 and 8, vgg16_bn at batch 1.
- cold start: vgg16 at 224x224 quantized in a fresh process: seconds to quantize, of the first call
  (the weights packed for batch 1) and of the first call at batch 8 (packed again for 8). Nothing
  is compiled or cached on disk (issue 27), so every process pays the same.
- --smoke: 10 training images per digit, the linear probe for 1 epoch, vgg11 at 32x32 for speed,
  no cold-start part.

Results go to DIR/int8-<device>-<date>.json (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # a checkout without `pip install -e .`

from harness import Budget, environment, save_results

from vggnet.deploy.bench import format_int8, format_report, run_bench
from vggnet.deploy.quantize import quantize
from vggnet.models.checkpoint import load_finetuned
from vggnet.train.finetune import finetune

SIDE = 32  # digits are 8x8: upscaled to VGG's smallest input
CALIBRATION = 200
# name -> finetune keywords (every model: weights=None, image_size=SIDE, batch 64, seed 0)
_WHOLE = {"head": "gap", "mode": "full", "lr": 0.05, "epochs": 8, "augment": "light", "hflip": False,
          "crop_scale": (0.7, 1.0), "label_smoothing": 0.1, "weight_decay": 5e-4, "warmup_epochs": 1}  # fmt: skip
MODELS: dict[str, dict[str, Any]] = {
    "vgg11-linear": {"arch": "vgg11", "mode": "linear", "epochs": 30},
    "vgg11_bn-gap-full": {"arch": "vgg11_bn", **_WHOLE},
    "vgg16-linear": {"arch": "vgg16", "mode": "linear", "epochs": 30},
    "vgg16_bn-gap-full": {"arch": "vgg16_bn", **_WHOLE},
}
DEFAULT_MODELS = ["vgg11-linear", "vgg11_bn-gap-full"]
# (arch, batch size, timed calls, image size)
SPEED = {
    "full": [("vgg16", 1, 10, 224), ("vgg16", 8, 4, 224), ("vgg16_bn", 1, 10, 224)],
    "smoke": [("vgg11", 1, 2, SIDE)],
}


def write_digits(root: Path, per_class: int | None, calibration: int) -> dict[str, int]:
    """scikit-learn's digits as PNG files in root/{train,val,test,calibration}/<digit>/; the count per split."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    generator = torch.Generator().manual_seed(0)
    counts: dict[str, int] = {}
    calibration_left = calibration
    for label in range(10):
        index = [i for i, t in enumerate(digits.target) if t == label]
        index = [index[i] for i in torch.randperm(len(index), generator=generator).tolist()]
        n = len(index) if per_class is None else min(len(index), per_class * 5 // 3)
        train, val = round(n * 0.6), round(n * 0.2)
        splits = {"train": index[:train], "val": index[train : train + val], "test": index[train + val : n]}
        share = -(-calibration_left // (10 - label))  # the training images calibration reuses, spread over digits
        splits["calibration"] = splits["train"][:share]
        calibration_left -= len(splits["calibration"])
        for split, chosen in splits.items():
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = (digits.images[i] * (255 / 16)).round().astype("uint8")  # 0-16 -> 0-255
                image = Image.fromarray(pixels).resize((SIDE, SIDE), Image.Resampling.BILINEAR)  # 8-bit gray
                image.save(folder / f"{i}.png")
            counts[split] = counts.get(split, 0) + len(chosen)
    return counts


def accuracy_part(digits: Path, work: Path, smoke: bool, model: str) -> dict[str, Any]:
    """Fine-tune MODELS[model] on the digits, quantize, compare; the figures and the memory of both models."""
    settings = MODELS[model] | ({"epochs": 1} if smoke else {})
    start = time.perf_counter()
    result = finetune(
        digits, weights=None, batch_size=64, image_size=SIDE, out=work / f"finetuned-{model}", device="cpu",
        progress=False, seed=0, **settings,
    )  # fmt: skip
    finetune_s = time.perf_counter() - start
    if result.checkpoint is None:
        raise RuntimeError("finetune wrote no checkpoint")
    tuned = load_finetuned(result.checkpoint)
    rss_before = _rss()
    quantized = quantize(tuned.model, digits / "calibration", held_out=digits / "test", preset=tuned.preset)
    gc.collect()
    report = quantized.report
    if report is None:
        raise RuntimeError("quantize returned no report")
    print(format_int8(asdict(report)), flush=True)
    fp32_bytes = sum(t.numel() * t.element_size() for t in tuned.model.state_dict().values())
    int8_bytes = sum(t.numel() * t.element_size() for t in quantized.state_dict().values())
    memory = {
        "arch": f"{settings['arch']} (10 classes, head {settings.get('head', 'vgg')})",
        "fp32_state_bytes": fp32_bytes,
        "int8_state_bytes": int8_bytes,
        "int8_over_fp32": int8_bytes / fp32_bytes,
        "rss_growth_bytes_quantize_and_compile": _rss() - rss_before,
    }
    print(f"memory: float32 tensors {fp32_bytes / 2**20:.0f} MiB, int8 {int8_bytes / 2**20:.0f} MiB "
          f"({memory['int8_over_fp32']:.0%})", flush=True)  # fmt: skip
    return {
        "finetune": {"weights": None, **settings, "best_val_acc": result.best_val_acc, "seconds": finetune_s},
        "quantize": asdict(report),
        "memory": memory,
    }


def _rss() -> int:
    """This process's resident memory in bytes (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="utf-8") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


_COLD_START = """
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
import vggnet
from vggnet.deploy.quantize import quantize
torch.manual_seed(0)
images = torch.randn(16, 3, 224, 224)
quantized = quantize(vggnet.vgg16().eval(), images[:8], held_out=images[8:])
start = time.perf_counter()
quantized(images[:8])
first_batch8_s = time.perf_counter() - start
report = quantized.report
print(json.dumps({"quantize_s": report.quantize_s, "first_call_s": report.compile_s, "first_batch8_s": first_batch8_s}))
"""


def cold_start_part() -> dict[str, Any]:
    """Seconds to quantize vgg16 in a fresh process, of its first call, and of its first call at batch 8."""
    done = subprocess.run(
        [sys.executable, "-c", _COLD_START, str(HERE.parent)], capture_output=True, text=True, check=True
    )
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"cold start: quantize {figures['quantize_s']:.1f} s, first call {figures['first_call_s']:.2f} s, "
          f"first call at batch 8 {figures['first_batch8_s']:.2f} s")  # fmt: skip
    return {"arch": "vgg16", "image_size": 224, **figures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few images, one epoch, vgg11 at 32x32 (CI)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON (default %(default)s)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=DEFAULT_MODELS,
                        help="the fine-tuned models the accuracy part quantizes (default: %(default)s)")  # fmt: skip
    parser.add_argument("--budget-s", type=float, default=None, help="skip the parts left after this long")
    args = parser.parse_args(argv)

    name = "int8" + ("-smoke" if args.smoke else "")
    device = torch.device("cpu")
    data: dict[str, Any] = {"suite": "int8", "smoke": args.smoke, **environment(device), "runs": []}
    budget = Budget(args.budget_s)
    data["skipped"] = budget.skipped
    with tempfile.TemporaryDirectory(prefix="vggnet-int8-") as tmp:
        work = Path(tmp)
        digits = work / "digits"
        counts = write_digits(digits, 10 if args.smoke else None, 20 if args.smoke else CALIBRATION)
        data["data"] = {"source": "sklearn.datasets.load_digits", "side": SIDE, **counts}
        data["accuracy"] = {}
        for model in ["vgg11-linear"] if args.smoke else args.models:
            if not budget.skip(part="accuracy", model=model):
                data["accuracy"][model] = accuracy_part(digits, work, args.smoke, model)
                save_results(name, data, args.out)
        for arch, batch_size, iters, side in SPEED["smoke" if args.smoke else "full"]:
            if budget.skip(arch=arch, batch_size=batch_size):
                continue
            report = run_bench(
                arch, batch_size=batch_size, device=device, dtype=torch.int8, iters=iters,
                rounds=min(5, iters), image_size=side,
            )  # fmt: skip
            print(format_report(report), end="\n\n", flush=True)
            data["runs"].append(report.to_dict())
            save_results(name, data, args.out)
        if args.smoke:
            budget.skipped.append({"part": "cold_start", "reason": "not in --smoke"})
        elif not budget.skip(part="cold_start"):
            data["cold_start"] = cold_start_part()
    data["elapsed_s"] = budget.spent()
    path = save_results(name, data, args.out)
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
