"""The package as users get it: public API, no torchvision, no side effects on import, the wheel's contents."""

import ast
import subprocess
import sys
import zipfile
from graphlib import CycleError, TopologicalSorter
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
    assert torchvision_loads(ROOT / "tests" / "test_model.py") == []  # tests use importorskip(...): not a call we count
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


# --- the import graph ------------------------------------------------------------------------------


def vggnet_imports(folder: Path) -> dict[str, dict[str, set[str]]]:
    """For each module of the package in `folder`, subpackages included: the package modules it imports, at module
    level ("module") and inside functions ("function"). Imports under `if TYPE_CHECKING:` never run and are
    left out; `vggnet` is the package's `__init__`, `vggnet.cli` the `__init__` of its `cli/`.
    """
    package = folder.name
    paths = {}
    for path in folder.rglob("*.py"):
        parts = path.relative_to(folder).with_suffix("").parts
        paths[".".join((package, *(parts[:-1] if parts[-1] == "__init__" else parts)))] = path

    def target(node: ast.ImportFrom | ast.Import, name: str) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names if alias.name.split(".")[0] == package]
        if node.level == 0:
            base = node.module or ""
            if base.split(".")[0] != package:
                return []
        else:  # relative to the package the module is in (an __init__ is in its own)
            here = name if paths[name].stem == "__init__" else name.rpartition(".")[0]
            for _ in range(node.level - 1):
                here = here.rpartition(".")[0]
            base = here + ("." + node.module if node.module else "")
        # `from x import y`: the submodule x.y if there is one, else a name of x
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names]

    def walk(node: ast.AST, name: str, in_function: bool, found: dict[str, set[str]]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for stmt in child.orelse:
                    walk(stmt, name, in_function, found)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found["function" if in_function else "module"].update(target(child, name))
            walk(child, name, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)), found)

    graph = {}
    for name, path in paths.items():
        found: dict[str, set[str]] = {"module": set(), "function": set()}
        walk(ast.parse(path.read_text(encoding="utf-8")), name, False, found)
        graph[name] = {kind: {t for t in targets if t != name} for kind, targets in found.items()}
    return graph


def import_cycle(graph: dict[str, dict[str, set[str]]]) -> list[str] | None:
    """One cycle through the module- and function-level imports of `graph`, or None."""
    try:
        TopologicalSorter({name: kinds["module"] | kinds["function"] for name, kinds in graph.items()}).prepare()
    except CycleError as err:
        return list(err.args[1])
    return None


