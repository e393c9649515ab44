"""LPIPS against the `lpips` package: same random trunk in both, linear layers served on loopback."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path

import pytest
import torch

import vggnet
import vggnet.seeing.lpips as vlpips
from tests.helpers import PHOTOS
from vggnet.seeing.lpips import LPIPS, LPIPS_WEIGHTS

lpips = pytest.importorskip("lpips")  # a test dependency: the reference implementation

PACKAGE_WEIGHTS = Path(lpips.__file__).parent / "weights"


def _package_file(version: str) -> Path:
    return PACKAGE_WEIGHTS / f"v{version}" / "vgg.pth"


@pytest.fixture(scope="module")
def trunk() -> vggnet.VGG:
    torch.manual_seed(16)
    return vggnet.vgg16().eval()


@pytest.fixture
def served(http_server, monkeypatch):
    """Both versions' files from the installed lpips package, on loopback, behind the pinned records."""
    records = {}
    for version, record in LPIPS_WEIGHTS.items():
        url = http_server.add(f"/lpips/v{version}/vgg.pth", _package_file(version))
        records[version] = dataclasses.replace(record, url=url)
    monkeypatch.setattr(vlpips, "LPIPS_WEIGHTS", records)
    return http_server


def _reference(trunk: vggnet.VGG, version: str) -> torch.nn.Module:
    """lpips.LPIPS(net="vgg") with `trunk`'s convolutions in place of torchvision's weights."""
    with warnings.catch_warnings():  # lpips still passes torchvision the deprecated `pretrained=False`
        warnings.simplefilter("ignore", UserWarning)
        theirs = lpips.LPIPS(net="vgg", version=version, pnet_rand=True, verbose=False)
    ours = trunk.features.state_dict()
    # lpips keeps torchvision's feature indices as module names inside its five slices: slice1.0 = features.0
    state = {name: ours[name.split(".", 1)[1]] for name in theirs.net.state_dict()}
    theirs.net.load_state_dict(state)
    return theirs.eval()


@pytest.fixture(scope="module")
def reference(trunk):
    """version -> the lpips package's metric on `trunk` (built once: torchvision initialises a whole vgg16)."""
    built: dict[str, torch.nn.Module] = {}

    def get(version: str) -> torch.nn.Module:
        if version not in built:
            built[version] = _reference(trunk, version)
        return built[version]

    return get


