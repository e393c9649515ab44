"""Loopback download throughput: vggnet.hub.fetch (hashing while streaming) against a plain copy.

    python benchmarks/bench_download.py [--mib 528] [--repeat 3] [--workdir DIR] [--out DIR] [--smoke]

A file of random bytes (default 528 MiB, the size of vgg16's checkpoint) is served over
127.0.0.1 by a small HTTP server in its own process (os.sendfile, so the server costs the client
as little as possible). Measured with the page cache warm:

- hub.fetch: the full path (streamed with requests into a private partial file, SHA-256 computed
  as the bytes arrive, full digest compared, renamed into place, stamp written);
- plain download: the same bytes with requests into a file, no hashing, no verification;
- SHA-256 alone over the file on disk, and a local `shutil.copyfile`, for scale.

The cases run interleaved, round after round, so that other load on the machine hits them alike;
the best and the median of the rounds are reported.

With --rate the server holds a given speed, as a real link would: then the client has a core to
spare and the hash should vanish into the transfer time. The point (issue 3): hashing while
streaming must cost almost nothing against a plain download.
Figures are printed and saved to benchmarks/results/bench_download.json; nothing is asserted.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import work_folder

HERE = Path(__file__).resolve().parent
FETCH = "hub.fetch (hash + verify + rename + stamp)"
PLAIN = "plain requests download (no hash)"
HASH = "SHA-256 alone of the file on disk"


class _SendfileHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root = Path(".")
    rate = 0.0  # bytes per second; 0: as fast as loopback goes

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        began = time.monotonic()
        with open(path, "rb") as f:
            offset = 0
            while offset < size:
                step = size - offset if not self.rate else min(size - offset, 4 << 20)
                offset += os.sendfile(self.connection.fileno(), f.fileno(), offset, step)
                if self.rate:
                    time.sleep(max(0.0, offset / self.rate - (time.monotonic() - began)))


def serve(root: Path, port_file: Path, rate: float) -> None:
    _SendfileHandler.root = root
    _SendfileHandler.rate = rate
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SendfileHandler)
    port_file.write_text(str(httpd.server_address[1]))
    httpd.serve_forever()


def plain_download(url: str, dest: Path) -> None:
    import requests

    with requests.get(url, stream=True, timeout=(10, 30), headers={"Accept-Encoding": "identity"}) as r:
        r.raise_for_status()
        with open(dest, "wb") as f:
            for chunk in r.iter_content(1 << 20):
                f.write(chunk)


def interleaved(
    cases: dict[str, Callable[[], object]], repeat: int, cleanup: Callable[[], None]
) -> dict[str, list[float]]:
    """Run the cases in turn, `repeat` rounds, so that load from other processes hits them alike."""
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeat):
        for name, fn in cases.items():
            cleanup()
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    cleanup()
    return times


def main() -> int:
    args = _parser().parse_args()
    if args.serve:
        root, port_file = args.serve
        serve(root, port_file, rate=args.rate * 2**20)
        return 0
    if args.smoke:
        args.mib, args.repeat = 16, 1
    with work_folder(args.workdir, "vggnet-bench-download-") as workdir:
        source = _random_file(workdir / "served", args.mib)
        runs = _measure(source, workdir, args.rate, args.repeat)
        results = _report(runs, source.stat().st_size, args.rate, args.repeat)
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / (f"bench_download-{args.rate:.0f}MiBps.json" if args.rate else "bench_download.json")
    saved.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"saved {saved}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=528, help="size of the served file")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for bench_download[-RATE].json")
    parser.add_argument("--smoke", action="store_true", help="a 16 MiB file, one round (CI)")
    parser.add_argument("--rate", type=float, default=0, help="MiB/s the server sends at (default: unlimited)")
    parser.add_argument("--serve", nargs=2, type=Path, metavar=("ROOT", "PORT_FILE"), help=argparse.SUPPRESS)
    return parser


def _random_file(served: Path, mib: int) -> Path:
    """`mib` MiB of random bytes in `served` (kept from an earlier run when it has the size)."""
    served.mkdir(parents=True, exist_ok=True)
    source = served / f"random-{mib}MiB.bin"
    if not source.exists() or source.stat().st_size != mib << 20:
        with open(source, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
    return source


def _measure(source: Path, workdir: Path, rate: float, repeat: int) -> dict[str, list[float]]:
    """Seconds of each case in each round, `source` served over 127.0.0.1 by a child process at `rate` MiB/s."""
    from vggnet import hub

    out = workdir / "out"
    out.mkdir(exist_ok=True)
    digest = hub.verify_file(source)  # also warms the page cache
    port_file = workdir / "port"
    port_file.unlink(missing_ok=True)
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(source.parent), str(port_file), "--rate", str(rate)]
    )
    try:
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text()}/{source.name}"

        def clean() -> None:
            for p in out.iterdir():
                p.unlink()

        size = source.stat().st_size
        cases: dict[str, Callable[[], object]] = {
            FETCH: lambda: hub.fetch(url, sha256=digest, size=size, model_dir=out, progress=False),
            PLAIN: lambda: plain_download(url, out / source.name),
            HASH: lambda: hub.verify_file(source),
            "local shutil.copyfile": lambda: shutil.copyfile(source, out / source.name),
        }
        return interleaved(cases, repeat, clean)
    finally:
        server.terminate()
        server.wait()


def _report(runs: dict[str, list[float]], size: int, rate: float, repeat: int) -> dict[str, Any]:
    """Print the figures of the rounds; return them as the JSON file holds them."""
    mib = size / 2**20
    best = {k: min(v) for k, v in runs.items()}
    median = {k: statistics.median(v) for k, v in runs.items()}
    limit = f"at most {rate:.0f} MiB/s" if rate else "unthrottled"
    print(f"{mib:.0f} MiB over 127.0.0.1 ({limit}), {repeat} rounds ({os.cpu_count()} CPUs): best / median")
    for k in runs:
        print(
            f"  {k:45s} {best[k]:6.2f} s {mib / best[k]:6.0f} MiB/s  / {median[k]:6.2f} s {mib / median[k]:6.0f} MiB/s"
        )
    print(
        f"  hub.fetch against the plain download: {best[FETCH] / best[PLAIN] - 1:+.1%} (best), "
        f"{median[FETCH] / median[PLAIN] - 1:+.1%} (median)"
    )
    floor = max(best[PLAIN], best[HASH])
    print(f"  hub.fetch against max(plain download, SHA-256 alone), the floor of a hashing download: "
          f"{best[FETCH] / floor - 1:+.1%} (best)")  # fmt: skip
    if not rate:
        print(f"  unthrottled loopback leaves no core to spare on {os.cpu_count()} CPUs; try --rate for a real link")
    return {
        "fetch_over_floor_best": best[FETCH] / floor,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "bytes": size,
        "server_rate_mib_s": rate or None,
        "runs_s": runs,
        "best_s": best,
        "median_s": median,
        "mib_per_s_best": {k: mib / s for k, s in best.items()},
        "fetch_over_plain_best": best[FETCH] / best[PLAIN],
        "fetch_over_plain_median": median[FETCH] / median[PLAIN],
    }


if __name__ == "__main__":
    sys.exit(main())
