"""Download every official checkpoint, compute its full SHA-256 and byte size, print the values to pin.

A maintainer tool: seven of the nine official records only know the 8-hex prefix in the file name
(and some only a size in MiB). Run it once with internet access, then copy the printed `sha256=` and
`size=` values into `vggnet/weights.py` and the table in `weights/README.md`:

    python weights/pin_digests.py                    # all nine files, from download.pytorch.org
    python weights/pin_digests.py --only vgg16 vgg19_bn --json pinned.json
    python weights/pin_digests.py --base http://mirror.example/models/ --dir /tmp/vgg

Files go through `vggnet.hub._fetching.fetch` (streamed, prefix-checked while downloading, resumable), into
--dir (default: the vggnet cache, so the download is not wasted). Each file is then hashed again
here, independently of the hub's stamp. The exit status is 1 if any file failed or disagreed
with its record.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from vggnet.hub import _fetching as hub
from vggnet.models.weights import OFFICIAL_BASE, WEIGHTS_ENUMS, Weights


@dataclass(frozen=True)
class Pinned:
    member: str
    file: str
    url: str
    sha256: str
    size: int
    record_sha256: str
    record_size: int | None
    record_mib: float | None

    @property
    def agrees(self) -> bool:
        """The full digest extends the record's digest, and the size matches the record's size or MiB figure."""
        size_ok = self.record_size == self.size if self.record_size is not None else True
        mib_ok = self.record_mib is None or abs(self.size / 2**20 - self.record_mib) <= 0.0005 + 1e-9
        return self.sha256.startswith(self.record_sha256) and size_ok and mib_ok


def official_records() -> list[tuple[str, Weights]]:
    """(name like "VGG16_Weights.IMAGENET1K_V1", record) for every official file, aliases skipped."""
    return [(str(m), m.value) for enum in WEIGHTS_ENUMS.values() for m in enum if m.value.is_official]


def sha256_and_size(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def pin(
    records: Iterable[tuple[str, Weights]],
    *,
    base: str = OFFICIAL_BASE,
    folder: Path | None = None,
    progress: bool = True,
) -> tuple[list[Pinned], list[str]]:
    """Fetch each record's file from `base` + its name; return what was measured and the failures."""
    pinned: list[Pinned] = []
    failures: list[str] = []
    for member, record in records:
        url = base.rstrip("/") + "/" + record.file_name if record.is_official else record.url
        try:
            path = hub.fetch(url, sha256=record.sha256, size=record.size, model_dir=folder, progress=progress)
        except (OSError, ValueError, hub.ChecksumError) as err:
            failures.append(f"{member}: {err}")
            continue
        digest, size = sha256_and_size(path)
        pinned.append(Pinned(member, record.file_name, url, digest, size, record.sha256, record.size, record.file_size))
    return pinned, failures


def report(pinned: Sequence[Pinned]) -> str:
    lines = []
    for p in pinned:
        status = "agrees with the record" if p.agrees else "DISAGREES with the record"
        lines.append(f"{p.member}  {p.file}  {status}")
        lines.append(f'    sha256="{p.sha256}", size={p.size:_},  # {p.size / 2**20:.3f} MiB')
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--base", default=OFFICIAL_BASE, help="where the files are (URL or directory); default: %(default)s"
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to download them (default: the vggnet cache)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="builder names (vgg16) or file names to pin")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the measured values to FILE")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    records = official_records()
    if args.only:
        wanted = set(args.only)
        records = [(m, r) for m, r in records if r.file_name in wanted or r.file_name.split("-")[0] in wanted]
        if not records:
            valid = ", ".join(sorted({r.file_name.split("-")[0] for _, r in official_records()}))
            parser.error(f"--only matched nothing; use builder names ({valid}) or file names")
    pinned, failures = pin(records, base=args.base, folder=args.dir, progress=not args.quiet)
    print(report(pinned))
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(p) for p in pinned], indent=2) + "\n", encoding="utf-8")
    return 1 if failures or not all(p.agrees for p in pinned) else 0


if __name__ == "__main__":
    sys.exit(main())
