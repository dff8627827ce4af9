"""The layers of the code: the library stands alone, and no module imports itself back through others."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
PACKAGES = ("erofsfuse", "snapshotter", "bench", "tests")
GENERATED = "proto_gen"  # protoc's output imports what protoc decides


def project_modules() -> dict[str, Path | None]:
    """Dotted name -> source of every module of the project (None for a compiled one)."""
    modules: dict[str, Path | None] = {}
    for package in PACKAGES:
        for path in sorted((PROJECT / package).rglob("*")):
            if GENERATED in path.parts or path.suffix not in (".py", ".so", ".pyi"):
                continue
            parts = [*path.relative_to(PROJECT).parent.parts, path.name.split(".")[0]]
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join(parts)
            if path.suffix == ".py":
                modules[name] = path
            else:
                modules.setdefault(name, None)
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path | None]) -> set[str]:
    """The project modules that ``name`` imports anywhere in its source (in functions and TYPE_CHECKING too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    return {imported for imported in found if imported in modules and imported != name}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items() if path is not None}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One chain of imports that comes back to where it started, or None."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, pending = [start], [iter(sorted(graph[start]))]
        while path:
            following = next(pending[-1], None)
            if following is None:
                done.add(path.pop())
                pending.pop()
            elif following in path:
                return [*path[path.index(following) :], following]
            elif following not in done:
                path.append(following)
                pending.append(iter(sorted(graph.get(following, ()))))
    return None


def test_no_module_imports_itself_through_others():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_check_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def imported_after(module: str) -> set[str]:
    """Which of pyfuse3 and trio a fresh interpreter has loaded after importing ``module`` and its submodules."""
    probe = (f"import importlib, pkgutil, sys\nimport {module} as top\n"
             "for info in pkgutil.walk_packages(getattr(top, '__path__', []), top.__name__ + '.'):\n"
             "    importlib.import_module(info.name)\n"
             "print(' '.join(name for name in ('pyfuse3', 'trio') if name in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_library_needs_neither_pyfuse3_nor_trio():
    assert imported_after("erofsfuse.erofs") == set()


def test_the_fuse_server_is_what_brings_them_in():
    """The probe above sees these imports where they do happen."""
    assert imported_after("erofsfuse.fuse.operations") == {"pyfuse3", "trio"}
