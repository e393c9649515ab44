"""Your own training loop under torch.compile: the epoch that unfreezes the features, vggnet against torchvision.

    python benchmarks/bench_compile.py [--smoke] [--device D] [--dtypes fp32 bf16] [--epochs N] [--head H]
                                       [--backend B] [--modes compiled eager] [--budget-s S] [--out DIR]

The recipe of issue 25, as a practitioner writes it: scikit-learn's 1,797 digits (no download) at 32x32 (gray
repeated to RGB), vgg11_bn with 10 classes, AdamW (lr 1e-3), batch 64, the same seed and the same initial
weights for both libraries. `--head gap` gives both the gap head (torchvision's: a 1x1 average pool and
Sequential(Linear(512, 10)) put in by hand), 5 thousand head parameters instead of 119 million.

Epoch 1 trains the head alone, the features frozen (vggnet: `model.freeze()`; torchvision:
`model.features.requires_grad_(False)`, what its users write); epoch 2 unfreezes them
(`model.unfreeze()` / `requires_grad_(True)`); the later epochs train everything. Each epoch is a pass over
the 1,437 training images (the last batch smaller) then one over the 360 test images (eval mode, no_grad).
Each run starts from `torch._dynamo.reset()`.

Per run and epoch: wall-clock seconds (compilation included), the graphs dynamo compiled so far, test
accuracy. Compare the runs on one machine only; the load average is recorded with them. Nothing is asserted.

--smoke: 96 training and 32 test images, batch 32, three epochs, fp32, the gap head, dynamo's "eager" backend
(graphs are captured and counted, nothing is code-generated): checks the machinery in about a minute.
Results go to DIR/compile-<device>-<UTC date>.json (default benchmarks/results/; compile-smoke-... with --smoke).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch._dynamo  # the benchmark measures the compiler (`import vggnet` never imports it)
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # a checkout without `pip install -e .`

from harness import Budget, environment, save_results

DTYPES = {"fp32": None, "bf16": torch.bfloat16}  # bf16: autocast around the forward and the loss
LIBRARIES = ("vggnet", "torchvision")


def digits(n_train: int | None, n_test: int | None, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(train x, train y, test x, test y): the digits at 32x32, 3 channels, normalised, split 80/20 at random."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16  # (1797, 1, 8, 8) in 0..1
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    x = (x - 0.5) / 0.25
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(x))
    train, test = order[:cut][:n_train], order[cut:][:n_test]
    return x[train].contiguous(), y[train], x[test].contiguous(), y[test]


def models(device: torch.device, head: str) -> dict[str, torch.nn.Module]:
    """vggnet's and torchvision's vgg11_bn for 10 classes with the same initial tensors and the same head."""
    import torchvision

    import vggnet

    torch.manual_seed(0)
    ours = vggnet.vgg11_bn(num_classes=10, head=head)  # type: ignore[arg-type]
    theirs = torchvision.models.vgg11_bn(num_classes=10)
    if head == "gap":
        theirs.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        theirs.classifier = torch.nn.Sequential(torch.nn.Linear(512, 10))
    theirs.load_state_dict(ours.state_dict())
    return {"vggnet": ours.to(device), "torchvision": theirs.to(device)}


def set_frozen(lib: str, model: Any, frozen: bool) -> None:
    """What each library's users write to freeze or unfreeze the features."""
    if lib == "vggnet":
        model.freeze() if frozen else model.unfreeze()
    else:
        model.features.requires_grad_(not frozen)


def graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def run_epoch(
    net: Any, model: Any, optimizer: torch.optim.Optimizer, data: tuple[torch.Tensor, ...], batch: int, dtype: Any
) -> float:
    """One training pass and one evaluation pass; the test accuracy in %."""
    x, y, tx, ty = data
    autocast = (
        torch.autocast(x.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    )  # fmt: skip
    model.train()
    for i in range(0, len(x), batch):
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(net(x[i : i + batch]), y[i : i + batch])
        loss.backward()
        optimizer.step()
    model.eval()
    correct = 0
    with torch.no_grad(), autocast:
        for i in range(0, len(tx), batch):
            correct += int((net(tx[i : i + batch]).argmax(1) == ty[i : i + batch]).sum())
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return 100.0 * correct / max(len(tx), 1)


def one_run(lib: str, model: Any, data: tuple[torch.Tensor, ...], settings: dict[str, Any]) -> dict[str, Any]:
    """Epoch 1 head only, epoch 2 unfreezes, then full epochs; per epoch seconds, graphs so far, accuracy."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = settings["mode"] == "compiled"
    net = torch.compile(model, backend=settings["backend"]) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)  # frozen parameters get no gradient: skipped
    epochs = []
    for epoch in range(1, settings["epochs"] + 1):
        phase = "head only" if epoch == 1 else "unfreeze" if epoch == 2 else "full"
        if epoch <= 2:
            set_frozen(lib, model, frozen=epoch == 1)
        tic = time.perf_counter()
        accuracy = run_epoch(net, model, optimizer, data, settings["batch"], DTYPES[settings["dtype"]])
        seconds = time.perf_counter() - tic
        epochs.append({"epoch": epoch, "phase": phase, "seconds": round(seconds, 2), "graphs": graphs(),
                       "test_acc": round(accuracy, 2)})  # fmt: skip
        print(f"{lib} {settings['dtype']} {settings['mode']}: epoch {epoch} ({phase}) {seconds:.1f} s, "
              f"{graphs()} graphs, test {accuracy:.1f}%", flush=True)  # fmt: skip
    return {"library": lib, **{k: settings[k] for k in ("dtype", "mode")}, "epochs": epochs}


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dtype and mode: each library's unfreeze epoch, steady epoch and graphs, and vggnet / torchvision."""
    rows = []
    for key in sorted({(r["dtype"], r["mode"]) for r in runs}):
        found = {r["library"]: r for r in runs if (r["dtype"], r["mode"]) == key}
        row: dict[str, Any] = {"dtype": key[0], "mode": key[1]}
        for lib, run in found.items():
            epochs = run["epochs"]
            row[lib] = {
                "unfreeze_s": epochs[1]["seconds"] if len(epochs) > 1 else None,
                "steady_s": epochs[-1]["seconds"] if len(epochs) > 2 else None,
                "graphs": epochs[-1]["graphs"],
            }
        if len(found) == 2 and row["torchvision"]["unfreeze_s"]:
            row["unfreeze_ratio"] = round(row["vggnet"]["unfreeze_s"] / row["torchvision"]["unfreeze_s"], 2)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny data, three epochs, the eager backend")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), help="default fp32 bf16 (fp32 with --smoke)")
    parser.add_argument("--modes", nargs="+", choices=("compiled", "eager"), default=["compiled", "eager"])
    parser.add_argument("--epochs", type=int, default=4, help="default 4 (3 with --smoke)")
    parser.add_argument("--head", choices=("vgg", "gap"), help="default vgg (gap with --smoke)")
    parser.add_argument("--backend", help="torch.compile backend (default inductor; eager with --smoke)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--budget-s", type=float, help="stop starting runs after this many seconds")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder of the JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    settings = {"batch": 32 if args.smoke else 64, "epochs": 3 if args.smoke else args.epochs,
                "backend": args.backend or ("eager" if args.smoke else "inductor"),
                "head": args.head or ("gap" if args.smoke else "vgg")}  # fmt: skip
    data = tuple(t.to(device) for t in digits(96 if args.smoke else None, 32 if args.smoke else None))
    budget = Budget(args.budget_s)
    plan = [{"library": lib, "dtype": dtype, "mode": mode}
            for dtype in args.dtypes or (["fp32"] if args.smoke else list(DTYPES)) for mode in args.modes
            for lib in LIBRARIES]  # fmt: skip
    results: dict[str, Any] = {
        **environment(device), "suite": "compile", "smoke": args.smoke, **settings, "budget_s": args.budget_s,
        "images": {"train": len(data[0]), "test": len(data[2])}, "complete": False, "runs": [],
        "pending": list(plan), "skipped": budget.skipped,
    }  # fmt: skip
    name = "compile-smoke" if args.smoke else "compile"
    for run in plan:
        results["pending"].remove(run)  # what a killed run lacks is what is left here
        if budget.skip(**run):
            continue
        model = models(device, settings["head"])[run["library"]]
        results["runs"].append(one_run(run["library"], model, data, {**settings, **run}))
        results["summary"] = summary(results["runs"])
        save_results(name, results, args.out)
    results["summary"] = summary(results["runs"])
    results["complete"] = True
    path = save_results(name, results, args.out)
    for row in results["summary"]:
        print(row)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
