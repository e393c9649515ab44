"""Image inputs at scale: which files to read, and a Dataset that decodes them in DataLoader workers.

- `list_images` expands what a user names (files, folders searched recursively, glob patterns, a list
  file, `-` for a list on stdin) into one ordered list of paths, each once.
- `labelled_images` reads a labelled folder: an ImageFolder (`DATA/<class>/...`, class index = sorted
  folder order or the position in given class names) or ImageNet's validation layout (synset folders
  `n01440764/...` mapped to the 1000 indices through `imagenet_synsets()`).
- `ImageFolder` is the labelled training folder `finetune` reads: `root/<class>/<image>` (the images
  directly in each class folder), every class present, items `(transform(image), class index)`, and
  a stratified seeded `split` for validation. An image that cannot be read stops it, naming the file.
  `train_and_val` is fine-tuning's DATA: its `train/` and `val/` (or a split of `train/`), checked.
- `ImageFiles` yields `(index, tensor)` for an image it could read and `(index, message)` for one it
  could not, so that a corrupt file is reported instead of ending the run; `collate` batches them.
- `shard` is rank r's share of N items under torchrun: r, r + world, ... (no padding, none twice).
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import IO, Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import Dataset

from vggnet.data.decode import gray_image, load_image
from vggnet.errors import BadImageError, NoImages, UsageError

__all__ = [
    "IMAGE_SUFFIXES",
    "Batch",
    "ImageFiles",
    "ImageFolder",
    "LabelledImages",
    "collate",
    "imagenet_synsets",
    "is_image",
    "labelled_images",
    "list_images",
    "shard",
    "train_and_val",
]

logger = logging.getLogger(__name__)

STDIN = "-"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


NUM_IMAGENET_CLASSES = 1000


@cache
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ImageNet WordNet ids in class-index order (n01440764, tench, is class 0); read on first use.

    Returns:
        The synsets, index i being class i.
    """
    text = resources.files("vggnet").joinpath("data/imagenet_synsets.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def is_image(path: Path) -> bool:
    """A file whose suffix is one of IMAGE_SUFFIXES (case-insensitive).

    Args:
        path: the path to look at (the file is not opened).

    Returns:
        True for an existing regular file with an image suffix.
    """
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _walk(folder: Path) -> list[Path]:
    """Images under `folder` at any depth, sorted by path; hidden files and folders skipped."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root, f) for f in sorted(files) if not f.startswith(".") and is_image(Path(root, f)))
    return sorted(found)


def _read_list(stream: IO[str]) -> list[str]:
    """One path per line; blank lines and lines starting with # skipped."""
    return [s for line in stream if (s := line.rstrip("\r\n").strip()) and not s.startswith("#")]


def list_images(
    sources: Sequence[str | os.PathLike[str]] = (),
    *,
    from_file: str | os.PathLike[str] | None = None,
    stdin: IO[str] | None = None,
) -> list[str]:
    """Every image named by `sources` and `from_file`, in the order named, each once.

    A source is a file (taken as it is, whatever its suffix), a folder (its images at any depth,
    sorted), a glob pattern (`photos/**/*.jpg`, matches sorted) or "-" (paths one per line from
    `stdin`, default sys.stdin). Blank lines and lines starting with # are skipped in lists.

    Args:
        sources: files, folders, glob patterns and "-".
        from_file: a text file of paths, one per line.
        stdin: where "-" reads paths from (default sys.stdin).

    Returns:
        The image paths, as strings, each once, in the order named.

    Raises:
        NoImages: (a FileNotFoundError and a ValueError) nothing is named, or a source matches nothing; the
            message names it.
    """
    named: list[str] = [os.fspath(s) for s in sources]
    if from_file is not None:
        list_path = Path(from_file)
        if not list_path.is_file():
            raise NoImages(f"--from-file {list_path}: no such file (expected a text file, one path per line)")
        with open(list_path, encoding="utf-8") as f:
            named.extend(_read_list(f))
    if not named:
        raise NoImages("no images named: give image files, folders, glob patterns, --from-file LIST or - for stdin")
    seen: set[str] = set()
    out: list[str] = []
    for source in _expand_stdin(named, stdin):
        for path in _expand(source):
            if path not in seen:
                seen.add(path)
                out.append(path)
    return out


def _expand_stdin(named: Iterable[str], stdin: IO[str] | None) -> Iterable[str]:
    for source in named:
        if source == STDIN:
            yield from _read_list(stdin if stdin is not None else sys.stdin)
        else:
            yield source


def _expand(source: str) -> list[str]:
    path = Path(source)
    if path.is_dir():
        found = _walk(path)
        if not found:
            raise NoImages(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the folder {source}, at any depth")
        return [str(p) for p in found]
    if path.exists():
        return [source]
    if any(c in source for c in "*?["):
        matches = sorted(p for p in glob.glob(source, recursive=True) if Path(p).is_file())
        if not matches:
            raise NoImages(f"no files match {source!r}")
        return matches
    raise NoImages(f"{source}: no such image file, folder or glob pattern")


# --- labelled folders ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledImages:
    """Image paths with their class indices, and the names of all the classes the indices refer to.

    Attributes:
        paths: the images, class by class, sorted within a class.
        targets: the class index of each image.
        classes: index -> name; its length is the number of outputs the model must have.
        layout: "classes" (folders named after given classes), "imagenet" (synsets) or "sorted".
    """

    paths: list[str]
    targets: list[int]
    classes: list[str]  # index -> name; len(classes) is the number of classes the model must output
    layout: str  # "classes" (folders named after given classes), "imagenet" (synsets) or "sorted"


def labelled_images(
    root: str | os.PathLike[str], classes: Sequence[str] | None = None, num_classes: int | None = None
) -> LabelledImages:
    """The images of `root/<class>/...` (at any depth below the class folder) with their class index.

    The index of a folder is, in this order of preference: its position in `classes` (the names a
    fine-tuned checkpoint stores) when every folder is one of them; its ImageNet index when every
    folder is an ImageNet synset (`n01440764` ...) and the model has 1000 outputs; else its position
    in the sorted folder names, which must then be `num_classes` many.

    Args:
        root: the folder holding one folder per class.
        classes: the model's class names, in output order, if it has any.
        num_classes: the model's number of outputs, if known.

    Returns:
        The images with their class indices and the class names.

    Raises:
        NoImages: `root` is not a folder.
        UsageError: no class folders, no images, or class folders that fit neither `classes`, ImageNet nor
            `num_classes`.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise NoImages(f"{folder}: no such folder (expected {folder}/<class>/<images>)")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise UsageError(f"{folder} has no class folders; expected {folder}/<class>/<image files>")
    synsets = imagenet_synsets()
    if classes is not None and set(names) <= set(classes):
        index = {name: list(classes).index(name) for name in names}
        all_classes, layout = list(classes), "classes"
    elif set(names) <= set(synsets) and num_classes in (None, NUM_IMAGENET_CLASSES):
        position = {s: i for i, s in enumerate(synsets)}
        index = {name: position[name] for name in names}
        known = classes is not None and len(classes) == NUM_IMAGENET_CLASSES
        all_classes, layout = (list(classes) if known and classes is not None else list(synsets)), "imagenet"
    elif num_classes is None or len(names) == num_classes:
        index = {name: i for i, name in enumerate(names)}
        all_classes, layout = names, "sorted"
    else:
        raise UsageError(
            f"{folder} has {len(names)} class folders ({_first(names)}) but the model has {num_classes} outputs, "
            f"and the folders are neither among its class names ({_first(classes or [])}) nor ImageNet synsets "
            f"(n01440764, ...); give a model with {len(names)} outputs, or name the folders after its classes"
        )
    paths: list[str] = []
    targets: list[int] = []
    for name in names:
        found = _walk(folder / name)
        paths.extend(str(p) for p in found)
        targets.extend([index[name]] * len(found))
    if not paths:
        raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders of {folder}")
    return LabelledImages(paths, targets, all_classes, layout)


def _first(items: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "") if items else "none"


class ImageFolder(Dataset[tuple[torch.Tensor, int]]):
    """`root/<class>/<image>` read with Pillow; items are (transform(image), class index).

    A class without images is a `UsageError` (a ValueError) naming it. An image Pillow cannot read raises
    naming its path when it is read: nothing is skipped silently.

    Args:
        root: the folder holding one folder per class.
        transform: what turns a PIL image into a tensor (a preset); needed before items are read.
        classes: the class order, and which folders must exist; by default the sorted folder names.
        gray: read the images as luminance ("L"), as a 1-channel preset sees them.

    Raises:
        FileNotFoundError: `root` is not a folder.
        UsageError: the class folders are not `classes`, there are none, or one holds no image.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[Any], torch.Tensor] | None = None,
        classes: Sequence[str] | None = None,
        gray: bool = False,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such folder (expected one folder per class inside)")
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        self.classes = list(classes) if classes is not None else found
        if sorted(self.classes) != found:
            raise UsageError(f"{self.root} has the class folders {found}, expected {sorted(self.classes)}")
        if not self.classes:
            raise UsageError(f"{self.root} has no class folders; expected {self.root}/<class>/<image files>")
        self.samples = [
            (path, index)
            for index, name in enumerate(self.classes)
            for path in sorted((self.root / name).iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
        ]
        empty = [name for i, name in enumerate(self.classes) if not any(t == i for _, t in self.samples)]
        if empty:
            raise UsageError(
                f"no images ({', '.join(IMAGE_SUFFIXES)}) in {self.root} for the classes {empty}; "
                "add images or remove the empty folders"
            )
        self.transform = transform
        self.gray = gray

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        try:
            image = load_image(path)
            if self.gray:
                image = gray_image(image)  # the conversion a gray preset applies at prediction time
        except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError... for a broken file
            raise UsageError(f"cannot read the image {path}: {err}; remove or replace it") from err
        if self.transform is None:
            raise UsageError("this ImageFolder has no transform; pass one, e.g. ImageClassification(crop_size=224)")
        return self.transform(image), target

    def targets(self) -> list[int]:
        """The class index of every image, in order.

        Returns:
            One index per item.
        """
        return [t for _, t in self.samples]

    def split(self, fraction: float, seed: int = 0) -> tuple[ImageFolder, ImageFolder]:
        """(rest, held out): `fraction` of each class's images held out (at least one), chosen with `seed`.

        Args:
            fraction: the share of each class to hold out, between 0 and 1 (exclusive).
            seed: seeds the choice: the same seed, the same split.

        Returns:
            Two folders over the same files and transform: the rest, and the held-out images.

        Raises:
            UsageError: `fraction` is out of range, or a class has fewer than 2 images.
        """
        if not 0 < fraction < 1:
            raise UsageError(f"the validation share must be between 0 and 1, e.g. 0.2, got {fraction!r}")
        generator = torch.Generator().manual_seed(seed)
        held: list[tuple[Path, int]] = []
        for index, name in enumerate(self.classes):
            own = [s for s in self.samples if s[1] == index]
            if len(own) < 2:
                raise UsageError(f"{self.root / name} has {len(own)} image(s): a split needs at least 2 a class")
            order = torch.randperm(len(own), generator=generator).tolist()
            n = min(len(own) - 1, max(1, round(len(own) * fraction)))
            held += [own[i] for i in sorted(order[:n])]
        chosen = set(held)
        return self._with([s for s in self.samples if s not in chosen]), self._with(held)

    def _with(self, samples: list[tuple[Path, int]]) -> ImageFolder:
        subset = object.__new__(ImageFolder)
        subset.__dict__.update(self.__dict__)
        subset.samples = samples
        return subset

    def with_transform(self, transform: Callable[[Any], torch.Tensor]) -> ImageFolder:
        """The same images through another transform.

        Args:
            transform: the new transform (a preset).

        Returns:
            A new folder; this one is unchanged.
        """
        copy = self._with(self.samples)
        copy.transform = transform
        return copy


def train_and_val(
    data: Path, val_split: float | None = None, seed: int = 0, *, gray: bool = False
) -> tuple[ImageFolder, ImageFolder]:
    """DATA/train and DATA/val (or `val_split` of each class of DATA/train, chosen with `seed`), no transform yet.

    The layout is all checked here, so that `finetune` refuses a bad DATA before any weights are read.

    Args:
        data: the folder holding train/ (and val/).
        val_split: without val/, the share of each class of train/ to hold out.
        seed: seeds that choice.
        gray: read the images as luminance.

    Returns:
        (train, val) folders, val with train's classes.

    Raises:
        FileNotFoundError: train/ is missing, or val/ without `val_split`.
        UsageError: both val/ and `val_split`, or a folder that `ImageFolder` refuses.
    """
    if not (data / "train").is_dir():
        raise FileNotFoundError(
            f"{data}/train: no such folder, so no class folders; expected {data}/train/<class>/<images> and "
            f"{data}/val/<class>/<images> "
            "(or only train/ with val_split=0.2 / --val-split 0.2)"
        )
    train = ImageFolder(data / "train", gray=gray)
    has_val = (data / "val").is_dir()
    if val_split is not None:
        if has_val:
            raise UsageError(f"{data}/val exists and val_split={val_split} was given; drop one of them")
        return train.split(val_split, seed)
    if not has_val:
        raise FileNotFoundError(
            f"{data}/val: no such folder; add {data}/val/<class>/<images> or hold out a share of train/ with "
            "val_split=0.2 (--val-split 0.2)"
        )
    return train, ImageFolder(data / "val", classes=train.classes, gray=gray)


# --- decoding in workers -------------------------------------------------------------------------


class ImageFiles(Dataset[tuple[int, torch.Tensor | str]]):
    """Item i is `(i, transform(load_image(paths[i])))`, or `(i, "why it failed")` for an unreadable file.

    Decoding happens in the DataLoader's workers; a bad file is reported, not fatal.

    Args:
        paths: the image files.
        transform: the preset each image goes through.
    """

    def __init__(self, paths: Sequence[str], transform: nn.Module) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | str]:
        try:
            x: torch.Tensor = self.transform(load_image(self.paths[index]))
        except BadImageError as err:  # the path is said by whoever reports it: the problem alone
            return index, err.problem
        except (OSError, ValueError, SyntaxError) as err:  # PIL: UnidentifiedImageError is an OSError
            return index, str(err) or type(err).__name__
        return index, x


class Batch(NamedTuple):
    """What `collate` makes of a list of `ImageFiles` items.

    Attributes:
        indices: the indices of the images in `images`, in order.
        images: (N, C, H, W), None when no image of the batch could be read.
        errors: (index, message) of the images that could not be read.
    """

    indices: list[int]
    images: torch.Tensor | None
    errors: list[tuple[int, str]]


def collate(items: Sequence[tuple[int, torch.Tensor | str]]) -> Batch:
    """Stack the images that were read; keep the failures apart.

    Args:
        items: `ImageFiles` items: (index, image tensor) or (index, error message).

    Returns:
        The batch.
    """
    good = [(i, x) for i, x in items if isinstance(x, torch.Tensor)]
    errors = [(i, x) for i, x in items if isinstance(x, str)]
    images = torch.stack([x for _, x in good]) if good else None
    return Batch([i for i, _ in good], images, errors)


def shard(n: int, rank: int, world: int) -> range:
    """Rank `rank`'s share of n items: rank, rank + world, ...; the shares cover 0..n-1 once each.

    Args:
        n: the number of items.
        rank: this process's rank.
        world: the number of processes.

    Returns:
        The indices this rank takes (no padding: shares differ by at most one).
    """
    return range(rank, n, world)
