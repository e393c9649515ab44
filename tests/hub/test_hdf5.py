"""vggnet.hub._hdf5 on real crafted files: what it refuses (and that plain h5py would have followed it), what it reads.

Each refusal is checked against h5py itself first: the crafted file really does reach outside (its
dataset reads the secret through plain h5py), so the refusal is what stopped it. Shapes are the ones
`vggnet.models.layouts.keras_shapes` derives from Table 1.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vggnet.errors import BadKerasFileError
from vggnet.hub import _hdf5
from vggnet.hub._hdf5 import MAX_LAYERS, MAX_NAME, read_keras_layers
from vggnet.models.layouts import keras_shapes

h5py = pytest.importorskip("h5py")

SHAPES = keras_shapes()
KERNEL = (3, 3, 3, 64)  # block1_conv1's kernel
KERNEL_BYTES = int(np.prod(KERNEL)) * 4
SECRET = b"TOP-SECRET-KEY:" + b"x" * 32 + b";"
DSET = "/block1_conv1/block1_conv1_W_1:0"  # where `crafted` puts the kernel


def _arrays(shapes: tuple[tuple[int, ...], ...], seed: int, dtype: str = "float32") -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _vgg16_notop(seed: int = 0, blocks: int = 5) -> dict[str, list[np.ndarray]]:
    """Random weights in the shapes of Keras' VGG16 without its top (its first `blocks` blocks: 2 take 1 MB)."""
    names = [f"block{b}_conv{c}" for b in range(1, blocks + 1) for c in range(1, 3 if b < 3 else 4)]
    return {n: _arrays(SHAPES[n], seed + i) for i, n in enumerate(names)}  # type: ignore[arg-type]


def write_legacy(
    path: Path,
    layers: dict[str, list[np.ndarray]],
    *,
    style: str = "keras1",
    whole_model: bool = False,
    fixed: bool = True,
    split: int = 0,
    make: Callable[[Any, str, np.ndarray], None] | None = None,
) -> Path:
    """The layout of Keras' published VGG files: `layer_names`, then per layer group `weight_names`.

    style "keras1": `block1_conv1_W_1:0`/`block1_conv1_b_1:0` (the 2016 files), "keras2": `block1_conv1/kernel:0`.
    fixed: names as fixed-length strings (h5py 2, the published files) or variable-length (h5py 3 from a list).
    split: spread `layer_names` over `layer_names0`, `layer_names1`, ... as Keras does for long lists.
    make: writes each weight dataset instead of `create_dataset` (to craft one).
    """

    def strings(names: list[str]) -> Any:
        return np.array([n.encode() for n in names]) if fixed and names else [n.encode() for n in names]

    all_layers = {"input_1": [], **layers, "block1_pool": []}  # layers without weights, as in the published files
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if whole_model else f
        if split:
            for i, part in enumerate(np.array_split(np.array([n.encode() for n in all_layers]), split)):
                root.attrs[f"layer_names{i}"] = part
        else:
            root.attrs["layer_names"] = strings(list(all_layers))
        root.attrs["backend"] = b"tensorflow"
        for name, arrays in all_layers.items():
            group = root.create_group(name)
            suffixes = ["_W_1:0", "_b_1:0"] if style == "keras1" else ["/kernel:0", "/bias:0"]
            weight_names = [name + s for s in suffixes[: len(arrays)]]
            group.attrs["weight_names"] = strings(weight_names)
            for w, a in zip(weight_names, arrays):
                (make or (lambda g, n, a: g.create_dataset(n, data=a)))(group, w, a)
    return path


def crafted(tmp_path: Path, kernel: Callable[[Any, str], None], name: str = "crafted.h5") -> Path:
    """A legacy file whose block1_conv1 kernel (at DSET) is written by `kernel(group, dataset name)`."""

    def make(group: Any, w: str, a: np.ndarray) -> None:
        if w.endswith("_W_1:0"):
            kernel(group, w)
        else:
            group.create_dataset(w, data=a)

    return write_legacy(tmp_path / name, {"block1_conv1": _arrays(SHAPES["block1_conv1"], 1)}, make=make)  # type: ignore[arg-type]