def test_the_import_graph_has_no_cycle_and_no_import_hidden_in_a_function():
    graph = vggnet_imports(ROOT / "vggnet")
    assert import_cycle(graph) is None
    # a function-level import hides a cycle; the command line imports torch anyway, so it loads its modules up front
    hidden = {name: sorted(kinds["function"]) for name, kinds in graph.items() if kinds["function"]}
    assert hidden == {}, hidden
    # the command line sits on top: nothing below imports it, and each command module imports only the shared ones
    cli = {name for name in graph if name == "vggnet.cli" or name.startswith("vggnet.cli.")}
    assert {"vggnet.cli.args", "vggnet.cli.output", "vggnet.cli.images"} <= cli
    assert [name for name in graph if name not in cli and graph[name]["module"] & cli] == ["vggnet.__main__"]
    shared = {"vggnet.cli.args", "vggnet.cli.output"}
    for name in cli - shared - {"vggnet.cli"}:
        assert graph[name]["module"] & cli <= shared, name
    # the layers of the hub point one way: config <- files <- cache, locks <- partial <- download, loading <- hub
    # <- weights (cache, locks <- cache_admin)
    assert graph["vggnet.models.config"]["module"] == set()
    assert graph["vggnet.hub._files"]["module"] == set()
    assert graph["vggnet.hub._cache"]["module"] <= {"vggnet.hub._files", "vggnet.models.config"}
    assert graph["vggnet.hub._locks"]["module"] <= {"vggnet.hub._files", "vggnet.models.config"}
    store = {"vggnet.hub._files", "vggnet.hub._cache", "vggnet.hub._locks", "vggnet.models.config"}
    assert graph["vggnet.hub._admin"]["module"] <= store
    assert graph["vggnet.hub._partial"]["module"] <= store
    assert graph["vggnet.hub._download"]["module"] <= store | {
        "vggnet.hub._partial",
        "vggnet.checks",
        "vggnet.hub._deadline",
    }
    assert graph["vggnet.hub._deadline"]["module"] == set()  # requests and urllib3 only, imported on first use
    # formats (file formats and layouts, issue 13) sits below the hub: the hub tells safetensors files by content
    assert graph["vggnet.hub._formats"]["module"] <= {"vggnet.models.config"}
    # loading (the weights-only load of a verified open file) sits beside download, below the hub
    assert graph["vggnet.hub._loading"]["module"] <= store | {"vggnet.hub._formats"}
    below_hub = store | {"vggnet.hub._download", "vggnet.checks", "vggnet.hub._formats", "vggnet.hub._loading"}
    assert graph["vggnet.hub._fetching"]["module"] <= below_hub
    # what a source, a state dict and a fine-tuned checkpoint are is decided below the loader, fetching nothing
    for name in ("vggnet.models.sources", "vggnet.models.state_dicts", "vggnet.models.finetuned"):
        assert not {"vggnet.hub._fetching", "vggnet.models.checkpoint"} & graph[name]["module"], name
    # one image file -> checked pixels (decode) <- the presets (transforms): still below the hub's layers
    assert graph["vggnet.data.decode"]["module"] <= {"vggnet.checks", "vggnet.models.config"}
    assert graph["vggnet.data.transforms"]["module"] <= {"vggnet.checks", "vggnet.models.config", "vggnet.data.decode"}
    assert {"vggnet.hub._fetching", "vggnet.data.transforms"} <= graph["vggnet.models.weights"]["module"]
    # fine-tuning in layers: images, runs and distributed <- trainers <- finetune, never back
    assert graph["vggnet.data.distributed"]["module"] == set()
    below = (
        "vggnet.data.images",
        "vggnet.train.runs",
        "vggnet.data.distributed",
        "vggnet.train.trainers",
        "vggnet.batch.engine",
        "vggnet.deploy.quantize",
    )
    assert not any("vggnet.train.finetune" in graph[name]["module"] for name in below)


def test_the_import_graph_scanner_sees_cycles_and_hidden_imports(tmp_path):
    package = tmp_path / "vggnet"
    package.mkdir()
    (package / "__init__.py").write_text("from .a import f\n__version__ = '0'\n")
    (package / "a.py").write_text("from . import b\ndef f():\n    from .c import g\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n")
    (package / "c.py").write_text("import vggnet.a\nfrom . import __version__\n")
    graph = vggnet_imports(package)
    assert graph["vggnet.a"] == {"module": {"vggnet.b"}, "function": {"vggnet.c"}}
    assert graph["vggnet.b"] == {"module": set(), "function": set()}  # TYPE_CHECKING only
    assert graph["vggnet.c"]["module"] == {"vggnet.a", "vggnet"}
    cycle = import_cycle(graph)
    assert cycle is not None and {"vggnet.a", "vggnet.c"} <= set(cycle)
    (package / "a.py").write_text("from . import b\n")
    assert import_cycle(vggnet_imports(package)) is None
    # a subpackage: its __init__ is the subpackage's name, relative imports count from the folder they are in
    (package / "sub").mkdir()
    (package / "sub" / "__init__.py").write_text("from . import m\nfrom .m import h\n")
    (package / "sub" / "m.py").write_text(
        "from .. import b, __version__\nfrom ..a import x\ndef h():\n    from . import n\n"
    )
    (package / "sub" / "n.py").write_text("from vggnet.sub import m\n")
    graph = vggnet_imports(package)
    assert graph["vggnet.sub"] == {"module": {"vggnet.sub.m"}, "function": set()}
    assert graph["vggnet.sub.m"] == {"module": {"vggnet.b", "vggnet", "vggnet.a"}, "function": {"vggnet.sub.n"}}
    assert graph["vggnet.sub.n"]["module"] == {"vggnet.sub.m"}
    cycle = import_cycle(graph)
    assert cycle is not None and {"vggnet.sub.m", "vggnet.sub.n"} <= set(cycle)
