"""What a test needs of the machine (root, a kernel EROFS mount, FUSE, containerd, the image corpus, other
programs), found from what it uses, and what this machine lacks.

A test's needs come from the code it runs in this process: its function, its fixtures and its parameters,
followed through every function and class of the test suite they name, down to the primitives below (a
kernel mount, an erofsfuse command line, a containerd, the corpus, a child process). So a new test is marked by what it
calls, without a list of test files to keep up to date. What runs in a child process (a snapshotter
daemon, a command) is invisible to this walk: the modes of the snapshotter fixtures carry their marks
(``tests.snapshotter.conftest.mode_param``), and a module may add ``pytestmark``.
"""

from __future__ import annotations

import inspect
import multiprocessing
import os
import subprocess
import types
from collections.abc import Iterable
from functools import cache

import pytest

from erofsfuse.host import mounting

from . import corpus, fusemount
from .snapshotter import containerd, daemon

NEEDS = ("root", "kernel", "fuse", "containerd", "corpus")
# What keeps a test out of the unit layer: it runs as root, mounts, starts containerd, or starts other
# programs (commands, worker processes); "programs" is no mark of its own.
NOT_UNIT = frozenset({"root", "kernel", "fuse", "containerd", "programs"})
# A kernel mount and a containerd both need root as well.
IMPLIED = {"kernel": {"root"}, "containerd": {"root"}}


@cache
def _primitives() -> dict[int, frozenset[str]]:
    """The objects a test reaches to use the machine, by id (they are module globals: they live on)."""
    return {id(obj): frozenset(needs) for obj, needs in [
        (mounting.mount, {"root"}),
        (mounting.unmount, {"root"}),
        (mounting.mount_erofs, {"kernel"}),
        (fusemount.erofsfuse_command, {"fuse"}),
        (containerd.Containerd, {"containerd"}),
        (daemon.SnapshotterProcess, {"root"}),
        (corpus, {"corpus"}),
        *((starter, {"programs"}) for starter in (subprocess, subprocess.run, subprocess.Popen, multiprocessing)),
    ]}


def _in_test_suite(obj: object) -> bool:
    name = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
    return isinstance(name, str) and (name == "tests" or name.startswith("tests."))


def _names(code: types.CodeType) -> set[str]:
    """The global and attribute names ``code`` and the functions nested in it refer to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


class _Walk:
    """One walk from a test through the suite's code; remembers what it saw, so that cycles end."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.needs: set[str] = set()

    def visit(self, obj: object) -> None:
        obj = getattr(obj, "__func__", obj)
        self.needs |= _primitives().get(id(obj), frozenset())
        if isinstance(obj, types.FunctionType):
            obj = inspect.unwrap(obj)  # a decorated helper (contextlib.contextmanager): its own code
        if id(obj) in self.seen:
            return
        self.seen.add(id(obj))
        self.needs |= _primitives().get(id(obj), frozenset())
        if getattr(obj, "__module__", None) == corpus.__name__:
            self.needs.add("corpus")
        if isinstance(obj, types.FunctionType) and _in_test_suite(obj):
            self._function(obj)
        elif isinstance(obj, type) and _in_test_suite(obj):
            self.visit_all(vars(obj).values())
        elif isinstance(obj, (property, staticmethod, classmethod)):
            self.visit_all(filter(None, (getattr(obj, "fget", None), getattr(obj, "__func__", None))))
        elif isinstance(obj, dict):
            self.visit_all(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            self.visit_all(obj)

    def visit_all(self, objs: Iterable[object]) -> None:
        for obj in objs:
            self.visit(obj)

    def _function(self, func: types.FunctionType) -> None:
        names = _names(func.__code__)
        for name in names:
            if name not in func.__globals__:
                continue
            value = func.__globals__[name]
            self.visit(value)
            if isinstance(value, types.ModuleType):
                # ``module.attribute``: the attribute's name is among the function's names too.
                self.visit_all(getattr(value, n) for n in names if hasattr(value, n))
        self.visit_all(cell.cell_contents for cell in func.__closure__ or () if _has_contents(cell))
        self.visit_all(func.__defaults__ or ())
        self.visit_all((func.__kwdefaults__ or {}).values())


def _has_contents(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018  (an empty cell raises)
    except ValueError:
        return False
    return True


def needs_of(item: pytest.Item) -> set[str]:
    """What ``item`` needs: the marks it carries, and what its code, fixtures and parameters reach."""
    walk = _Walk()
    walk.needs |= {mark.name for mark in item.iter_markers() if mark.name in NEEDS}
    walk.visit(getattr(item, "obj", None))
    fixture_info = getattr(item, "_fixtureinfo", None)
    for name in getattr(item, "fixturenames", ()):
        for fixturedef in fixture_info.name2fixturedefs.get(name, ()) if fixture_info else ():
            walk.visit(fixturedef.func)
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        walk.visit_all(callspec.params.values())
    for need in list(walk.needs):
        walk.needs |= IMPLIED.get(need, set())
    return walk.needs


def _kernel_erofs_missing() -> str | None:
    with open("/proc/filesystems") as f:
        if any(line.split()[-1:] == ["erofs"] for line in f):
            return None
    release = os.uname().release
    for root, _, files in os.walk(f"/lib/modules/{release}"):
        if any(name.startswith("erofs.ko") for name in files) and root.endswith("/erofs"):
            return None
    return f"this kernel ({release}) has no erofs: not in /proc/filesystems, no erofs module"


@cache
def lacking() -> dict[str, str]:
    """Each need this machine cannot meet, with the reason."""
    reasons = {
        "root": None if os.geteuid() == 0 else "needs root",
        "kernel": _kernel_erofs_missing(),
        "fuse": fusemount.fuse_missing(),
        "containerd": containerd.available(),
        "corpus": corpus.missing(),
    }
    return {need: reason for need, reason in reasons.items() if reason}