def refused(source: Any, *parts: str, expected: Any = SHAPES, **kwargs: Any) -> str:
    """The one-line message of the BadKerasFileError that reading `source` raises; it names the file and `parts`."""
    with pytest.raises(BadKerasFileError) as info:
        read_keras_layers(source, expected, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    label = kwargs.get("name") or (str(source) if isinstance(source, (str, Path)) else getattr(source, "name", None))
    label = label or "<file object>"
    assert message.startswith(f"{label}: "), message
    for part in parts:
        assert part in message, message
    assert SECRET.decode() not in message and "OTHER" not in message
    return message


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A private file of exactly one kernel's bytes, the secret repeated."""
    path = tmp_path / "secret.bin"
    path.write_bytes((SECRET * (KERNEL_BYTES // len(SECRET) + 1))[:KERNEL_BYTES])
    return path


@pytest.fixture
def other(tmp_path: Path) -> Path:
    """Another HDF5 file holding a kernel-shaped dataset /x and a layer group /block1_conv1 of bytes 'OTHER...'."""
    path = tmp_path / "other.h5"
    data = np.frombuffer((b"OTHER!!!" * KERNEL_BYTES)[:KERNEL_BYTES], "<f4").reshape(KERNEL)
    with h5py.File(path, "w") as f:
        f["x"] = data
        f.create_group("block1_conv1").attrs["weight_names"] = [b"block1_conv1_W_1:0"]
        f["block1_conv1/block1_conv1_W_1:0"] = data
    return path


def plain_h5py_reads(path: Path, dataset: str = DSET) -> bytes:
    """What h5py alone gives for the dataset: the proof that the crafted file does reach outside."""
    with h5py.File(path, "r") as f:
        return bytes(np.ascontiguousarray(f[dataset][()]).tobytes())


# --- what it reads ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras() -> Any:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("these tests build Keras models on the torch backend (KERAS_BACKEND=torch)")
    return keras


@pytest.mark.slow  # builds Keras' VGG16 twice; tests/hub/test_formats.py reads Keras 3 files in the quick run
@pytest.mark.parametrize("include_top", [False, True])
def test_reads_keras3_save_weights_of_vgg16(keras: Any, tmp_path: Path, include_top: bool) -> None:
    model = keras.applications.VGG16(weights=None, include_top=include_top)
    path = tmp_path / "vgg16.weights.h5"
    model.save_weights(path)
    layers = read_keras_layers(path, SHAPES)
    want = {layer.name: layer.get_weights() for layer in model.layers if layer.get_weights()}
    assert list(layers) == sorted(want, key=list(layers).index) and set(layers) == set(want)
    assert len(layers) == (16 if include_top else 13)
    for name, arrays in want.items():
        assert [a.shape for a in layers[name]] == [a.shape for a in arrays]
        assert all(np.array_equal(a, b) and a.dtype == np.float32 for a, b in zip(layers[name], arrays))


@pytest.mark.parametrize(
    ("style", "whole_model", "fixed", "split", "blocks"),
    [
        ("keras1", False, True, 0, 2),
        pytest.param("keras1", False, True, 0, 5, marks=pytest.mark.slow),  # the whole of VGG16's features
        ("keras2", False, False, 0, 2),
        ("keras2", True, True, 3, 2),
        ("keras1", True, False, 2, 2),
    ],
)
def test_reads_the_published_legacy_layout(
    tmp_path: Path, style: str, whole_model: bool, fixed: bool, split: int, blocks: int
) -> None:
    weights = _vgg16_notop(blocks=blocks)
    path = write_legacy(
        tmp_path / "vgg16_notop.h5", weights, style=style, whole_model=whole_model, fixed=fixed, split=split
    )
    layers = read_keras_layers(path, SHAPES)
    assert list(layers) == list(weights)
    for name, arrays in weights.items():
        assert all(np.array_equal(a, b) for a, b in zip(layers[name], arrays))


def test_reads_the_same_open_file_it_hashed(tmp_path: Path) -> None:
    weights = _vgg16_notop(blocks=2)
    path = write_legacy(tmp_path / "w.h5", weights)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with open(path, "rb") as f:
        sha = hashlib.sha256()
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
        assert sha.hexdigest() == digest  # the caller checks the open file...
        layers = read_keras_layers(f, SHAPES)  # ...then parses that same file object, whatever its position
        assert not f.closed
    assert all(np.array_equal(layers[n][0], weights[n][0]) for n in weights)
    in_memory = io.BytesIO(path.read_bytes())  # any binary file-like object
    assert list(read_keras_layers(in_memory, SHAPES, name="w.h5")) == list(weights)
    with h5py.File(in_memory, "a") as f:
        f["block1_conv1/block1_conv1_W_1:0"].attrs["x"] = 1  # the object stays usable
        del f["block1_conv1/block1_conv1_W_1:0"]
        f["block1_conv1/block1_conv1_W_1:0"] = h5py.SoftLink("/block1_conv1/block1_conv1_b_1:0")
    refused(in_memory, "/block1_conv1/block1_conv1_W_1:0 is a soft link", name="w.h5")
    refused(in_memory, "/block1_conv1/block1_conv1_W_1:0 is a soft link")  # named "<file object>"


@pytest.mark.parametrize(
    "options",
    [
        {"compression": "gzip"},
        {"compression": "gzip", "shuffle": True},
        {"compression": "gzip", "shuffle": True, "fletcher32": True},
        {"fletcher32": True},
        {"shuffle": True},
        {"compression": 9, "shuffle": True, "fletcher32": True, "dtype": ">f4"},
        {"compression": "gzip", "shuffle": True, "fletcher32": True, "dtype": "<f8"},
        {"compression": "gzip", "shuffle": True, "fletcher32": True, "dtype": ">f2"},
        {},  # chunked, no filter: read by HDF5
    ],
)
def test_decodes_deflate_shuffle_fletcher32_itself(tmp_path: Path, options: dict[str, Any]) -> None:
    rng = np.random.default_rng(3)
    kernel = (rng.standard_normal(KERNEL) * (rng.random(KERNEL) > 0.5)).astype(options.pop("dtype", "<f4"))
    chunks = (2, 3, 2, 37)  # partial edge chunks on three axes

    def write(group: Any, w: str) -> None:
        group.create_dataset(w, data=kernel, chunks=chunks, **options)

    path = crafted(tmp_path, write)
    layers = read_keras_layers(path, SHAPES)
    assert layers["block1_conv1"][0].dtype == kernel.dtype.newbyteorder("=")
    assert np.array_equal(layers["block1_conv1"][0], kernel)
    assert np.array_equal(
        layers["block1_conv1"][0], np.frombuffer(plain_h5py_reads(path), kernel.dtype).reshape(KERNEL)
    )


@pytest.mark.parametrize("maxshape", [None, (3, 3, 3, None), (None, None, None, None)])
def test_decodes_chunks_of_fixed_shape_and_refuses_resizable_ones(tmp_path: Path, maxshape: Any) -> None:
    """libver="latest" indexes chunks in a fixed array, an extensible array or a v2 B-tree (by `maxshape`).

    HDF5 (1.12 to 2.0) reports wrong offsets for the extensible array's chunks: compressed datasets must
    not be resizable (Keras never makes them so).
    """
    kernel = np.random.default_rng(6).standard_normal(KERNEL).astype("<f4")
    path = tmp_path / "latest.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.attrs["layer_names"] = [b"block1_conv1"]
        group = f.create_group("block1_conv1")
        group.attrs["weight_names"] = [b"k", b"b"]
        options = {"chunks": (3, 2, 2, 10), "compression": "gzip", "shuffle": True, "fletcher32": True}
        group.create_dataset("k", data=kernel, maxshape=maxshape, **options)
        group.create_dataset("b", data=np.ones(64, "<f4"), chunks=(64,), compression="gzip")
    if maxshape is None:
        assert np.array_equal(read_keras_layers(path, SHAPES)["block1_conv1"][0], kernel)
    else:
        refused(path, f"dataset /block1_conv1/k is compressed and resizable (maxshape {maxshape})")


def test_reads_variable_length_names_where_hdf5_cannot_convert_them(tmp_path: Path, monkeypatch: Any) -> None:
    """Where HDF5 converts no variable-length string into a fixed-length buffer, they are read whole instead."""

    def no_conversion(h5t: Any, aid: Any, size: int) -> list[bytes]:
        raise OSError("no appropriate function for conversion path")

    monkeypatch.setattr(_hdf5, "_read_fixed", no_conversion)
    weights = _vgg16_notop(blocks=2)
    path = write_legacy(tmp_path / "vlen.h5", weights, fixed=False)
    assert list(read_keras_layers(path, SHAPES)) == list(weights)
    path = write_legacy(tmp_path / "fixed.h5", weights, fixed=True)
    refused(path, "could not be read by HDF5 (no appropriate function for conversion path)")


def test_fletcher32_matches_hdf5_for_many_sizes(tmp_path: Path) -> None:
    """HDF5 checks each chunk it wrote against our Fletcher-32 (all zeros, all 0xff, sizes around 360 words)."""
    rng = np.random.default_rng(4)
    for n, fill in [(1, None), (2, 0.0), (179, None), (180, None), (181, None), (720, None), (4096, None), (97, -1)]:
        data = rng.standard_normal(n).astype("<f4") if fill is None else np.full(n, fill, "<f4")
        if fill == -1:
            data = np.frombuffer(b"\xff" * 4 * n, "<f4").copy()  # NaNs: words of 0xffff, sums at 65535
        path = tmp_path / f"f{n}.h5"
        with h5py.File(path, "w") as f:
            f.create_group("block1_conv2").attrs["weight_names"] = [b"b"]
            f.attrs["layer_names"] = [b"block1_conv2"]
            f["block1_conv2"].create_dataset("b", data=data, chunks=(n,), fletcher32=True)
        layers = read_keras_layers(path, {"block1_conv2": [(n,)]})
        assert layers["block1_conv2"][0].tobytes() == data.tobytes()


def test_layers_not_asked_for_are_not_even_opened(tmp_path: Path, secret: Path) -> None:
    def write(group: Any, w: str) -> None:
        group.create_dataset(w, shape=KERNEL, dtype="<f4", external=[(str(secret), 0, KERNEL_BYTES)])

    path = crafted(tmp_path, write)
    assert read_keras_layers(path, {"fc1": SHAPES["fc1"]}) == {}
    assert read_keras_layers(path, lambda name: None) == {}


# --- what points outside the file ---------------------------------------------------------------------


def test_refuses_external_raw_storage_at_an_absolute_path(tmp_path: Path, secret: Path) -> None:
    def write(group: Any, w: str) -> None:
        group.create_dataset(w, shape=KERNEL, dtype="<f4", external=[(str(secret), 0, KERNEL_BYTES)])

    path = crafted(tmp_path, write)
    assert SECRET in plain_h5py_reads(path)
    refused(path, f"dataset {DSET}", f"stores its data in an external file ('{secret}')", "save it again with Keras")


def test_refuses_external_raw_storage_at_a_relative_path(tmp_path: Path, secret: Path, monkeypatch: Any) -> None:
    def write(group: Any, w: str) -> None:
        group.create_dataset(w, shape=KERNEL, dtype="<f4", external=[("../secret.bin", 0, KERNEL_BYTES)])

    path = crafted(tmp_path, write)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # HDF5 resolves it from the working directory
    assert SECRET in plain_h5py_reads(path)
    refused(path, f"dataset {DSET}", "external file ('../secret.bin')")
    with open(path, "rb") as f:  # HDF5 follows it from a file object too
        with h5py.File(f, "r") as h5:
            assert SECRET in np.asarray(h5[DSET]).tobytes()
        refused(f, f"dataset {DSET}", "external file")


def test_refuses_an_external_link_to_a_dataset(tmp_path: Path, other: Path) -> None:
    path = crafted(tmp_path, lambda group, w: group.__setitem__(w, h5py.ExternalLink(str(other), "/x")))
    assert b"OTHER" in plain_h5py_reads(path)
    refused(path, DSET, f"is an external link to '/x' in '{other}'", "not via links")
    with open(path, "rb") as f:
        refused(f, DSET, "external link")


def test_refuses_an_external_link_to_a_layer_group_or_the_weights_group(tmp_path: Path, other: Path) -> None:
    path = tmp_path / "layer.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"block1_conv1"]
        f["block1_conv1"] = h5py.ExternalLink(str(other), "/block1_conv1")
    refused(path, "/block1_conv1 is an external link to '/block1_conv1'")
    path = tmp_path / "model.h5"
    with h5py.File(path, "w") as f:
        f["model_weights"] = h5py.ExternalLink(str(other), "/")
    refused(path, "/model_weights is an external link to '/'")
    with h5py.File(path, "w") as f:
        f["model_weights"] = np.zeros(3)
    refused(path, "/model_weights is not a group")


@pytest.mark.parametrize("target", ["/nowhere", "/outside", "/block1_conv1/block1_conv1_b_1:0"])
def test_refuses_soft_links_dangling_through_an_external_link_or_even_inside(
    tmp_path: Path, other: Path, target: str
) -> None:
    def write(group: Any, w: str) -> None:
        group.file["outside"] = h5py.ExternalLink(str(other), "/x")
        group[w] = h5py.SoftLink(target)

    path = crafted(tmp_path, write)
    if target == "/outside":
        assert b"OTHER" in plain_h5py_reads(path)
    refused(path, DSET, f"is a soft link to '{target}'")


def test_refuses_a_virtual_dataset_over_another_file(tmp_path: Path, other: Path) -> None:
    def write(group: Any, w: str) -> None:
        layout = h5py.VirtualLayout(shape=KERNEL, dtype="<f4")
        layout[:] = h5py.VirtualSource(str(other), "x", shape=KERNEL)
        group.create_virtual_dataset(w, layout)

    path = crafted(tmp_path, write)
    assert b"OTHER" in plain_h5py_reads(path)
    refused(path, f"dataset {DSET}", f"is a virtual dataset over other files ('{other}')")


def test_refuses_links_in_the_keras3_layout(tmp_path: Path, other: Path) -> None:
    path = tmp_path / "x.weights.h5"
    with h5py.File(path, "w") as f:
        vars_ = f.create_group("layers/conv2d/vars")
        vars_.attrs["name"] = "block1_conv1"
        vars_["0"] = h5py.ExternalLink(str(other), "/x")
        vars_["1"] = np.zeros(64, "f4")
    assert b"OTHER" in plain_h5py_reads(path, "layers/conv2d/vars/0")
    refused(path, "/layers/conv2d/vars/0 is an external link")


# --- what asks for more than it holds -----------------------------------------------------------------


@pytest.mark.parametrize("layout", ["chunked-gzip", "contiguous"])
def test_refuses_a_huge_declared_shape_before_reading(tmp_path: Path, layout: str) -> None:
    shape = (100000, 100000, 3, 3)  # 360 GB of float32 in a file of a few KB

    def write(group: Any, w: str) -> None:
        if layout == "contiguous":
            group.create_dataset(w, shape=shape, dtype="<f4")
        else:
            group.create_dataset(w, shape=shape, dtype="<f4", chunks=(1000, 1000, 3, 3), compression="gzip")

    path = crafted(tmp_path, write)
    assert path.stat().st_size < 100_000
    refused(path, f"dataset {DSET} has shape {shape}", "weight 0 of layer 'block1_conv1' is (3, 3, 3, 64)")
    lax = {"block1_conv1": ((None, None, 3, 3), (64,))}  # a caller leaving the axes open still has max_bytes
    refused(path, f"dataset {DSET}", "past max_bytes=2147483648", expected=lax)


@pytest.mark.parametrize("layout", ["contiguous", "chunked"])
def test_refuses_a_dataset_never_written_whatever_shape_it_declares(tmp_path: Path, layout: str) -> None:
    shape = (4096, 2000)  # fc8 of 2000 classes: 33 MB of HDF5's fill value from a file of 11 KB

    def write(group: Any, w: str) -> None:
        group.create_dataset(w, shape=shape, dtype="<f4", chunks=(4096, 200) if layout == "chunked" else None)

    path = crafted(tmp_path, write)
    assert path.stat().st_size < 20_000 and plain_h5py_reads(path) == bytes(4096 * 2000 * 4)
    lax = {"block1_conv1": ((4096, None), (64,))}  # as keras_shapes() leaves fc8's classes open
    if layout == "contiguous":
        refused(path, f"dataset {DSET} stores 0 of its 32768000 bytes (never written", expected=lax)
    else:
        refused(path, f"dataset {DSET} has 0 chunks stored of the 10 its shape takes", expected=lax)


def _deflate_bomb(tmp_path: Path, megabytes: int) -> Path:
    """A 4 KB-per-chunk dataset whose one chunk inflates to `megabytes` MB; the file is 1/1000 of that."""

    def write(group: Any, w: str) -> None:
        dset = group.create_dataset(w, shape=(1024,), chunks=(1024,), dtype="<f4", compression="gzip")
        deflate = zlib.compressobj(9)
        zeros = b"\0" * (1 << 20)
        dset.id.write_direct_chunk((0,), b"".join(deflate.compress(zeros) for _ in range(megabytes)) + deflate.flush())

    return crafted(tmp_path, write, f"bomb{megabytes}.h5")


def _peak_rss_mb(code: str) -> int:
    """The peak resident memory of a fresh Python running `code` (VmHWM: ru_maxrss would carry pytest's over)."""
    script = f"{code}\n"
    script += "print([int(v.split()[1]) // 1024 for v in open('/proc/self/status') if v.startswith('VmHWM')][0])"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return int(run.stdout.split()[-1])


def test_refuses_a_deflate_bomb_without_inflating_it(tmp_path: Path) -> None:
    expected = {"block1_conv1": [(1024,), (64,)]}
    path = _deflate_bomb(tmp_path, 3)  # 3 MB in 3 KB: within the size a 4 KB chunk may take compressed
    refused(path, f"dataset {DSET} chunk (0,) inflates to more than 4096 bytes", expected=expected)

    big = _deflate_bomb(tmp_path, 16)  # over that size: refused before a byte of it is read
    refused(big, f"dataset {DSET} chunk (0,) takes 1", "bytes in the file, over 4110 for 4096 bytes", expected=expected)


@pytest.mark.slow  # three fresh processes, one of which inflates 768 MB
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="measures memory in /proc (Linux)")
def test_a_deflate_bomb_costs_no_memory_where_plain_hdf5_inflates_it(tmp_path: Path) -> None:
    expected = {"block1_conv1": [(1024,), (64,)]}
    big = _deflate_bomb(tmp_path, 768)
    assert big.stat().st_size < 1 << 20
    refused(big, f"dataset {DSET} chunk (0,) takes 7", "bytes in the file, over 4110 for 4096 bytes", expected=expected)
    base = _peak_rss_mb("import h5py, numpy\nfrom vggnet.hub import _hdf5\nfrom vggnet.errors import BadKerasFileError")
    ours = _peak_rss_mb(
        "from vggnet.hub import _hdf5\nfrom vggnet.errors import BadKerasFileError\n"
        f"try: _hdf5.read_keras_layers({str(big)!r}, {expected!r})\nexcept BadKerasFileError: pass"
    )
    plain = _peak_rss_mb("import h5py, numpy")  # without vggnet (and torch, which vggnet.hub imports)
    theirs = _peak_rss_mb(f"import h5py\nh5py.File({str(big)!r}, 'r')[{DSET!r}][()]")  # what HDF5 itself does
    assert ours - base < 64 and theirs - plain > 700, (base, ours, plain, theirs)


def test_refuses_chunks_stored_larger_than_they_decode_or_missing(tmp_path: Path) -> None:
    def oversized(group: Any, w: str) -> None:
        dset = group.create_dataset(w, shape=KERNEL, chunks=KERNEL, dtype="<f4", compression="gzip")
        dset.id.write_direct_chunk((0, 0, 0, 0), os.urandom(2 * KERNEL_BYTES))

    refused(
        crafted(tmp_path, oversized), f"dataset {DSET} chunk (0, 0, 0, 0) takes {2 * KERNEL_BYTES} bytes in the file"
    )

    def missing(group: Any, w: str) -> None:
        group.create_dataset(w, shape=KERNEL, chunks=(3, 3, 3, 32), dtype="<f4", compression="gzip")

    refused(crafted(tmp_path, missing, "missing.h5"), f"dataset {DSET} has 0 chunks stored of the 2 its shape takes")

    def corrupt(group: Any, w: str) -> None:
        dset = group.create_dataset(w, data=np.ones(KERNEL, "<f4"), chunks=KERNEL, fletcher32=True)
        raw = bytearray(dset.id.read_direct_chunk((0, 0, 0, 0))[1])
        raw[100] ^= 1
        dset.id.write_direct_chunk((0, 0, 0, 0), bytes(raw))

    refused(
        crafted(tmp_path, corrupt, "corrupt.h5"), f"dataset {DSET} chunk (0, 0, 0, 0) fails its fletcher32 checksum"
    )

    def tiny_chunks(group: Any, w: str) -> None:
        group.create_dataset(w, shape=(300, 300), dtype="<f4", chunks=(1, 1))  # a B-tree of 90000 chunks

    lax = {"block1_conv1": ((None, None), (64,))}
    refused(crafted(tmp_path, tiny_chunks, "tiny.h5"), f"dataset {DSET} is cut into 90000 chunks", expected=lax)


@pytest.mark.parametrize(
    ("filter_options", "shown"),
    [({"compression": "lzf"}, "filter 32000 ('lzf')"), ({"scaleoffset": 3}, "filter 6 ('scaleoffset')")],
)
def test_refuses_filters_beyond_deflate_shuffle_fletcher32(
    tmp_path: Path, filter_options: dict[str, Any], shown: str
) -> None:
    kernel = np.random.default_rng(5).standard_normal(KERNEL).astype("<f4")
    path = crafted(
        tmp_path, lambda group, w: group.create_dataset(w, data=kernel, chunks=(3, 3, 3, 8), **filter_options)
    )
    refused(path, f"dataset {DSET} is encoded with HDF5 {shown}", "decodes only deflate (gzip), shuffle and fletcher32")


# --- what is not a float array of the right shape -----------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "shown"),
    [
        (np.dtype([("a", "<f4"), ("b", "<f4")]), "[('a', '<f4'), ('b', '<f4')] values"),
        (np.dtype("S4"), "|S4 values"),
        (h5py.string_dtype(), "object values"),
        (np.dtype("<i4"), "int32 values"),
        (np.dtype("V4"), "|V4 values"),  # numpy.void: HDF5 opaque
        (h5py.ref_dtype, "object values"),
        (h5py.vlen_dtype(np.float32), "object values"),
    ],
)
def test_refuses_what_is_not_an_ieee_float_array(tmp_path: Path, dtype: Any, shown: str) -> None:
    path = crafted(tmp_path, lambda group, w: group.create_dataset(w, shape=KERNEL, dtype=dtype))
    refused(path, f"dataset {DSET} holds {shown}, not IEEE floats")


def test_refuses_float64_when_only_float32_is_allowed(tmp_path: Path) -> None:
    path = crafted(tmp_path, lambda group, w: group.create_dataset(w, data=np.zeros(KERNEL)))
    assert read_keras_layers(path, SHAPES)["block1_conv1"][0].dtype == np.float64
    refused(path, f"dataset {DSET} holds float64 values", dtypes=["float32"])


@pytest.mark.parametrize("shape", [(3, 3, 3, 32), (3, 3, 3), (), (3, 3, 64, 3)])
def test_refuses_a_wrong_shape(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = crafted(tmp_path, lambda group, w: group.create_dataset(w, data=np.zeros(shape, "<f4")))
    refused(path, f"dataset {DSET} has shape {shape}, but weight 0 of layer 'block1_conv1' is (3, 3, 3, 64)")


def test_refuses_a_wrong_number_of_weights(tmp_path: Path) -> None:
    path = write_legacy(tmp_path / "w.h5", {"block1_conv1": _arrays(((3, 3, 3, 64),), 0)})
    refused(path, "/block1_conv1 holds 1 weights for layer 'block1_conv1', which has 2")


# --- names and structure ------------------------------------------------------------------------------


def test_refuses_name_attributes_that_are_not_names_or_too_many_or_too_long(tmp_path: Path) -> None:
    path = tmp_path / "n.h5"
    for value, shown in [
        (np.arange(3), "attribute /:layer_names is int64 of shape (3,)"),
        ([f"layer{i}".encode() for i in range(MAX_LAYERS + 1)], f"lists {MAX_LAYERS + 1} names"),
        ([b"x" * (MAX_NAME + 1)], f"holds a name longer than {MAX_NAME} bytes"),
        (np.array([b"x" * 5000]), f"holds a name longer than {MAX_NAME} bytes"),
        ([b"\xff\xfe"], "holds a name that is not UTF-8"),
    ]:
        with h5py.File(path, "w") as f:
            f.attrs["layer_names"] = value
        refused(path, shown)


def test_refuses_duplicates_and_keeps_a_message_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"block1_conv1", b"block1_conv1"]
        f.create_group("block1_conv1").attrs["weight_names"] = []
    refused(path, "names layer 'block1_conv1' twice")
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = ["evil\nlayer\x1b[2J"]
    message = refused(path, "/evil\\nlayer\\x1b[2J is missing", expected=lambda name: [(1,)])
    assert "\x1b" not in message


def test_refuses_a_keras3_file_with_too_many_layers_or_two_of_a_name(tmp_path: Path) -> None:
    path = tmp_path / "many.weights.h5"
    with h5py.File(path, "w") as f:
        for i in range(MAX_LAYERS + 1):
            f.create_group(f"layers/dense_{i}")
    refused(path, f"group /layers has {MAX_LAYERS + 1} members")
    with h5py.File(path, "w") as f:
        for group in ("conv2d", "conv2d_1"):
            vars_ = f.create_group(f"layers/{group}/vars")
            vars_.attrs["name"] = "block1_conv1"
            vars_["0"], vars_["1"] = np.zeros(KERNEL, "f4"), np.zeros(64, "f4")
    refused(path, "group /layers/conv2d_1/vars is a second layer named 'block1_conv1'")


def test_refuses_files_that_are_not_keras_or_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    refused(path, "is an HDF5 file but not Keras weights")
    path = tmp_path / "junk.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(3000))
    refused(path, "could not be read by HDF5 (", "the file is damaged or not HDF5")
    with pytest.raises(FileNotFoundError):
        read_keras_layers(tmp_path / "absent.h5", SHAPES)
