"""Every public name has a Google-style docstring: the API reference (docs/api/) is generated from them.

What is public: each name in a public module's `__all__` (a module whose dotted path has no `_` part), or,
for a module without `__all__`, the functions and classes it defines without a leading `_`; and each
public method, classmethod, staticmethod and property a public class defines itself (`forward` too; other
overrides of a documented base method, such as `extra_repr`, are the base's). A name is checked where it
is defined; the hub's private modules are checked through the facade `vggnet.hub`, which exports them.

What a docstring must have (the rules mkdocstrings renders and STYLE.md asks for):

- a one-line summary, alone in its paragraph;
- `Args:` naming every parameter (`*args` and `**kwargs` by their names) and no parameter the signature
  lacks; for a class, its constructor's parameters in the class's or `__init__`'s docstring, under
  `Args:` or `Attributes:` (a dataclass's or NamedTuple's fields);
- `Returns:` (or `Yields:` for a generator) where the function returns something;
- `Raises:` naming each exception the function raises itself (`raise SomeError(...)` in its body).
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import importlib
import inspect
import pkgutil
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import vggnet

ROOT = Path(__file__).parents[1]

SECTION = re.compile(r"^(\w[\w ]*):\s*$")
ENTRY = re.compile(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:")


def public_modules() -> list[str]:
    """Every module of vggnet whose dotted name has no private part, vggnet itself first."""
    names = ["vggnet"]
    for info in pkgutil.walk_packages(vggnet.__path__, "vggnet."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def owner(obj: Any) -> str:
    """The public module a name is documented in: where it is defined, a private module's package for its names."""
    module = getattr(obj, "__module__", None) or ""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_"):
            return ".".join(parts[:i])
    return module


def exported(module_name: str) -> dict[str, Any]:
    """The public names of a module that it documents: its own functions and classes (or a private module's)."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, v in vars(module).items() if not n.startswith("_") and getattr(v, "__module__", None)]
    found = {}
    for name in names:
        obj = getattr(module, name)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and owner(obj) == module_name:
            found[name] = obj
    return found


def sections(doc: str) -> dict[str, list[str]]:
    """A cleaned docstring's Google-style sections: header -> the names its entries document."""
    found: dict[str, list[str]] = {}
    current, indent = None, 0
    for line in doc.splitlines():
        depth = len(line) - len(line.lstrip())
        if not line.strip():
            continue
        if depth == 0:
            header = SECTION.match(line)
            current, indent = (header.group(1), 0) if header else (None, 0)
            if current is not None:
                found[current] = []
        elif current is not None:
            indent = indent or depth  # the entries' indent is the first line's
            entry = ENTRY.match(line.strip())
            if depth == indent and entry:
                found[current].append(entry.group(1).lstrip("*"))
    return found


def summary_problem(doc: str | None) -> str | None:
    """What is wrong with a docstring's summary, or None."""
    if not doc or not doc.strip():
        return "no docstring"
    lines = inspect.cleandoc(doc).splitlines()
    if len(lines) > 1 and lines[1].strip():
        return "the summary is not one line followed by a blank line"
    return None


def raised_names(func: Callable[..., Any]) -> set[str]:
    """The exception classes a function raises in its own body (`raise Name(...)` or `raise Name`)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError):
        return set()
    body = tree.body[0]
    names = set()
    stack: list[ast.AST] = list(ast.iter_child_nodes(body))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue  # a nested function raises when it is called, not here
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id[:1].isupper():
                names.add(exc.id)
            elif isinstance(exc, ast.Attribute) and exc.attr[:1].isupper():
                names.add(exc.attr)
        stack.extend(ast.iter_child_nodes(node))
    return names


def parameters(func: Callable[..., Any], skip_first: bool) -> list[str]:
    """A function's parameter names, without `self`/`cls` for a method."""
    names = list(inspect.signature(func).parameters)
    return names[1:] if skip_first and names else names


def returns_something(func: Callable[..., Any]) -> bool:
    """Whether a function's annotation says it returns a value."""
    annotation = inspect.signature(func).return_annotation
    return annotation not in (None, "None", inspect.Signature.empty, "NoReturn", "Never")


