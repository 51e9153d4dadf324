"""The package's import graph: every module imports on its own, and no two modules import
each other, directly or round a loop (imports under TYPE_CHECKING are for type checkers
only and do not count; imports inside functions are deferred on purpose, for start-up)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "attnviz"


def module_names() -> dict[str, Path]:
    return {_name_of(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def top_level_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``path`` imports when it is imported."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for inner in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(inner, ast.Import):
                found.update(a.name for a in inner.names)
            elif isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                found.add(inner.module)
                found.update(f"{inner.module}.{a.name}" for a in inner.names)
    # Importing a.b.c runs a/__init__.py and a/b/__init__.py first: they count too, except
    # the packages that hold ``path`` itself (Python has begun those already).
    own = _packages_of(_name_of(path))
    found |= {package for name in found for package in _packages_of(name)} - own
    return {name for name in found if name in modules}


def _name_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _packages_of(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_module_imports_itself_round_a_loop() -> None:
    modules = module_names()
    graph = {name: top_level_imports(path, modules) - {name} for name, path in modules.items()}
    loops = []
    for start in graph:  # a depth-first walk from each module, back to itself
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            name, trail = stack.pop()
            for nxt in graph[name]:
                if nxt == start:
                    loops.append(" -> ".join([*trail, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    assert not loops, "\n".join(sorted(set(loops)))


@pytest.mark.subprocess
def test_every_module_imports_on_its_own() -> None:
    """Each module imported with none of the package loaded before it, so that none works
    only because another happened to be imported first (third-party modules stay loaded)."""
    names = sorted(name for name in module_names() if not name.endswith("__main__"))  # runs
    script = textwrap.dedent(
        f"""
        import importlib, sys
        failed = []
        for name in {names!r}:
            for loaded in [m for m in sys.modules if m == "attnviz" or m.startswith("attnviz.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception as exc:
                failed.append(f"{{name}}: {{type(exc).__name__}}: {{exc}}")
        print("\\n".join(failed))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
        cwd=PACKAGE.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", done.stdout
