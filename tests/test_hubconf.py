"""torch.hub entry points, loaded from this checkout with source="local"."""

import importlib.util
from pathlib import Path

import pytest
import torch

import vggnet
from tests.helpers import fingerprint
from vggnet.models.weights import Weights

REPO = str(Path(__file__).resolve().parents[1])
ENTRY_POINTS = [*vggnet.list_models(), "get_weight"]


def test_entry_points_and_dependencies():
    spec = importlib.util.spec_from_file_location("hubconf", Path(REPO) / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    public = sorted(n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_"))
    assert public == sorted(ENTRY_POINTS)
    for name in vggnet.list_models():
        assert getattr(hubconf, name) is getattr(vggnet, name)
    for dependency in hubconf.dependencies:
        assert importlib.util.find_spec(dependency) is not None


@pytest.mark.parametrize("arch", ["vgg11", "vgg16_bn"])
def test_load_a_builder(arch):
    model = torch.hub.load(REPO, arch, source="local", num_classes=10, device="meta")
    assert isinstance(model, vggnet.VGG) and model.num_classes == 10
    assert [k for k in model.state_dict()] == [k for k in vggnet.get_model(arch, device="meta").state_dict()]


def test_get_weight():
    weights = torch.hub.load(REPO, "get_weight", "VGG16_Weights.IMAGENET1K_FEATURES", source="local")
    assert weights is vggnet.VGG16_Weights.IMAGENET1K_FEATURES and weights.meta["categories"] is None


@pytest.mark.slow
def test_load_with_weights(vgg16_checkpoints):
    ckpt = vgg16_checkpoints.zip
    record = Weights(url=str(ckpt.path), sha256=ckpt.sha256)
    model = torch.hub.load(REPO, "vgg16", source="local", weights=record)
    assert fingerprint(model.state_dict()) == vgg16_checkpoints.fingerprint


def test_unknown_entry_point():
    with pytest.raises(RuntimeError, match="vgg17"):
        torch.hub.load(REPO, "vgg17", source="local")