def function_problems(func: Callable[..., Any], where: str, *, method: bool = False) -> list[str]:
    """Everything a function's docstring lacks, one line each, prefixed with `where`."""
    doc = func.__doc__
    problem = summary_problem(doc)
    if problem:
        return [f"{where}: {problem}"]
    assert doc is not None
    found = sections(inspect.cleandoc(doc))
    problems = []
    params = parameters(func, skip_first=method)
    if params:
        documented = found.get("Args", [])
        missing = [p for p in params if p not in documented]
        if missing:
            problems.append(f"{where}: Args lacks {', '.join(missing)}")
        extra = [p for p in documented if p not in params]
        if extra:
            problems.append(f"{where}: Args names {', '.join(extra)}, not in the signature")
    if func.__name__ != "__init__" and returns_something(func):
        kind = "Yields" if inspect.isgeneratorfunction(inspect.unwrap(func)) else "Returns"
        if kind not in found:
            problems.append(f"{where}: no {kind} section")
    raised = raised_names(func)
    if raised:
        listed = found.get("Raises", [])
        missing = sorted(raised - set(listed))
        if missing:
            problems.append(f"{where}: Raises lacks {', '.join(missing)}")
    return problems


def _overrides_documented(cls: type, name: str) -> bool:
    return any(name in vars(base) and getattr(vars(base)[name], "__doc__", None) for base in cls.__mro__[1:])


def _fields(cls: type) -> list[str]:
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls) if f.init]
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        return list(cls._fields)
    return []


def class_problems(cls: type, where: str) -> list[str]:
    """Everything a class's docstrings lack: its own, its constructor's arguments, its public methods'."""
    problem = summary_problem(cls.__dict__.get("__doc__"))
    if problem:
        return [f"{where}: {problem}"]
    problems = []
    doc = inspect.cleandoc(cls.__doc__ or "")
    init = vars(cls).get("__init__")
    fields = _fields(cls)
    # a Protocol cannot be instantiated: its __init__ is typing's placeholder, (*args, **kwargs)
    protocol = getattr(cls, "_is_protocol", False)
    if fields or (init is not None and not issubclass(cls, enum.Enum) and not protocol):
        params = fields or parameters(init, skip_first=True)
        documented = set()
        for source in (doc, inspect.cleandoc(getattr(init, "__doc__", None) or "")):
            for header in ("Args", "Attributes"):
                documented.update(sections(source).get(header, []))
        missing = [p for p in params if p not in documented]
        if missing:
            problems.append(f"{where}: the constructor's Args or Attributes lack {', '.join(missing)}")
    for name, member in vars(cls).items():
        if name.startswith("_") or (name != "forward" and _overrides_documented(cls, name)):
            continue
        if isinstance(member, property):
            problem = summary_problem(member.__doc__)
            if problem:
                problems.append(f"{where}.{name}: {problem}")
            continue
        static = isinstance(member, staticmethod)
        func = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
        if inspect.isfunction(func):
            problems += function_problems(func, f"{where}.{name}", method=not static)
    return problems


def problems_of(module_name: str) -> list[str]:
    """Everything the public names of a module lack, one line each."""
    problems = []
    for name, obj in exported(module_name).items():
        where = f"{module_name}.{name}"
        problems += class_problems(obj, where) if inspect.isclass(obj) else function_problems(obj, where)
    return problems


@pytest.mark.parametrize("module", public_modules())
def test_every_public_name_has_a_google_style_docstring(module):
    assert problems_of(module) == []


def test_the_check_sees_what_it_forbids():
    def documented(path: str, *, size: int = 1) -> int:
        """Read a file.

        Args:
            path: the file.
            size: bytes.

        Returns:
            A count.

        Raises:
            ValueError: never.
        """
        if size < 0:
            raise ValueError(path)
        return size

    def lacking(path: str, size: int) -> int:
        """Read a file
        and more.

        Args:
            path: the file.
            mode: not a parameter.
        """
        raise KeyError(path)

    assert function_problems(documented, "ok") == []
    assert function_problems(lacking, "f") == ["f: the summary is not one line followed by a blank line"]
    lacking.__doc__ = "Read a file.\n\nArgs:\n    path: the file.\n    mode: not a parameter.\n"
    assert function_problems(lacking, "f") == [
        "f: Args lacks size",
        "f: Args names mode, not in the signature",
        "f: no Returns section",
        "f: Raises lacks KeyError",
    ]
    lacking.__doc__ = None
    assert function_problems(lacking, "f") == ["f: no docstring"]

    @dataclasses.dataclass
    class Record:
        """A record.

        Attributes:
            url: where.
        """

        url: str
        size: int

        def get(self, x: int) -> int:
            return x

        @property
        def big(self) -> bool:
            return self.size > 1

    assert class_problems(Record, "R") == [
        "R: the constructor's Args or Attributes lack size",
        "R.get: no docstring",
        "R.big: no docstring",
    ]
