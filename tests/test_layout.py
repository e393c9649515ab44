"""The package's shape, enforced: the packages by use, the layers they form, and no private name crossing a module.

`LAYERS` lists the parts of vggnet from the bottom up. A module may import modules of its own part and of
the parts below it, never above (checked on imports at module level and inside functions alike, so a cycle
cannot hide in a function). A private module (`vggnet.hub._cache`) is imported only from its own package,
and a private name (`_name`) is never imported from another module: a module that needs another's
internals is missing a public function of the layer below.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).parents[1]

# bottom first; the parts on one line are peers that do not import each other
LAYERS: list[set[str]] = [
    {"vggnet.errors"},
    {"vggnet.settings", "vggnet.checks"},
    {"vggnet.data", "vggnet.hub"},
    {"vggnet.models"},
    {"vggnet.seeing", "vggnet.deploy"},
    {"vggnet.batch", "vggnet.train"},
    {"vggnet.cli"},
    {"vggnet", "vggnet.__main__"},
]

# the weights store's private modules, bottom first (the facade, vggnet.hub itself, sits on top)
HUB_LAYERS: list[set[str]] = [
    {"vggnet.hub._files", "vggnet.hub._deadline"},
    {"vggnet.hub._cache", "vggnet.hub._locks", "vggnet.hub._formats", "vggnet.hub._hdf5"},
    {"vggnet.hub._admin", "vggnet.hub._partial", "vggnet.hub._loading"},
    {"vggnet.hub._download"},
    {"vggnet.hub._huggingface", "vggnet.hub._fetching"},
    {"vggnet.hub"},
]

TOP_LEVEL = {
    "__init__.py", "__main__.py", "py.typed", "errors.py", "settings.py", "checks.py",
    "models", "hub", "data", "train", "batch", "seeing", "deploy", "cli",
}  # fmt: skip


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
        # `from x import y`: the submodule x.y if there is one, else a name of x; the root's __version__ is
        # set before the root imports anything (it imports nothing at run time), so it costs no edge
        names = [a.name for a in node.names if not (base == package and a.name == "__version__")]
        return [f"{base}.{name}" if f"{base}.{name}" in paths else base for name in names]

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


def part_of(module: str, layers: list[set[str]]) -> int | None:
    """The index in `layers` of the part `module` belongs to (the longest matching prefix), or None."""
    best: tuple[int, int] | None = None
    for i, parts in enumerate(layers):
        for part in parts:
            inside = module == part or module.startswith(part + ".")
            if inside and (best is None or len(part) > best[1]):
                best = (i, len(part))
    return None if best is None else best[0]


def upward_imports(graph: dict[str, dict[str, set[str]]], layers: list[set[str]]) -> list[str]:
    """Every import of `graph` from a part into a part above it, as "importer -> imported"."""
    found = []
    for name, kinds in graph.items():
        mine = part_of(name, layers)
        for target in sorted(kinds["module"] | kinds["function"]):
            theirs = part_of(target, layers)
            if mine is not None and theirs is not None and theirs > mine:
                found.append(f"{name} -> {target}")
            elif mine is not None and theirs == mine and _peers(name, target, layers[mine]):
                found.append(f"{name} -> {target} (peers)")
    return found


def _peers(a: str, b: str, parts: set[str]) -> bool:
    """Whether `a` and `b` sit in two different parts of one layer."""
    owner = {p for p in parts if a == p or a.startswith(p + ".")}
    other = {p for p in parts if b == p or b.startswith(p + ".")}
    return bool(owner and other and not owner & other)


def private_crossings(folder: Path) -> list[str]:
    """Imports of a `_name` from another module, and of a private module from outside its package."""
    package = folder.name
    found = []
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(folder).with_suffix("").parts
        here = ".".join((package, *(parts[:-1] if parts[-1] == "__init__" else parts)))
        home = here if parts[-1] == "__init__" else here.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == package:
                modules = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                names = [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                modules, names = [a.name for a in node.names if a.name.split(".")[0] == package], []
            else:
                continue
            for name in names:
                if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                    found.append(f"{here}: {name} from {node.module}")
            for module in modules:
                segments = module.split(".")
                for i, segment in enumerate(segments):
                    if segment.startswith("_") and not segment.startswith("__"):
                        owner = ".".join(segments[:i])  # the package the private module belongs to
                        if not (home == owner or home.startswith(owner + ".")):
                            found.append(f"{here}: imports the private {'.'.join(segments[: i + 1])}")
                        break
    return sorted(set(found))


def test_the_top_level_reads_as_the_product():
    assert {p.name for p in (ROOT / "vggnet").iterdir() if p.name != "__pycache__"} == TOP_LEVEL


def test_every_part_imports_only_its_own_and_the_parts_below():
    graph = vggnet_imports(ROOT / "vggnet")
    assert [name for name in graph if part_of(name, LAYERS) is None] == []  # every module has a layer
    assert upward_imports(graph, LAYERS) == []
    assert import_cycle(graph) is None


def test_the_weights_store_is_layered_behind_its_facade():
    graph = vggnet_imports(ROOT / "vggnet")
    hub = {name: kinds for name, kinds in graph.items() if name == "vggnet.hub" or name.startswith("vggnet.hub.")}
    assert upward_imports(hub, HUB_LAYERS) == []
    # the store knows nothing of models: what the tensors mean is vggnet.models.layouts'
    below = {t for kinds in hub.values() for t in kinds["module"] | kinds["function"]}
    assert {t for t in below if not t.startswith("vggnet.hub")} <= {"vggnet.errors", "vggnet.settings", "vggnet.checks"}


def test_no_private_name_or_module_crosses_a_boundary():
    assert private_crossings(ROOT / "vggnet") == []


def test_the_layer_checks_see_what_they_forbid(tmp_path):
    package = tmp_path / "vggnet"
    for folder in ("models", "hub"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "hub" / "_cache.py").write_text("def _stamp(): ...\ndef ok(): ...\n")
    (package / "hub" / "fetch.py").write_text("from vggnet.hub._cache import _stamp, ok\n")
    (package / "models" / "vgg.py").write_text("def f():\n    from vggnet.hub._cache import ok\n")
    (package / "hub" / "up.py").write_text("import vggnet.models.vgg\n")
    assert private_crossings(package) == [
        "vggnet.hub.fetch: _stamp from vggnet.hub._cache",
        "vggnet.models.vgg: imports the private vggnet.hub._cache",
    ]
    graph = vggnet_imports(package)
    assert upward_imports(graph, [{"vggnet.hub"}, {"vggnet.models"}, {"vggnet"}]) == [
        "vggnet.hub.up -> vggnet.models.vgg"
    ]
    peers = [{"vggnet.hub", "vggnet.models"}, {"vggnet"}]
    assert upward_imports(graph, peers) == [
        "vggnet.hub.up -> vggnet.models.vgg (peers)",
        "vggnet.models.vgg -> vggnet.hub._cache (peers)",
    ]


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
    assert graph["vggnet.c"]["module"] == {"vggnet.a"}  # the root's __version__ is no edge
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
    assert graph["vggnet.sub.m"] == {"module": {"vggnet.b", "vggnet.a"}, "function": {"vggnet.sub.n"}}
    (package / "d.py").write_text("from vggnet import f, __version__\n")  # any other name of the root is one
    assert vggnet_imports(package)["vggnet.d"]["module"] == {"vggnet"}
    assert graph["vggnet.sub.n"]["module"] == {"vggnet.sub.m"}
    cycle = import_cycle(graph)
    assert cycle is not None and {"vggnet.sub.m", "vggnet.sub.n"} <= set(cycle)


MAX_CODE_LINES = 60  # a function's own code, its docstring aside: one screen


def long_functions(package: Path, limit: int = MAX_CODE_LINES) -> list[str]:
    """Every function whose code (from `def` to its end, less its docstring) runs past `limit` lines."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1 if node.end_lineno else 0
            first = node.body[0]
            if ast.get_docstring(node, clean=False) is not None:
                length -= (first.end_lineno or first.lineno) - first.lineno + 1
            if length > limit:
                found.append(f"{path.relative_to(package.parent)}:{node.lineno} {node.name}: {length} lines")
    return found


def test_no_function_runs_past_a_screen_of_code():
    for folder in ("vggnet", "benchmarks", "examples"):  # the benchmarks' `main` included
        assert long_functions(ROOT / folder) == []


def test_the_length_check_sees_a_long_function_and_not_its_docstring(tmp_path):
    package = tmp_path / "vggnet"
    package.mkdir()
    doc = '    """One line.\n\n' + "    More.\n" * 80 + '    """\n'
    body = "".join(f"    x{i} = {i}\n" for i in range(61))
    (package / "a.py").write_text(f"def documented():\n{doc}    return 1\n\n\ndef long():\n{body}")
    assert long_functions(package) == ["vggnet/a.py:88 long: 62 lines"]