def _pairs(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    sizes = [(2, 64, 64), (1, 32, 48), (2, 16, 16)]
    return [
        (torch.rand(n, 3, h, w, generator=g) * 2 - 1, torch.rand(n, 3, h, w, generator=g) * 2 - 1) for n, h, w in sizes
    ]


def test_the_pinned_records_are_the_files_the_lpips_package_ships():
    for version, record in LPIPS_WEIGHTS.items():
        data = _package_file(version).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (record.sha256, record.size)
        assert record.url.startswith("https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/")
        assert record.url.endswith(f"/lpips/weights/v{version}/vgg.pth")
    assert LPIPS_WEIGHTS["0.1"].file_name != LPIPS_WEIGHTS["0.0"].file_name  # both are called vgg.pth upstream


@pytest.mark.parametrize("version", ["0.1", "0.0"])
@pytest.mark.slow
def test_distances_and_maps_equal_the_lpips_package(served, trunk, reference, version):
    ours, theirs = LPIPS(trunk, version=version, progress=False), reference(version)
    maps = LPIPS(trunk, version=version, spatial=True, progress=False)
    for x, y in _pairs(seed=1):
        with torch.no_grad():
            want = theirs(x, y)
            theirs.spatial = True
            want_map = theirs(x, y)
            theirs.spatial = False
        got, got_map = ours(x, y), maps(x, y)
        assert got.shape == (x.shape[0],) and got_map.shape == (x.shape[0], 1, *x.shape[2:])
        torch.testing.assert_close(got, want.flatten(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_map, want_map, rtol=1e-5, atol=1e-6)
        assert (got > 0).all()
    assert served.count(f"/lpips/v{version}/vgg.pth") == 1


def test_the_file_is_fetched_once_then_read_from_the_cache(served, trunk):
    LPIPS(trunk, progress=False)
    LPIPS(trunk, progress=False)
    assert served.count("/lpips/v0.1/vgg.pth") == 1


@pytest.mark.slow
def test_zero_for_identical_images_and_symmetric(served, trunk):
    metric = LPIPS(trunk, progress=False)
    x, y = _pairs(seed=2)[0]
    assert torch.equal(metric(x, x), torch.zeros(2))
    torch.testing.assert_close(metric(x, y), metric(y, x))


@pytest.mark.slow
def test_gradients_reach_the_input_and_equal_the_lpips_package(served, trunk, reference):
    ours, theirs = LPIPS(trunk, progress=False), reference("0.1")
    x, y = _pairs(seed=3)[0]
    grads = []
    for metric in (ours, theirs):
        xi = x.clone().requires_grad_(True)
        metric(xi, y).sum().backward()
        grads.append(xi.grad)
    assert grads[0] is not None and grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)
    assert all(p.grad is None and not p.requires_grad for p in ours.parameters())


@pytest.mark.slow
def test_usable_as_a_loss(served, trunk):
    metric = LPIPS(trunk, input_range="0-1", progress=False)
    g = torch.Generator().manual_seed(4)
    target = torch.rand(1, 3, 32, 32, generator=g)
    image = torch.rand(1, 3, 32, 32, generator=g).requires_grad_(True)
    optimizer = torch.optim.Adam([image], lr=0.05)
    first = metric(image, target).mean().item()
    for _ in range(5):
        optimizer.zero_grad()
        loss = metric(image, target).mean()
        loss.backward()
        optimizer.step()
    assert metric(image, target).mean().item() < 0.8 * first
    metric.train()
    assert not metric.training and not metric.features.training


def test_zero_one_input_is_mapped_to_minus_one_one(served, trunk):
    x, y = _pairs(seed=5)[0]
    torch.testing.assert_close(
        LPIPS(trunk, input_range="0-1", progress=False)((x + 1) / 2, (y + 1) / 2), LPIPS(trunk, progress=False)(x, y)
    )


@pytest.mark.slow
def test_lin_weights_from_a_path_or_a_state_dict_skip_the_download(served, trunk, tmp_path):
    x, y = _pairs(seed=6)[0]
    downloaded = LPIPS(trunk, progress=False)(x, y)
    served.reset()
    path = _package_file("0.1")
    from_path = LPIPS(trunk, lin_weights=path)(x, y)
    state = torch.load(path, map_location="cpu", weights_only=True)
    from_state = LPIPS(trunk, lin_weights=state)(x, y)
    assert torch.equal(from_path, downloaded) and torch.equal(from_state, downloaded)
    assert served.log() == []
    with pytest.raises(ValueError, match=r"lack \['lin4.model.1.weight'\]"):
        LPIPS(trunk, lin_weights={k: v for k, v in state.items() if not k.startswith("lin4")})


def test_a_corrupted_download_is_refused(http_server, monkeypatch, trunk):
    data = bytearray(_package_file("0.1").read_bytes())
    data[-1] ^= 0xFF
    url = http_server.add("/lpips/v0.1/vgg.pth", bytes(data))
    monkeypatch.setattr(vlpips, "LPIPS_WEIGHTS", {"0.1": dataclasses.replace(LPIPS_WEIGHTS["0.1"], url=url)})
    with pytest.raises(vggnet.ChecksumError):
        LPIPS(trunk, progress=False)


@pytest.mark.slow
def test_an_arch_name_loads_the_default_weights(served, tmp_path, monkeypatch):
    """With the official vgg16 record pointing at a local file, "vgg16" is that file's trunk."""
    torch.manual_seed(7)
    state = vggnet.vgg16().state_dict()
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(vggnet.VGG16_Weights.DEFAULT, "_value_", vggnet.Weights(url=str(path), sha256=digest))
    metric = LPIPS("vgg16", progress=False)
    assert torch.equal(metric.features[28].weight, state["features.28.weight"])
    assert len(metric.features) == 30  # up to relu5_3: pool5 is not needed


def test_other_trunks_with_the_five_taps_work_and_others_are_refused(served):
    with torch.device("meta"):
        vgg19_bn, vgg11 = vggnet.vgg19_bn(), vggnet.vgg11()
    assert LPIPS(vgg19_bn, lin_weights=_package_file("0.1"))._taps
    with pytest.raises(ValueError, match=r"this VGG has no relu1_2, relu2_2, relu3_3, relu4_3, relu5_3\. Use vgg16"):
        LPIPS(vgg11, lin_weights=_package_file("0.1"))
    with pytest.raises(TypeError, match="net must be a VGG or a builder name"):
        LPIPS(torch.nn.Conv2d(3, 3, 1))  # type: ignore[arg-type]


def test_bad_arguments_and_inputs_name_the_fix(trunk):
    path = _package_file("0.1")
    with pytest.raises(ValueError, match=r"version must be one of '0.1', '0.0', got '0.2'"):
        LPIPS(trunk, version="0.2", lin_weights=path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"input_range must be one of '-1-1', '0-1'"):
        LPIPS(trunk, input_range="0-255", lin_weights=path)  # type: ignore[arg-type]
    metric = LPIPS(trunk, lin_weights=path)
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="same shape"):
        metric(x, torch.zeros(1, 3, 32, 48))
    with pytest.raises(ValueError, match="at least 16x16"):
        metric(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"floating-point.*x\.float\(\) / 255"):
        metric(x.to(torch.uint8), x)
    with pytest.raises(ValueError, match="add a batch dimension"):
        metric(x[0], x[0])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_the_lpips_package_on_the_cpu(served, trunk, reference, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # TF32 convolutions keep ~3 digits
    ours, theirs = LPIPS(trunk, progress=False).cuda(), reference("0.1")
    for x, y in _pairs(seed=8):
        with torch.no_grad():
            want = theirs(x, y).flatten()
        torch.testing.assert_close(ours(x.cuda(), y.cuda()).cpu(), want, rtol=1e-4, atol=1e-5)


# --- the command -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_command_on_a_random_trunk_equals_the_library(capsys):
    from vggnet.cli import main
    from vggnet.data.decode import load_image, pil_to_tensor

    photos = [str(PHOTOS / "chelsea.png"), str(PHOTOS / "coffee.jpg")]
    common = ["--arch", "vgg16", "--weights", "none", "--lin-weights", str(_package_file("0.1")), "--device", "cpu"]
    torch.manual_seed(4)
    assert main(["lpips", *photos, "--size", "48x64", *common, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["size"] == [48, 64] and data["version"] == "0.1" and data["arch"] == "vgg16"
    torch.manual_seed(4)
    metric = LPIPS(vggnet.vgg16(), input_range="0-1", lin_weights=_package_file("0.1"))
    x, y = (pil_to_tensor(load_image(p).resize((64, 48), 2)).float()[None] / 255 for p in photos)  # 2: bilinear
    assert data["lpips"] == pytest.approx(float(metric(x, y)[0]), rel=1e-5)
    assert main(["lpips", photos[0], photos[0], *common]) == 0
    assert capsys.readouterr().out == "0.0000\n"


def test_the_command_refuses_images_of_different_sizes(capsys):
    from vggnet.cli import main

    argv = ["lpips", str(PHOTOS / "chelsea.png"), str(PHOTOS / "coffee.jpg"), "--weights", "none"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "chelsea.png is 451x300 and" in err and "coffee.jpg is 600x400" in err and "--size" in err
