"""Keras weight files (.h5) read strictly as data: nothing outside the file, nothing larger than it should be.

HDF5 can make a dataset read bytes from elsewhere: an external raw file (an absolute path, or one relative to
the working directory), an external link, a soft link onto one, a virtual dataset over other files. It
also reads a dataset at whatever shape the file declares, and its deflate filter inflates a chunk with no
bound (a 794 KB file made plain h5py allocate 813 MB for a 4 KB dataset). h5py follows all of it silently.

`read_keras_layers` checks every object before a byte of its data is read:

- Only hard links are followed, one path component at a time (`H5Lget_info`; soft, external and
  user-defined links are refused, even a soft link that stays inside the file: Keras never writes one).
- Datasets must be compact, contiguous or chunked, with no external storage (`H5Pget_external_count`)
  and not virtual (`H5Pget_layout`).
- Values must be IEEE floats (16, 32 or 64 bits, either byte order): no compound, string, integer,
  opaque (numpy.void), reference or variable-length types.
- The shape must be the one the caller expects for that weight (`vggnet.models.layouts` gives each VGG
  layer's), and all weights together must fit `max_bytes`, before anything is read.
- Filters: deflate (gzip), shuffle and fletcher32 only, the standard lossless ones h5py and h5repack
  write. Their chunks are decoded here, not by HDF5, so inflating stops at the chunk's size. Everything
  else is refused: lzf (h5py's own) and szip (not in every build), which only HDF5 could decode, with
  no bound of ours; nbit and scale-offset (bit-packing, lossy); plugins (HDF5 would load a shared
  library to decode them). Keras itself writes no filter at all.
- Name attributes (`layer_names`, `weight_names`, the Keras 3 `name`) must be strings, read through a
  buffer of MAX_NAME + 1 bytes each (HDF5 converts variable-length strings into it), their number
  bounded; nothing else is enumerated.

HDF5 reads through a Python file object (h5py's "fileobj" driver), never by path: the caller passes the
very open file whose digest it has checked (`_loading.open_checked`), so what is parsed is what was
hashed. That alone prevents nothing (HDF5 still opens external raw files by path); the checks above do,
and none of them depends on the driver. What is left: bugs in the HDF5 C library itself, which parses
the file's metadata before any check here can run.

Every problem raises `BadKerasFileError`: one line naming the file, the object and the fix.
"""

from __future__ import annotations

import importlib
import os
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from math import prod
from pathlib import Path
from typing import IO, Any, NoReturn, TypeAlias

import numpy as np

from vggnet.errors import BadKerasFileError, MissingDependency
from vggnet.hub._files import open_read

__all__ = ["DEFAULT_MAX_BYTES", "Expected", "Shape", "read_keras_layers"]

Shape: TypeAlias = tuple[int | None, ...]
"""A weight's shape; None stands for any length along that axis (bounded by `max_bytes`)."""

Expected: TypeAlias = Mapping[str, Sequence[Shape]] | Callable[[str], Sequence[Shape] | None]
"""Layer name -> the shapes of its weights in Keras order (kernel, bias); None or absent: skip the layer."""

MAX_LAYERS = 1024  # layer names in a file, members of a group
MAX_WEIGHTS = 16  # weights of one layer
MAX_NAME = 256  # bytes in one layer or weight name
MAX_CHUNKS = 1 << 14  # chunks of one dataset; h5py and h5repack make chunks of up to 1 MiB
DEFAULT_MAX_BYTES = 2 << 30  # all weights read from one file; a float32 VGG19 with its top is 575 MB
DEFAULT_DTYPES = ("float16", "float32", "float64")

_RESAVE = "save it again with Keras (model.save_weights)"
_NOT_KERAS = "is it a Keras weights file?"


