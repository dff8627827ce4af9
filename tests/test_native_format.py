"""The native modules and the on-disk format they were built from, and the stubs that describe them."""

from __future__ import annotations

import ast
import importlib
import struct
from pathlib import Path

import pytest

from erofsfuse.erofs import ondisk as d

BUILT_FROM_ONDISK = ["erofsfuse.erofs._zmap", "erofsfuse.erofs._dirents", "erofsfuse.erofs.inode"]
COMPILED = [*BUILT_FROM_ONDISK, "erofsfuse.erofs._lz4"]


@pytest.mark.parametrize("name", BUILT_FROM_ONDISK)
def test_native_modules_were_built_from_this_ondisk(name: str):
    built_from = importlib.import_module(name).ONDISK_DIGEST
    assert built_from == d.declarations_digest(), (
        f"{name} was compiled from another version of ondisk.py: rebuild the native modules (pip install -e .)"
    )


def layouts() -> dict[str, d.Layout]:
    return {name: value for name, value in vars(d).items() if isinstance(value, d.Layout)}


@pytest.mark.parametrize("name", sorted(layouts()))
def test_field_offsets_are_where_struct_packs_the_fields(name: str):
    layout = layouts()[name]
    values = []
    for i, code in enumerate(layout.format.lstrip("<").split()):
        if code.endswith("s"):
            values.append(bytes([i + 1]) * int(code[:-1]))
        elif not code.endswith("x"):
            values.append(i + 1)
    raw = layout.pack(*values)
    codes = [code for code in layout.format.lstrip("<").split() if not code.endswith("x")]
    for field, code, value in zip(layout.names, codes, values, strict=True):
        assert struct.unpack_from("<" + code, raw, layout.offsets[field]) == (value,), field


def test_union_members_overlay_their_field():
    header = d.MAP_HEADER.pack(0x1234_5678, 0, 0x9A, 0xBC)
    assert struct.unpack_from("<H", header, d.MAP_HEADER.offsets["h_idata_size"]) == (0x1234,)
    assert struct.unpack_from("<I", header, d.MAP_HEADER.offsets["h_extents_lo"]) == (0x1234_5678,)
    assert struct.unpack_from("<H", header, d.MAP_HEADER.offsets["h_extents_hi"]) == (0xBC9A,)


def test_a_layout_refuses_what_it_cannot_name():
    with pytest.raises(ValueError, match="one value"):
        d.Layout("a:H 2H")
    with pytest.raises(ValueError, match="past the end"):
        d.Layout("a:H b:H", unions={"b": "c:I"})


def stub_names(tree: ast.Module | ast.ClassDef) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {name for name in names if not name.startswith("_") or name == "__init__"}


def runtime_names(namespace: object, inherited: object) -> set[str]:
    return {name for name in dir(namespace) if not name.startswith("_") and not hasattr(inherited, name)}


@pytest.mark.parametrize("name", COMPILED)
def test_stubs_describe_the_compiled_modules(name: str):
    module = importlib.import_module(name)
    stub = ast.parse(Path(module.__file__).with_name(name.rpartition(".")[2] + ".pyi").read_text())
    imported = {"CorruptImage", "UnsupportedFeature"}  # the exceptions the module raises
    assert stub_names(stub) == runtime_names(module, object) - imported
    for cls in (node for node in stub.body if isinstance(node, ast.ClassDef) and not node.name.startswith("_")):
        assert stub_names(cls) - {"__init__"} == runtime_names(getattr(module, cls.name), object), cls.name
