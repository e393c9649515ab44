"""The package as users get it: public API, no torchvision, no side effects on import, the wheel's contents."""

import ast
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


@pytest.mark.slow
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


def torchvision_loads(path: Path) -> list[str]:
    """Where a module can load torchvision: import statements and import_module/__import__ calls, by function."""
    tree = ast.parse(path.read_text())
    found = []
    for func in [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))]:
        body = func.body if isinstance(func, ast.Module) else [func]
        nodes = ast.walk(func) if not isinstance(func, ast.Module) else (n for stmt in body for n in _shallow(stmt))
        for node in nodes:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                callee = ast.unparse(node.func)
                if callee.endswith(("import_module", "__import__")):
                    names = [str(node.args[0].value)]
            if any(n.split(".")[0] == "torchvision" for n in names):
                found.append(f"{path.name}:{getattr(func, 'name', '<module>')}")
    return sorted(set(found))


def _shallow(stmt: ast.AST):
    """The nodes of a module-level statement, not descending into functions (those are checked on their own)."""
    stack = [] if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) else [stmt]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(
            c for c in ast.iter_child_nodes(node) if not isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef))
        )


@pytest.mark.slow
def test_only_the_benchmark_can_load_torchvision_and_only_when_asked(tmp_path):
    # The one exception to "never imports torchvision": `vggnet bench` compares against it when it is
    # installed (issue 6), loading it inside a function at that moment. Nothing else may load it at all.
    loads = [where for path in sorted((ROOT / "vggnet").rglob("*.py")) for where in torchvision_loads(path)]
    assert loads == ["bench.py:_torchvision", "bench.py:_torchvision_model"]
    # (tests use importorskip(...): not a call the scanner counts)
    assert (
        torchvision_loads(ROOT / "tests" / "models" / "test_vgg.py") == []
    )  # tests use importorskip(...): not a call we count
    probe = tmp_path / "_probe_torchvision_loads.py"  # the scanner does see each way of loading it
    probe.write_text("import torchvision\ndef f():\n    from torchvision import models\n"
                     "def g():\n    importlib.import_module('torchvision.models')\n")  # fmt: skip
    assert torchvision_loads(probe) == ["_probe_torchvision_loads.py:<module>", "_probe_torchvision_loads.py:f",
                                        "_probe_torchvision_loads.py:g"]  # fmt: skip


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
    assert "vggnet/cli/__init__.py" in names and "vggnet/cli/images.py" in names  # the subpackage ships too
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
