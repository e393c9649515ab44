"""`vggnet convert`: any weights source -> a state dict -> a file in the format its suffix names, verified.

The source follows the loader's rules (`checkpoint.SOURCE_RULES`: a record name, a file, a URL, an
hf-hub: name); it is fetched and verified as the loader would, then read without building a model,
so a Keras `_notop` file converts to its `features` alone. The written file is read back and compared
tensor by tensor (`formats.write_state_dict`), and its SHA-256 returned, ready to pin.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from vggnet.data.outputs import check_output
from vggnet.errors import UsageError
from vggnet.hub import open_verified
from vggnet.models.checkpoint import hub_state_dict
from vggnet.models.layouts import Layout, from_timm, layout_of, read_state_dict, write_state_dict
from vggnet.models.sources import Source, WeightsSource, classify

__all__ = ["Converted", "convert", "read_source"]


@dataclass(frozen=True)
class Converted:
    """What `convert` wrote: where, its SHA-256 and size, the layout and the number of tensors.

    Attributes:
        source: the weights as named (a record's name, a file, a URL).
        path: the file written.
        sha256: its full SHA-256, ready to pin.
        size: its size in bytes.
        layout: "vggnet" or "timm": the keys it holds.
        tensors: how many tensors it holds.
    """

    source: str
    path: Path
    sha256: str
    size: int
    layout: Layout
    tensors: int


def read_source(
    weights: WeightsSource, *, sha256: str | None = None, progress: bool = True
) -> tuple[Source, dict[str, torch.Tensor]]:
    """The verified state dict, in vggnet's layout, of any weights source but "random".

    Args:
        weights: a record, its name, a file, a URL or an "hf-hub:" name.
        sha256: the digest (or its first 8+ hex digits) a file or URL must have.
        progress: show a progress bar while downloading.

    Returns:
        (what the source is, its state dict).

    Raises:
        UsageError: random weights, or `sha256` given for a record (which carries its own).
        ChecksumError: the file does not have the digest.
    """
    source = classify(weights)
    if source.kind == "random":
        raise UsageError("there is nothing to convert in random weights; name a record, a file, a URL or hf-hub: name")
    if source.kind == "record":
        if sha256 is not None:
            raise UsageError("sha256 is for a checkpoint file or URL; a record carries its own digest")
        assert source.record is not None
        state = source.record.get_state_dict(progress=progress)
        return source, from_timm(state) if layout_of(state) == "timm" else state
    if source.kind == "hub":
        return source, hub_state_dict(source.text, sha256=sha256)[1]
    where = Path(source.text) if source.kind == "file" else source.text
    with open_verified(where, sha256=sha256, progress=progress) as verified:  # the open file checked is the one read
        return source, read_state_dict(verified)


def convert(
    weights: WeightsSource,
    dst: str | os.PathLike[str],
    *,
    layout: Layout = "vggnet",
    sha256: str | None = None,
    progress: bool = True,
) -> Converted:
    """Write the weights `weights` names to `dst` (.safetensors, or .pth/.pt/.bin for PyTorch's zip format).

    Args:
        weights: any weights source but "random" (the loader's rules).
        dst: the file to write; its suffix names the format. A regular file there is replaced whole.
        layout: the keys `dst` gets: "vggnet" (torchvision's) or "timm".
        sha256: the digest (or 8+ hex digits) a file or URL source must have.
        progress: show a progress bar while downloading.

    Returns:
        What was written: where, its SHA-256 (of the bytes read back), size, layout, tensor count.

    Raises:
        OutputPathError: `dst` is a folder, a symbolic link, a FIFO or a device (checked before anything is read).
        UsageError: random weights, or a digest given for a record.
    """
    check_output(dst)
    source, state = read_source(weights, sha256=sha256, progress=progress)
    digest = write_state_dict(state, dst, layout=layout, metadata={"source": source.label or source.text})
    path = Path(dst)
    return Converted(source.label or source.text, path, digest, path.stat().st_size, layout, len(state))
