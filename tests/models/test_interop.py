"""vggnet's models in timm's registry (issue 25): `register_timm`, and timm's own test_models.py run against them.

tests/vendor/timm_test_models.py is timm 1.0.31's tests/test_models.py, unchanged. The slow test copies it into a
temporary folder with a conftest.py that calls `register_timm()`, adds vggnet's module to the list of model
families timm checks `forward_intermediates` on (FEAT_INTER_FILTERS, which timm keys by module name), and runs it
for the vggnet_* names in a fresh process. The tests that download pretrained weights are left out (no network).
"""

import os
import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
import torch

import vggnet
from vggnet.errors import MissingDependency
from vggnet.models.interop import node_names, register_timm
from vggnet.models.taps import module_names

ROOT = Path(__file__).parents[2]
VENDORED = ROOT / "tests" / "vendor" / "timm_test_models.py"
# timm's module list keyed by module name: vggnet's entrypoints live in vggnet.models._timm
FEAT_INTER_LAST = (
    "    'pnasnet', 'selecsls', 'senet', 'sequencer', 'vgg', 'visformer', 'xception', 'xception_aligned',\n]"
)
MARKERS = ("base", "forward", "backward", "cfg", "cfg_nonstd", "torchscript", "features", "fxforward", "fxbackward",
           "timeout")  # fmt: skip
# every test of test_models.py that takes the registered names (the others name their models)
TIMM_TESTS = {
    "test_model_forward", "test_model_backward", "test_model_default_cfgs", "test_model_forward_torchscript",
    "test_model_forward_features", "test_model_forward_intermediates_features", "test_model_forward_intermediates",
    "test_prune_intermediate_layers_contract", "test_model_forward_fx", "test_model_backward_fx",
    "test_model_forward_fx_torchscript",
}  # fmt: skip
NETWORK = "not pretrained"  # test_model_load_pretrained and test_model_features_pretrained download the weights


def test_timm_builds_vggnets_models_with_its_own_arguments(monkeypatch):
    timm = pytest.importorskip("timm")
    names = register_timm()
    assert names == [f"vggnet_{arch}" for arch in vggnet.list_models()] == register_timm()  # twice: the same
    assert timm.list_models("vggnet_*") == sorted(names)
    model = timm.create_model("vggnet_vgg16", num_classes=0, global_pool="", device="meta", dtype=torch.float64)
    assert type(model) is vggnet.VGG and model.global_pool == "" and model.num_classes == 0
    assert next(model.parameters()).dtype == torch.float64 and next(model.parameters()).is_meta
    assert model.default_cfg["url"] == vggnet.VGG16_Weights.DEFAULT.url and model.default_cfg["num_classes"] == 1000
    features = timm.create_model("vggnet_vgg11", features_only=True, out_indices=(1, 5), device="meta")
    assert features.feature_info.channels() == [128, 512] and features.feature_info.reduction() == [2, 32]
    monkeypatch.setenv("VGGNET_OFFLINE", "1")  # pretrained weights come through vggnet's verified loader
    with pytest.raises(FileNotFoundError, match=r"vgg16-397923af\.pth"):
        timm.create_model("vggnet_vgg16", pretrained=True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'not_a_model_arg'"):
        timm.create_model("vggnet_vgg11", device="meta", not_a_model_arg=1)


def test_register_timm_without_timm_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(MissingDependency, match="pip install timm"):
        register_timm()


def timm_suite(folder: Path) -> Path:
    """timm's test_models.py in `folder`, ready to run for vggnet's registered models."""
    text = VENDORED.read_text(encoding="utf-8")
    assert FEAT_INTER_LAST in text, "timm's FEAT_INTER_FILTERS changed: update FEAT_INTER_LAST"
    text = text.replace(FEAT_INTER_LAST, FEAT_INTER_LAST[:-1] + "    '_timm',\n]")
    (folder / "test_models.py").write_text(text, encoding="utf-8")
    (folder / "conftest.py").write_text("from vggnet.models.interop import register_timm\n\nregister_timm()\n")
    (folder / "pytest.ini").write_text("[pytest]\nmarkers =\n" + "".join(f"    {m}\n" for m in MARKERS))
    return folder / "junit.xml"


# The eight registered names share every line of vggnet's code and differ in their layer lists and BatchNorm:
# timm's suite runs on one of each kind, the smallest plain network and the most used BatchNorm one, both in
# one process (timm collects its 18,000 test names first, once). All eight names' registration is checked
# above; the suite on all eight took 4.7 minutes of the slow matrix's 2 cores.
TIMM_SUITE_MODELS = ("vggnet_vgg11", "vggnet_vgg16_bn")


@pytest.mark.slow
def test_timms_own_test_models_pass_for_vggnets_registered_models(tmp_path):
    pytest.importorskip("timm")
    junit = timm_suite(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert set(TIMM_SUITE_MODELS) <= set(register_timm())
    names = " or ".join(f"{name}]" for name in TIMM_SUITE_MODELS)
    command = [sys.executable, "-m", "pytest", "test_models.py", "-k", f"({names}) and {NETWORK}", "-q",
               "-p", "no:cacheprovider", f"--junitxml={junit}"]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=1800, env=env)
    assert done.returncode == 0, done.stdout[-5000:]
    ran: dict[str, set[str]] = {name: set() for name in TIMM_SUITE_MODELS}
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        assert not list(case), f"{case.get('name')} did not pass"  # a child element: failure, error or skipped
        found = re.fullmatch(r"(\w+)\[(?:\d+-)?(vggnet_\w+)\]", str(case.get("name")))
        assert found is not None and found.group(2) in ran, case.get("name")
        ran[found.group(2)].add(found.group(1))
    assert ran == {name: TIMM_TESTS for name in TIMM_SUITE_MODELS}  # every test of timm's that takes a registered name


@pytest.mark.parametrize("head", ["vgg", "gap", "fc7"])
def test_node_names_follow_the_head(head):
    with torch.device("meta"):
        model = vggnet.vgg11(head=head, num_classes=10)
    assert node_names("vgg11", head) == {name: path for path, name in module_names(model).items()}
    with pytest.raises(ValueError, match="head must be one of"):
        node_names("vgg11", "max")