def read_keras_layers(
    source: str | os.PathLike[str] | IO[bytes],
    expected: Expected,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    dtypes: Collection[str] = DEFAULT_DTYPES,
    name: str | None = None,
) -> dict[str, list[np.ndarray]]:
    """Layer name -> its weights in Keras order, from a Keras .h5 file, reading nothing outside the file.

    Reads the legacy Keras 1/2 layout (root attribute `layer_names`, possibly split into `layer_names0`,
    `layer_names1`, ...; each layer group's `weight_names`; under `model_weights` in a whole-model .h5) and
    Keras 3's `.weights.h5` (`layers/<class name>/vars/0, 1, ...`, the layer's name in the `name`
    attribute of `vars`). Layers that `expected` does not name are skipped without reading their data.

    Args:
        source: A path, or a binary file object open for reading at any position (for example the one
            whose digest the caller has just checked); it is read from, never closed.
        expected: For each layer name, the shapes of its weights in Keras order, None for any length
            along an axis; a mapping, or a function returning None for layers to skip.
        max_bytes: The most bytes all the weights read may take together.
        dtypes: The float types allowed ("float16", "float32", "float64"), in either byte order; the
            arrays come back in native byte order.
        name: The file's name in error messages; default: the path, or the file object's `name`.

    Returns:
        Layer name -> its arrays, for the expected layers the file holds, in file order.

    Raises:
        BadKerasFileError: If the file is not HDF5, not in a Keras layout, damaged, or if anything in it
            points outside the file, is not a plain float array, or does not have the expected shape.
        OSError: If a path cannot be opened (FileNotFoundError, PermissionError, ...).
        MissingDependency: If h5py is not installed.
    """
    try:
        h5py = importlib.import_module("h5py")
    except ImportError as err:
        raise MissingDependency("Keras .h5 weight files need h5py: pip install 'vggnet[keras]'") from err
    if isinstance(source, (str, os.PathLike)):
        label = name or os.fspath(source)
        with open_read(Path(source), follow=True) as fileobj:  # HDF5 reads through this file object, never by path
            return _read(h5py, fileobj, _Reader(h5py, label, expected, max_bytes, dtypes))
    label = name or str(getattr(source, "name", "<file object>"))
    return _read(h5py, source, _Reader(h5py, label, expected, max_bytes, dtypes))


def _read(h5py: Any, fileobj: IO[bytes], reader: _Reader) -> dict[str, list[np.ndarray]]:
    try:
        with h5py.File(fileobj, "r") as f:
            return reader.layers(f.id)
    except BadKerasFileError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as err:
        reader.fail("", f"could not be read by HDF5 ({err})", f"the file is damaged or not HDF5; {_NOT_KERAS}", err)


