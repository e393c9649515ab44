"""Weight formats and layouts: safetensors, timm's layout, Keras' HDF5 files, detection by content.

Parity is against the real thing: torchvision's and timm's models, and Keras 3 itself (torch backend),
on the photographs in tests/photos.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import vggnet
from tests.helpers import ModuleFolders, randomize_batchnorm
from vggnet.data.constants import KERAS_MEAN, KERAS_STD
from vggnet.data.decode import load_image
from vggnet.data.transforms import ImageClassification, keras_transforms
from vggnet.hub import _formats as formats
from vggnet.hub import load_state_dict_from_url
from vggnet.models import layouts

PHOTOS = sorted((Path(__file__).parents[1] / "photos").glob("*.[jp][pn]g"))


def photos(preset: ImageClassification) -> torch.Tensor:
    return torch.stack([preset(load_image(p)) for p in PHOTOS])


def seeded(arch: str, seed: int = 0) -> vggnet.VGG:
    torch.manual_seed(seed)
    return vggnet.get_model(arch).eval()


# Full-size models and files are built once per module (132 M parameters take seconds): read them, don't change them.
@pytest.fixture(scope="module")
def vgg11() -> vggnet.VGG:
    """`seeded("vgg11")`."""
    return seeded("vgg11")


@pytest.fixture(scope="module")
def vgg11_files(vgg11: vggnet.VGG, module_folders: ModuleFolders) -> dict[str, tuple[Path, str]]:
    """The vgg11 as safetensors in either layout: layout -> (path, the sha256 write_state_dict returned)."""
    folder = module_folders.mktemp("vgg11-safetensors")
    files = {}
    for layout in ("vggnet", "timm"):
        path = folder / f"{layout}.safetensors"
        files[layout] = (path, layouts.write_state_dict(vgg11.state_dict(), path, layout=layout))  # type: ignore[arg-type]
    return files


def small_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded vgg11 with the small "gap" head (10 M parameters): a real state dict where fc6's size is no claim."""
    torch.manual_seed(seed)
    return vggnet.vgg11(head="gap").state_dict()


def at_64(preset: ImageClassification) -> ImageClassification:
    """`preset` cropping 64x64 instead of 224x224 (12 times fewer pixels), the same numbers otherwise."""
    return ImageClassification(crop_size=64, resize_size=72, mean=preset.mean, std=preset.std)


# --- detection by content --------------------------------------------------------------------------


def test_detect_format_reads_content_not_suffix(tmp_path: Path) -> None:
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    torch.save(state, tmp_path / "a.safetensors")  # a zip file whatever its name says
    torch.save(state, tmp_path / "b.pth", _use_new_zipfile_serialization=False)
    formats.save_safetensors(state, tmp_path / "c.pth")
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "d.bin", "w") as f:
        f["x"] = np.zeros(3)
    assert formats.detect_format(tmp_path / "a.safetensors") == "zip"
    assert formats.detect_format(tmp_path / "b.pth") == "pickle"
    assert formats.detect_format(tmp_path / "c.pth") == "safetensors"
    assert formats.detect_format(tmp_path / "d.bin") == "hdf5"
    for name in ("a.safetensors", "b.pth", "c.pth"):
        assert torch.equal(layouts.read_state_dict(tmp_path / name)["w"], state["w"])


