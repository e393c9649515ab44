"""The package as users get it: public API, no torchvision, no side effects on import, the wheel's contents."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import vggnet

ROOT = Path(__file__).parents[1]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_public_api_is_exported_and_typed():
    assert vggnet.__version__
    missing = [name for name in vggnet.__all__ if not hasattr(vggnet, name)]
    assert missing == []
    assert vggnet.list_models() == ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]
    assert (ROOT / "vggnet" / "py.typed").exists()


def test_import_and_build_touch_neither_disk_nor_network():
    # An audit hook records every file opened and every socket made after torch is imported
    # (torch's own start-up is not ours). Python source and bytecode of the package are allowed.
    code = r"""
import sys, torch
events = []
def hook(event, args):
    if event == "open" and isinstance(args[0], str) and not args[0].endswith((".py", ".pyc", ".so")):
        if "__pycache__" not in args[0] and not args[0].endswith(("/vggnet", "/vggnet/")):
            events.append(("open", args[0]))
    elif event.startswith("socket."):
        events.append((event, repr(args)[:80]))
sys.addaudithook(hook)
import importlib, pkgutil, vggnet
for mod in pkgutil.iter_modules(vggnet.__path__):
    if mod.name != "__main__":
        importlib.import_module("vggnet." + mod.name)
model = vggnet.vgg16()
model(torch.zeros(1, 3, 32, 32))
print(events)
"""
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert out.stderr == ""


def test_torchvision_is_never_imported():
    # With torchvision made unimportable, every module still imports and works.
    code = r"""
import sys, pkgutil, importlib
sys.modules["torchvision"] = None
import vggnet
for mod in pkgutil.iter_modules(vggnet.__path__):
    if mod.name != "__main__":
        importlib.import_module("vggnet." + mod.name)
import torch
vggnet.vgg11_bn()(torch.zeros(1, 3, 32, 32))
vggnet.VGG16_Weights.DEFAULT.transforms()(torch.zeros(3, 40, 50, dtype=torch.uint8))
print(sorted(m for m in sys.modules if m.startswith("torchvision")))
"""
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['torchvision']"  # only the None placeholder we put there


def test_source_never_mentions_a_torchvision_import():
    for path in (ROOT / "vggnet").rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            assert not stripped.startswith(("import torchvision", "from torchvision")), f"{path}: {line}"


@pytest.mark.slow
def test_wheel_ships_the_data_and_the_type_marker(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("vggnet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "vggnet/py.typed" in names and "vggnet/data/imagenet_categories.txt" in names
    assert not any(name.startswith(("tests/", "benchmarks/")) for name in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    runtime = [line for line in requires if "extra ==" not in line]
    assert sorted(runtime) == [
        "Requires-Dist: filelock>=3.8",
        "Requires-Dist: numpy",
        "Requires-Dist: requests>=2.25",
        "Requires-Dist: torch>=2.1",
        "Requires-Dist: tqdm>=4.60",
    ]
    assert any("torchvision" in line and 'extra == "test"' in line for line in requires)