class _Reader:
    """The checks and reads of one file; `fail` raises the one-line BadKerasFileError."""

    def __init__(self, h5py: Any, label: str, expected: Expected, max_bytes: int, dtypes: Collection[str]) -> None:
        self.h5py, self.label, self.max_bytes, self.left = h5py, label, max_bytes, max_bytes
        self.lookup = expected.get if isinstance(expected, Mapping) else expected
        t = h5py.h5t
        table = {
            "float16": (t.IEEE_F16LE, t.IEEE_F16BE),
            "float32": (t.IEEE_F32LE, t.IEEE_F32BE),
            "float64": (t.IEEE_F64LE, t.IEEE_F64BE),
        }
        self.types = [ftype for d in dtypes for ftype in table[d]]

    def fail(self, where: str, problem: str, fix: str = _NOT_KERAS, cause: BaseException | None = None) -> NoReturn:
        message = f"{self.label}: {where + ' ' if where else ''}{problem}; {fix}"
        message = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in message)  # one line, whatever the names
        raise BadKerasFileError(message) from cause

    # --- layouts ---------------------------------------------------------------------------------------

    def layers(self, root: Any) -> dict[str, list[np.ndarray]]:
        prefix = ""
        if root.links.exists(b"model_weights"):  # a whole model saved as .h5 keeps its weights there
            root, prefix = self.group(root, "model_weights", ""), "/model_weights"
        if self.h5py.h5a.exists(root, b"layer_names") or self.h5py.h5a.exists(root, b"layer_names0"):
            return self.legacy(root, prefix)
        if root.links.exists(b"layers"):
            return self.keras3(self.group(root, "layers", prefix), f"{prefix}/layers")
        self.fail(
            "",
            "is an HDF5 file but not Keras weights: it has neither a 'layer_names' attribute (Keras 1/2) "
            "nor a 'layers' group (Keras 3 .weights.h5)",
        )

    def legacy(self, root: Any, prefix: str) -> dict[str, list[np.ndarray]]:
        layers: dict[str, list[np.ndarray]] = {}
        names = self.names(root, "layer_names", prefix or "/")
        twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if twice is not None:
            self.fail(f"attribute {prefix or '/'}:layer_names", f"names layer {twice!r} twice", _RESAVE)
        for layer in names:
            shapes = self.lookup(layer)
            if shapes is None:
                continue  # not asked for: not even opened
            where = f"{prefix}/{layer}"
            group = self.group(root, layer, prefix)
            weights = self.names(group, "weight_names", where)
            self.count(where, layer, len(weights), shapes)
            if weights:
                layers[layer] = [
                    self.array(self.child(group, w, where), f"{where}/{w}", layer, i, shapes[i])
                    for i, w in enumerate(weights)
                ]
        return layers

    def keras3(self, group: Any, where: str) -> dict[str, list[np.ndarray]]:
        layers: dict[str, list[np.ndarray]] = {}
        seen: set[str] = set()
        for member in self.members(group, where, MAX_LAYERS):
            entry = self.child(group, member, where)
            here = f"{where}/{member}"
            if not isinstance(entry, self.h5py.h5g.GroupID) or not entry.links.exists(b"vars"):
                continue
            vars_, here = self.group(entry, "vars", here), f"{here}/vars"
            if not self.h5py.h5a.exists(vars_, b"name"):
                continue
            layer = self.strings(vars_, "name", here, scalar=True)[0]
            shapes = self.lookup(layer)
            if shapes is None:
                continue
            if layer in seen:
                self.fail(f"group {here}", f"is a second layer named {layer!r}", _RESAVE)
            seen.add(layer)
            count = len(self.members(vars_, here, MAX_WEIGHTS))
            self.count(here, layer, count, shapes)
            if count:
                layers[layer] = [
                    self.array(self.child(vars_, str(i), here), f"{here}/{i}", layer, i, shapes[i])
                    for i in range(count)
                ]
        return layers

    def count(self, where: str, layer: str, count: int, shapes: Sequence[Shape]) -> None:
        if count and count != len(shapes):
            self.fail(where, f"holds {count} weights for layer {layer!r}, which has {len(shapes)}")

    # --- links, groups, attributes ----------------------------------------------------------------------

    def child(self, group: Any, path: str, where: str) -> Any:
        """The object at `path` under `group`, following hard links only, one component at a time."""
        h5l = self.h5py.h5l
        for part in path.split("/"):
            raw, here = part.encode("utf8"), f"{where}/{part}"
            if part in ("", ".") or len(raw) > MAX_NAME or not isinstance(group, self.h5py.h5g.GroupID):
                self.fail(f"path {where}/{path}", "is not a plain path of groups")
            if not group.links.exists(raw):
                self.fail(here, "is missing")
            kind = group.links.get_info(raw).type
            if kind != h5l.TYPE_HARD:
                if kind == h5l.TYPE_EXTERNAL:
                    file, target = map(_text, group.links.get_val(raw))
                    what = f"is an external link to {target!r} in {file!r}"
                elif kind == h5l.TYPE_SOFT:
                    what = f"is a soft link to {_text(group.links.get_val(raw))!r}"
                else:
                    what = f"is a user-defined link (type {kind})"
                self.fail(here, what, f"vggnet reads weights only from inside the .h5 file, not via links: {_RESAVE}")
            group, where = self.h5py.h5o.open(group, raw), here
        return group

    def group(self, parent: Any, path: str, where: str) -> Any:
        """`child`, which must be a group."""
        found = self.child(parent, path, where)
        if not isinstance(found, self.h5py.h5g.GroupID):
            self.fail(f"{where}/{path}", "is not a group")
        return found

    def members(self, group: Any, where: str, limit: int) -> list[str]:
        """The names of a group's members, at most `limit` of them."""
        n = group.get_num_objs()
        if n > limit:
            self.fail(f"group {where}", f"has {n} members, more than the {limit} a Keras file has")
        names = [group.get_objname_by_idx(i) for i in range(n)]
        if any(len(v) > MAX_NAME for v in names):
            self.fail(f"group {where}", f"has a member name longer than {MAX_NAME} bytes")
        return [_text(v) for v in names]

    def names(self, group: Any, attr: str, where: str) -> list[str]:
        """A list-of-names attribute, joined when Keras split it into `attr0`, `attr1`, ... (HDF5's header limit)."""
        exists = self.h5py.h5a.exists
        parts = [attr]
        if not exists(group, attr.encode()):
            parts = []
            while len(parts) <= MAX_LAYERS and exists(group, f"{attr}{len(parts)}".encode()):
                parts.append(f"{attr}{len(parts)}")
        names = [v for part in parts for v in self.strings(group, part, where)]
        if len(names) > MAX_LAYERS:
            self.fail(f"attribute {where}:{attr}", f"lists {len(names)} names, more than {MAX_LAYERS}")
        return names

    def strings(self, group: Any, attr: str, where: str, scalar: bool = False) -> list[str]:
        """The strings of a 1-D (or scalar) string attribute, read through a buffer of MAX_NAME + 1 bytes each."""
        h5t = self.h5py.h5t
        aid, at = self.h5py.h5a.open(group, attr.encode()), f"attribute {where}:{attr}"
        if aid.shape == (0,) and not scalar:
            return []  # Keras writes a layer without weights as an empty float array
        atype = aid.get_type()
        if atype.get_class() != h5t.STRING or len(aid.shape) != (0 if scalar else 1):
            want = "a name" if scalar else "a list of names"
            self.fail(at, f"is {str(aid.dtype)[:40]} of shape {aid.shape}, not {want}")
        if prod(aid.shape) > MAX_LAYERS:
            self.fail(at, f"lists {prod(aid.shape)} names, more than {MAX_LAYERS}")
        try:
            values = _read_fixed(h5t, aid, MAX_NAME + 1)  # one byte more than a name may take, to see a longer one
        except OSError:  # an HDF5 that cannot convert variable-length strings to fixed ones: read them whole
            if not atype.is_variable_str():
                raise
            whole = np.empty(aid.shape, aid.dtype)
            aid.read(whole)
            values = [v.encode("utf8") if isinstance(v, str) else bytes(v) for v in whole.flat]
        if any(len(v) > MAX_NAME for v in values):
            self.fail(at, f"holds a name longer than {MAX_NAME} bytes")
        try:
            return [v.decode("utf8") for v in values]
        except UnicodeDecodeError as err:
            self.fail(at, "holds a name that is not UTF-8", cause=err)

    # --- datasets ---------------------------------------------------------------------------------------

    def array(self, dset: Any, path: str, layer: str, index: int, shape: Shape) -> np.ndarray:
        """The dataset's data, read only after checking all that could take it outside the file or past its size."""
        h5d, h5s = self.h5py.h5d, self.h5py.h5s
        where = f"dataset {path}"
        if not isinstance(dset, h5d.DatasetID):
            self.fail(path, "is not a dataset")
        plist = dset.get_create_plist()
        layout = plist.get_layout()
        elsewhere = f"vggnet reads weights only from inside the .h5 file: {_RESAVE}"
        if layout == h5d.VIRTUAL:
            files = sorted({_text(plist.get_virtual_filename(i)) for i in range(min(plist.get_virtual_count(), 4))})
            self.fail(where, f"is a virtual dataset over other files ({', '.join(map(repr, files))})", elsewhere)
        if plist.get_external_count() > 0:
            self.fail(where, f"stores its data in an external file ({_text(plist.get_external(0)[0])!r})", elsewhere)
        if layout not in (h5d.COMPACT, h5d.CONTIGUOUS, h5d.CHUNKED):
            self.fail(where, f"has an unknown storage layout ({layout})")
        if not any(dset.get_type().equal(t) for t in self.types):
            self.fail(where, f"holds {str(dset.dtype)[:60]} values, not IEEE floats")
        space = dset.get_space()
        found = tuple(space.shape) if space.get_simple_extent_type() in (h5s.SIMPLE, h5s.SCALAR) else None
        if found is None or len(found) != len(shape) or any(e not in (None, f) for e, f in zip(shape, found)):
            want = str(tuple("any" if e is None else e for e in shape)).replace("'", "")
            self.fail(where, f"has shape {found}, but weight {index} of layer {layer!r} is {want}")
        dtype = dset.dtype
        self.left -= prod(found) * dtype.itemsize
        if self.left < 0:
            self.fail(where, f"takes the weights read past max_bytes={self.max_bytes}", "raise max_bytes if right")
        if layout != h5d.CHUNKED and dset.get_storage_size() < prod(found) * dtype.itemsize:
            # never written: HDF5 would hand back its fill value, any size from a file of a few bytes
            size = f"{dset.get_storage_size()} of its {prod(found) * dtype.itemsize} bytes"
            self.fail(where, f"stores {size} (never written: HDF5 would make up the rest)", _RESAVE)
        out = np.empty(found, dtype)
        if layout == h5d.CHUNKED:
            self.chunks(dset, plist, where, out)
        else:
            dset.read(h5s.ALL, h5s.ALL, out)
        return out.astype(dtype.newbyteorder("="), copy=False)

    def chunks(self, dset: Any, plist: Any, where: str, out: np.ndarray) -> None:
        """Reads a chunked dataset into `out`: by HDF5 when unfiltered, else each chunk decoded here, bounded."""
        h5z = self.h5py.h5z
        chunk = tuple(plist.get_chunk())
        if len(chunk) != out.ndim or any(not 1 <= c <= max(s, 1) for c, s in zip(chunk, out.shape)):
            self.fail(where, f"has chunks of {chunk}, larger than its shape {out.shape}")
        grid = [-(-s // c) for s, c in zip(out.shape, chunk)]
        if prod(grid) > MAX_CHUNKS:
            self.fail(where, f"is cut into {prod(grid)} chunks, more than {MAX_CHUNKS}", "repack it with larger chunks")
        stored = dset.get_num_chunks()
        if stored != prod(grid):  # a chunk never written is HDF5's fill value, read from nothing
            self.fail(where, f"has {stored} chunks stored of the {prod(grid)} its shape takes", _RESAVE)
        filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]  # (code, flags, cd_values, name)
        for code, _, _, name in filters:
            if code not in (h5z.FILTER_DEFLATE, h5z.FILTER_SHUFFLE, h5z.FILTER_FLETCHER32):
                self.fail(
                    where,
                    f"is encoded with HDF5 filter {code} ({_text(name)!r})",
                    f"vggnet decodes only deflate (gzip), shuffle and fletcher32: {_RESAVE}, or h5repack -f GZIP=4",
                )
        if not filters:
            dset.read(self.h5py.h5s.ALL, self.h5py.h5s.ALL, out)
            return
        unlimited = self.h5py.h5s.UNLIMITED
        maxshape = tuple(None if m == unlimited else m for m in dset.get_space().get_simple_extent_dims(True))
        if maxshape != out.shape:  # HDF5 misreports the chunk offsets of some resizable datasets' indexes
            self.fail(where, f"is compressed and resizable (maxshape {maxshape})", f"{_RESAVE}, or h5repack it")
        size = prod(chunk) * out.itemsize
        checksums = 4 * sum(code == h5z.FILTER_FLETCHER32 for code, *_ in filters)
        bound = size + (size >> 12) + (size >> 14) + (size >> 25) + 13 + checksums  # zlib's compressBound + checksums
        infos: list[Any] = []
        if hasattr(dset, "chunk_iter"):  # HDF5 1.14+: one pass over the chunk index
            dset.chunk_iter(infos.append)
        else:  # each call walks the index again: quadratic, hence MAX_CHUNKS
            infos = [dset.get_chunk_info(i) for i in range(stored)]
        offsets = [tuple(info.chunk_offset) for info in infos]
        outside = any(o % c or o >= s for at in offsets for o, c, s in zip(at, chunk, out.shape))
        if outside or len(set(offsets)) != prod(grid):
            self.fail(where, "has a chunk index that does not tile its shape", _RESAVE)
        for offset, info in zip(offsets, infos):
            at = f"{where} chunk {offset}"
            if info.size > bound:
                self.fail(at, f"takes {info.size} bytes in the file, over {bound} for {size} bytes of data", _RESAVE)
            mask, data = dset.read_direct_chunk(offset)
            for i in reversed(range(len(filters))):  # HDF5 applied them in order when writing
                if not mask >> i & 1:  # a set bit: HDF5 skipped that filter for this chunk
                    data = self.unfilter(at, filters[i][0], filters[i][2], data, size + checksums)
            if len(data) != size:
                self.fail(at, f"decodes to {len(data)} bytes instead of {size}", _RESAVE)
            block = np.frombuffer(data, out.dtype).reshape(chunk)
            inside = tuple(slice(o, min(o + c, s)) for o, c, s in zip(offset, chunk, out.shape))
            out[inside] = block[tuple(slice(0, s.stop - s.start) for s in inside)]

    def unfilter(self, at: str, code: int, values: tuple[int, ...], data: bytes, limit: int) -> bytes:
        """Undoes one filter of a chunk, never producing more than `limit` bytes."""
        h5z = self.h5py.h5z
        if code == h5z.FILTER_DEFLATE:
            inflate = zlib.decompressobj()
            try:
                plain = inflate.decompress(data, limit)  # stops at `limit` bytes, however small `data` is
            except zlib.error as err:
                self.fail(at, f"is not valid deflate data ({err})", _RESAVE, err)
            if not inflate.eof or inflate.unconsumed_tail or inflate.unused_data:
                self.fail(at, f"inflates to more than {limit} bytes, or is cut short", _RESAVE)
            return plain
        if code == h5z.FILTER_SHUFFLE:  # byte k of every element together, k = 0 .. size - 1; a tail left as is
            size = values[0] if values else 0
            n = len(data) // size if size > 1 else 0
            if n <= 1:
                return data
            return bytes(np.frombuffer(data, np.uint8, n * size).reshape(size, n).T.tobytes()) + data[n * size :]
        if len(data) < 4:  # fletcher32: the checksum of the data, 4 bytes after it
            self.fail(at, "is too short for its fletcher32 checksum", _RESAVE)
        stored, data = int.from_bytes(data[-4:], "little"), data[:-4]
        expect = _fletcher32(data)
        swapped = ((expect & 0x00FF00FF) << 8) | ((expect >> 8) & 0x00FF00FF)  # HDF5 accepts this one too
        if stored not in (expect, swapped):
            self.fail(at, "fails its fletcher32 checksum", "the file is damaged: download or save it again")
        return data


def _read_fixed(h5t: Any, aid: Any, size: int) -> list[bytes]:
    """A string attribute's values, each read through `size` bytes (HDF5 converts variable-length ones too)."""
    memtype = h5t.C_S1.copy()
    memtype.set_size(size)
    memtype.set_strpad(h5t.STR_NULLPAD)  # NULLTERM would give up the last byte to a terminator
    buffer = np.zeros(aid.shape, f"S{size}")
    aid.read(buffer, mtype=memtype)
    return [bytes(v) for v in buffer.flat]


def _text(value: bytes | str) -> str:
    return value.decode("utf8", "replace") if isinstance(value, bytes) else value


def _fletcher32(data: bytes) -> int:
    """HDF5's Fletcher-32 (H5_checksum_fletcher32): 16-bit big-endian words, sums modulo 65535 kept in 1..65535."""
    if len(data) % 2:
        data += b"\0"
    words = np.frombuffer(data, ">u2")
    if not words.any():
        return 0
    n, sum1, sum2 = len(words), 0, 0
    for start in range(0, n, 1 << 20):  # sum2 weighs word i by n - i, the number of running sums it is in
        block = words[start : start + (1 << 20)].astype(np.int64)
        sum1 += int(block.sum())
        sum2 += int((block * ((n - start - np.arange(len(block))) % 65535)).sum())
    sum1, sum2 = sum1 % 65535, sum2 % 65535
    return ((sum2 - 1) % 65535 + 1) << 16 | ((sum1 - 1) % 65535 + 1)