@pytest.mark.parametrize("header_size", [0x0280, 0x0380, 0x0580])
def test_a_safetensors_header_whose_length_looks_like_pickles_protocol_is_still_safetensors(tmp_path, header_size):
    """A header of 0x0280-0x0580 bytes (low byte 0x80) starts the file with pickle's PROTO opcode and a version."""
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    formats.save_safetensors(state, tmp_path / "plain.safetensors")
    data = (tmp_path / "plain.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + n].rstrip() + b" " * (header_size - len(data[8 : 8 + n].rstrip()))  # spaces: allowed padding
    path = tmp_path / "padded.safetensors"
    path.write_bytes(header_size.to_bytes(8, "little") + header + data[8 + n :])
    assert path.read_bytes()[0] == 0x80 and 2 <= path.read_bytes()[1] <= 5
    assert formats.detect_format(path) == "safetensors"
    assert torch.equal(layouts.read_state_dict(path)["w"], state["w"])


def test_detect_format_refuses_other_files_naming_the_formats(tmp_path: Path) -> None:
    page = tmp_path / "vgg16.safetensors"
    page.write_bytes(b"<!DOCTYPE html><html>Not Found</html>")
    with pytest.raises(ValueError, match=r"zip, pickle, safetensors, hdf5.*HTML error page"):
        formats.detect_format(page)


def test_safetensors_is_read_without_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = small_state()
    path = tmp_path / "vgg11.safetensors"
    layouts.write_state_dict(state, path)

    def no_pickle(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used for a safetensors file")

    monkeypatch.setattr(torch, "load", no_pickle)
    back = layouts.read_state_dict(path)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.slow
def test_torchvision_to_safetensors_to_vggnet_is_bit_exact(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    tv = randomize_batchnorm(torchvision.models.vgg11_bn(num_classes=10).eval(), var=(0.5, 2.0))
    path = tmp_path / "vgg11_bn.safetensors"
    digest = layouts.write_state_dict(tv.state_dict(), path)
    assert digest == formats.file_sha256(path) and len(digest) == 64
    state = layouts.read_state_dict(path)
    model = vggnet.vgg11_bn(num_classes=10, device="meta")  # every value comes from the file
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    x = photos(at_64(vggnet.VGG11_BN_Weights.DEFAULT.transforms()))
    with torch.no_grad():
        assert torch.equal(model(x), tv(x))


def test_write_state_dict_names_the_valid_suffixes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.safetensors.*\.pth"):
        layouts.write_state_dict({"w": torch.zeros(1)}, tmp_path / "x.ckpt")
    assert not list(tmp_path.iterdir())


def test_write_state_dict_pth_round_trip(tmp_path: Path) -> None:
    state = small_state()
    digest = layouts.write_state_dict(state, tmp_path / "x.pth")
    assert formats.detect_format(tmp_path / "x.pth") == "zip"
    assert digest == formats.file_sha256(tmp_path / "x.pth")
    back = layouts.read_state_dict(tmp_path / "x.pth")
    assert all(torch.equal(back[k], state[k]) for k in state)
    assert [p.name for p in tmp_path.iterdir()] == ["x.pth"]  # no temporary left


# --- timm --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["vgg11", pytest.param("vgg11_bn", marks=pytest.mark.slow)])
def test_timm_parity_on_photos_and_bit_exact_round_trip(arch: str, vgg11: vggnet.VGG) -> None:
    timm = pytest.importorskip("timm")
    model = vgg11 if arch == "vgg11" else seeded(arch)
    with torch.device("meta"):  # timm's random initialisation would be overwritten anyway
        reference = timm.create_model(arch, pretrained=False).eval()
    reference.load_state_dict(layouts.to_timm(model.state_dict()), strict=True, assign=True)
    x = photos(at_64(vggnet.get_model_weights(arch).DEFAULT.transforms()))  # the layout is the claim, not the size
    with torch.no_grad():
        ours, theirs = model(x), reference(x)
    assert ours.abs().max() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    back = layouts.from_timm(reference.state_dict())
    state = model.state_dict()
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_timm_layout_file_is_converted_on_read(vgg11: vggnet.VGG, vgg11_files: dict[str, tuple[Path, str]]) -> None:
    model = vgg11
    path, _ = vgg11_files["timm"]  # layouts.write_state_dict(model.state_dict(), path, layout="timm")
    raw = formats.load_safetensors(path)
    assert layouts.layout_of(raw) == "timm"
    assert raw["pre_logits.fc1.weight"].shape == (4096, 512, 7, 7)
    assert raw["pre_logits.fc2.weight"].shape == (4096, 4096, 1, 1)
    state = layouts.read_state_dict(path)
    assert layouts.layout_of(state) == "vggnet"
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# --- Keras -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras() -> object:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"Keras runs on the {keras.backend.backend()} backend; these tests need KERAS_BACKEND=torch")
    return keras


def _randomise(model: object, seed: int) -> None:
    """He-scaled random kernels and small random biases, so every layer (and every bias) matters."""
    rng = np.random.default_rng(seed)
    values = []
    for w in model.get_weights():  # type: ignore[attr-defined]
        fan_in = int(np.prod(w.shape[:-1])) if w.ndim > 1 else 1
        scale = np.sqrt(2.0 / fan_in) if w.ndim > 1 else 0.05
        values.append((rng.standard_normal(w.shape) * scale).astype(np.float32))
    model.set_weights(values)  # type: ignore[attr-defined]


def _write_published_layout(model: object, path: Path, names: str) -> None:
    """The layout of Keras' published VGG files: layer groups named in `layer_names`, weights per `weight_names`.

    names="keras1": `block1_conv1_W_1:0`/`block1_conv1_b_1:0` (the 2016 files); "keras2": `block1_conv1/kernel:0`.
    """
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]  # type: ignore[attr-defined]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"1.1.0" if names == "keras1" else b"2.2.4"
        for layer in model.layers:  # type: ignore[attr-defined]
            group = f.create_group(layer.name)
            arrays = layer.get_weights()
            suffixes = ["_W_1:0", "_b_1:0"] if names == "keras1" else ["/kernel:0", "/bias:0"]
            weight_names = [layer.name + s for s in suffixes[: len(arrays)]]
            group.attrs["weight_names"] = [n.encode() for n in weight_names]
            for n, a in zip(weight_names, arrays):
                group.create_dataset(n, data=a)


def _keras_logits(keras: object, model: object, images: np.ndarray) -> np.ndarray:
    from keras.applications.vgg16 import preprocess_input

    out = model(preprocess_input(images.copy()))  # type: ignore[operator]
    return np.asarray(keras.ops.convert_to_numpy(out))  # type: ignore[attr-defined]


def _photos_uint8(size: int) -> np.ndarray:
    """The photos as Keras' examples feed them: resized to size x size, RGB, (N, H, W, 3)."""
    return np.stack([np.asarray(load_image(p).resize((size, size))) for p in PHOTOS])


@pytest.mark.slow
def test_keras_preset_equals_preprocess_input(keras: object) -> None:
    from keras.applications.vgg16 import preprocess_input

    images = _photos_uint8(224)
    theirs = preprocess_input(images.astype(np.float32))[..., ::-1]  # BGR -> RGB for the comparison
    ours = keras_transforms(resize_size=224)(torch.from_numpy(images).permute(0, 3, 1, 2))
    np.testing.assert_allclose(ours.permute(0, 2, 3, 1).numpy(), theirs, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def keras_vgg16(keras: object) -> tuple[object, np.ndarray]:
    """Keras' VGG16 with random weights and its logits on the photos, built once for the three layouts."""
    reference = keras.applications.VGG16(weights=None, classifier_activation=None)  # type: ignore[attr-defined]
    _randomise(reference, seed=0)
    return reference, _keras_logits(keras, reference, _photos_uint8(224))


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["keras1", "keras2", "keras3"])
def test_keras_vgg16_logits_on_photos(
    keras: object, keras_vgg16: tuple[object, np.ndarray], tmp_path: Path, layout: str
) -> None:
    reference, theirs = keras_vgg16
    if layout == "keras3":
        path = tmp_path / "vgg16.weights.h5"
        reference.save_weights(path)
    else:
        path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
        _write_published_layout(reference, path, layout)
        check = keras.applications.VGG16(weights=None, classifier_activation=None)  # type: ignore[attr-defined]
        check.load_weights(path)  # Keras itself reads the file
        assert all(np.array_equal(a, b) for a, b in zip(check.get_weights(), reference.get_weights()))
    assert formats.detect_format(path) == "hdf5"
    arch, state = layouts.load_keras(path)
    assert arch == "vgg16"
    model = vggnet.vgg16()
    model.load_state_dict(state, strict=True)
    model.eval()
    images = _photos_uint8(224)
    x = keras_transforms(resize_size=224)(torch.from_numpy(images).permute(0, 3, 1, 2))
    with torch.no_grad():
        ours = model(x).numpy()
    assert np.abs(theirs).max() > 1  # the random network is far from silent
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
    assert len({int(i) for i in ours.argmax(1)}) > 1 or len(PHOTOS) == 1


def test_keras_vgg19_notop_features(keras: object, tmp_path: Path) -> None:
    reference = keras.applications.VGG19(weights=None, include_top=False, input_shape=(64, 64, 3))  # type: ignore[attr-defined]
    _randomise(reference, seed=1)
    path = tmp_path / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
    _write_published_layout(reference, path, "keras2")
    arch, state = layouts.load_keras(path)
    assert arch == "vgg19" and not any(k.startswith("classifier") for k in state)
    model = vggnet.vgg19(head="gap").eval()  # a notop file fills the features; any head's keys stay missing
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and sorted(missing) == sorted(k for k in model.state_dict() if k.startswith("classifier"))
    images = _photos_uint8(64)
    x = keras_transforms(crop_size=64, resize_size=64)(torch.from_numpy(images).permute(0, 3, 1, 2))
    with torch.no_grad():
        ours = model.forward_features(x).permute(0, 2, 3, 1).numpy()  # NCHW -> NHWC
    theirs = _keras_logits(keras, reference, images)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def test_keras_h5_that_is_not_vgg_is_refused(keras: object, tmp_path: Path) -> None:
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(ValueError, match="neither a 'layer_names' attribute"):
        layouts.load_keras(tmp_path / "x.h5")
    layers = {"block1_conv1": [np.zeros((3, 3, 3, 8)), np.zeros(8)]}
    with pytest.raises(ValueError, match="VGG16 has 13 and a VGG19 16"):
        layouts.from_keras(layers)


# --- through the one loader (checkpoint.load, builders, load_state_dict_from_url, records) -------------


def test_loader_reads_safetensors_files_in_either_layout(
    vgg11: vggnet.VGG, vgg11_files: dict[str, tuple[Path, str]]
) -> None:
    from vggnet.models.checkpoint import load

    state = vgg11.state_dict()
    for layout in ("vggnet", "timm"):
        path, _ = vgg11_files[layout]  # layouts.write_state_dict(state, path, layout=layout)
        loaded = load(path)
        assert loaded.arch == "vgg11" and len(loaded.categories or ()) == 1000
        assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in state.items())
    built = vggnet.vgg11(weights=str(vgg11_files["timm"][0]))  # a builder takes the file too
    assert all(torch.equal(built.state_dict()[k], v) for k, v in state.items())


def test_safetensors_url_and_record_are_verified_like_every_file(http_server, vgg11, vgg11_files, cache: Path) -> None:  # type: ignore[no-untyped-def]
    model = vgg11
    path, digest = vgg11_files["vggnet"]  # layouts.write_state_dict(model.state_dict(), path)
    url = http_server.add("/models/vgg11-mine.safetensors", path)
    state = load_state_dict_from_url(url, sha256=digest)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    record = vggnet.Weights(url=url, sha256=digest[:8])
    built = vggnet.vgg11(weights=record)
    assert all(torch.equal(built.state_dict()[k], v) for k, v in model.state_dict().items())
    bad = http_server.add("/models/other.safetensors", path)
    with pytest.raises(vggnet.ChecksumError):
        load_state_dict_from_url(bad, sha256="0" * 64)
    assert not (cache / "other.safetensors").exists()


@pytest.mark.slow  # builds a full vgg19 (144 M parameters); test_keras_vgg19_notop_features reads the same layout
def test_loader_reads_keras_notop_with_its_preset_and_a_new_classifier(keras: object, tmp_path: Path) -> None:
    from vggnet.models.checkpoint import load

    reference = keras.applications.VGG19(weights=None, include_top=False, input_shape=(64, 64, 3))  # type: ignore[attr-defined]
    _randomise(reference, seed=2)
    path = tmp_path / "vgg19_notop.h5"
    _write_published_layout(reference, path, "keras2")
    with pytest.raises(ValueError, match="vgg19 weights, not vgg16"):
        load(path, arch="vgg16")
    loaded = load(path)
    assert loaded.arch == "vgg19" and loaded.categories is None  # no top: no classes
    assert loaded.preset.mean == list(KERAS_MEAN) and loaded.preset.std == list(KERAS_STD)
    _, state = layouts.load_keras(path)
    ours = loaded.model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in state.items())
    assert ours["classifier.0.weight"].std() > 0  # initialised, not left empty
