"""Fixtures of the command-line tests: a seeded vgg11 checkpoint, stand-in official records, a labelled folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vggnet
from tests.cli.helpers import make_enum, save_hub_style
from tests.helpers import CLASSES, small_model, write_labelled
from tests.helpers import file_sha256 as sha256
from vggnet.hub._fetching import OFFICIAL_BASE
from vggnet.models import weights as weights_module
from vggnet.models.weights import Weights


@pytest.fixture(scope="module")
def seeded_vgg11(module_folders) -> Path:
    """A full-size vgg11 checkpoint (torchvision's initialisation, seed 0) whose fc8 is scaled up 300x,
    so that images get clearly different, confident answers; saved as `vgg11-<sha256[:8]>.pth`."""
    torch.manual_seed(0)
    model = vggnet.vgg11()
    with torch.no_grad():
        model.classifier[6].weight.mul_(300)
    return save_hub_style(model.state_dict(), module_folders.mktemp("seeded"), "vgg11")


@pytest.fixture
def fake_records(tmp_path, monkeypatch, http_server):
    """Two official-looking records for small generated files, served on loopback through VGGNET_MIRROR."""
    source = tmp_path / "generated"
    source.mkdir()
    states = {
        "vgg11": {"features.0.weight": torch.randn(64, 3, 3, 3), "classifier.6.bias": torch.randn(1000)},
        "vgg16": {"features.0.weight": torch.randn(64, 3, 3, 3), "features.0.bias": torch.randn(64)},
    }
    files = {arch: save_hub_style(state, source, arch) for arch, state in states.items()}
    enums = {}
    for arch, path in files.items():
        http_server.add(f"/models/{path.name}", path)
        record = Weights(url=OFFICIAL_BASE + path.name, sha256=sha256(path), size=path.stat().st_size)
        enums[arch] = make_enum(f"{arch.upper()}_Weights", {"IMAGENET1K_V1": record})
    monkeypatch.setattr(weights_module, "WEIGHTS_ENUMS", enums)
    monkeypatch.setenv("VGGNET_MIRROR", http_server.url("/models"))
    monkeypatch.setenv("VGGNET_HOME", str(tmp_path / "cache"))
    return {arch: (files[arch], states[arch], enums[arch].DEFAULT) for arch in files}


@pytest.fixture(scope="module")
def seven_classes(module_folders):
    """A plain state dict of the seeded 7-class small_model (conftest), and a labelled folder with a corrupt file."""
    folder = module_folders.mktemp("seven")
    weights = folder / "vgg11-seven.pth"
    torch.save(small_model().state_dict(), weights)
    data = write_labelled(folder / "data", CLASSES, per_class=2)
    return weights, data
