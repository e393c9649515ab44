"""Warm-cache load of full-size vgg16 weights: vggnet against the torchvision-style path.

    python benchmarks/bench_load.py [--repeat 3] [--workdir DIR] [--out DIR] [--smoke]

Both paths read the same generated, seeded, full-size vgg16 checkpoint (~528 MiB), in each torch
serialization format:

- vggnet: `vggnet.vgg16(weights=record)` with the file already in the cache and stamped (offline,
  so the network is never touched); the model is built on the meta device and the tensors of the
  memory-mapped file are assigned. A legacy-format file goes through its one-time zip copy.
- torchvision-style: a randomly initialised model (torchvision's `vgg16()` when torchvision is
  installed, else `vggnet.vgg16()`, the same initialisation), `torch.load(weights_only=True)`,
  `load_state_dict`.

Every measurement runs in a fresh subprocess after `import torch` and the model code: wall time of
the call, and the peak resident set size during it (the kernel's VmHWM, reset just before the call,
minus the RSS before it). With mmap the file's pages are read on first use, so the time and peak
after touching every parameter once (a sum over each) are reported too. The page cache is warm for
both paths. Targets (issue 2): vggnet at most 5% of the torchvision-style time and at most 1.3x the
file size in peak memory. Figures are printed and saved to benchmarks/results/bench_load.json;
nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from harness import work_folder

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, os, sys, time
import torch

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass

which, path, sha256 = sys.argv[1:4]
if which == "vggnet":
    import vggnet
    record = vggnet.Weights(url="https://example.invalid/models/" + os.path.basename(path), sha256=sha256)
    build = lambda: vggnet.vgg16(weights=record, progress=False)
else:
    try:
        from torchvision.models import vgg16 as random_vgg16
        impl = "torchvision"
    except ImportError:
        from vggnet import vgg16 as random_vgg16
        impl = "vggnet.vgg16"
    def build():
        model = random_vgg16()
        model.load_state_dict(torch.load(path, weights_only=True))
        return model
before = status("VmRSS")
reset_peak()
t0 = time.perf_counter()
model = build()
t1 = time.perf_counter()
peak_build = status("VmHWM") - before
with torch.no_grad():
    for p in model.parameters():
        p.sum()
t2 = time.perf_counter()
peak_touch = status("VmHWM") - before
print(json.dumps({"build_s": t1 - t0, "touch_s": t2 - t0, "peak_build": peak_build, "peak_touch": peak_touch,
                  "impl": impl if which != "vggnet" else "vggnet.vgg16"}))
"""


def generate(workdir: Path) -> dict[str, Path]:
    """vgg16-sized seeded checkpoints in both formats (reused when already there)."""
    paths = {"zip": workdir / "bench-vgg16-zip.pth", "legacy": workdir / "bench-vgg16-legacy.pth"}
    if all(p.exists() for p in paths.values()):
        return paths
    import vggnet

    with torch.device("meta"):
        layout = vggnet.vgg16().state_dict()
    g = torch.Generator().manual_seed(16)
    state = {k: torch.randn(v.shape, generator=g).mul_(0.01) for k, v in layout.items()}
    for fmt, path in paths.items():
        torch.save(state, path, _use_new_zipfile_serialization=fmt == "zip")
    return paths


def run_child(which: str, path: Path, sha256: str, env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, which, str(path), sha256], env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"{which} on {path.name} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    args = _parser().parse_args()
    if args.smoke:
        args.repeat = 1

    results: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "repeat": args.repeat,
    }  # fmt: skip
    with work_folder(args.workdir, "vggnet-bench-load-") as workdir:
        cache = workdir / "cache"
        cache.mkdir(exist_ok=True)
        files = generate(workdir)
        env = {**os.environ, "VGGNET_HOME": str(cache), "VGGNET_OFFLINE": "1"}
        for fmt, src in files.items():
            results[fmt] = figures = _measure(src, cache, env, args.repeat)
            _print_figures(fmt, figures, args.repeat)
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "bench_load.json"
    saved.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"saved {saved}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per path and format")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the checkpoints and cache go (default: a temp dir)"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for bench_load.json")
    parser.add_argument("--smoke", action="store_true", help="one round (CI); the file stays full-size")
    return parser


def _measure(src: Path, cache: Path, env: dict[str, str], repeat: int) -> dict[str, Any]:
    """One format's figures: vggnet's first use of `src`, then `repeat` fresh processes of each path."""
    from vggnet.hub import verify_file

    size = src.stat().st_size
    digest = verify_file(src)  # the file's SHA-256, hashed afresh
    cached = cache / src.name
    if not cached.exists():
        os.link(src, cached)
    # First use: hash + stamp (+ the zip copy for a legacy file), then every later call is warm.
    for stale in cache.glob(src.name + ".*"):
        stale.unlink()
    t = time.perf_counter()
    first = run_child("vggnet", src, digest, env)
    first_call = time.perf_counter() - t
    runs: dict[str, list[dict[str, float]]] = {"vggnet": [], "torchvision-style": []}
    for _ in range(repeat):
        runs["vggnet"].append(run_child("vggnet", src, digest, env))
        runs["torchvision-style"].append(run_child("torchvision", src, digest, env))
    summary = {
        which: {
            key: statistics.median(r[key] for r in rs) for key in ("build_s", "touch_s", "peak_build", "peak_touch")
        }
        | {"impl": rs[0]["impl"]}
        for which, rs in runs.items()
    }
    v, tv = summary["vggnet"], summary["torchvision-style"]
    return {
        "file_bytes": size,
        "first_use": {"build_s": first["build_s"], "process_s": first_call},
        "median": summary,
        "runs": runs,
        "time_ratio": v["build_s"] / tv["build_s"],
        "time_ratio_after_touch": v["touch_s"] / tv["touch_s"],
        "peak_over_file": v["peak_build"] / size,
        "peak_over_file_after_touch": v["peak_touch"] / size,
        "torchvision_peak_over_file": tv["peak_build"] / size,
    }


def _print_figures(fmt: str, r: dict[str, Any], repeat: int) -> None:
    mib = 2**20
    print(f"== {fmt} format, {r['file_bytes'] / mib:.1f} MiB file, median of {repeat} fresh processes")
    print(f"  first use (hash + stamp{' + zip copy' if fmt == 'legacy' else ''}): {r['first_use']['build_s']:.2f} s")
    for which, s in r["median"].items():
        print(
            f"  {which:18s} build {s['build_s'] * 1000:8.1f} ms  peak {s['peak_build'] / mib:7.1f} MiB   "
            f"| + touch every weight {s['touch_s'] * 1000:8.1f} ms  "
            f"peak {s['peak_touch'] / mib:7.1f} MiB  ({s['impl']})"
        )
    print(
        f"  vggnet / torchvision-style time: {r['time_ratio']:.1%} (target <= 5%), "
        f"after touching: {r['time_ratio_after_touch']:.1%}; "
        f"vggnet peak / file: {r['peak_over_file']:.2f}x (target <= 1.3x), "
        f"after touching {r['peak_over_file_after_touch']:.2f}x"
    )


if __name__ == "__main__":
    sys.exit(main())
