"""Type stub of the compiled ``_dirents`` module (native/dirents.pyx)."""

from typing import Any, TypeVar, overload

ONDISK_DIGEST: str

_Buffer = bytes | bytearray | memoryview
_Record = TypeVar("_Record", bound=tuple[Any, ...])

@overload
def entries(
    block: _Buffer, maxsize: int, check: bool = False, base: int = 0
) -> list[tuple[bytes, int, int, int]]: ...
@overload
def entries(block: _Buffer, maxsize: int, check: bool, base: int, record: type[_Record]) -> list[_Record]: ...
@overload
def entries(
    block: _Buffer, maxsize: int, check: bool = False, base: int = 0, *, record: type[_Record]
) -> list[_Record]: ...
def compare_first(block: _Buffer, maxsize: int, name: _Buffer) -> int:
    """Compare ``name`` with the block's first name (negative: ``name`` sorts before it)."""
def find(block: _Buffer, maxsize: int, name: _Buffer) -> tuple[int, int] | None:
    """Binary search for ``name``; returns ``(nid, file_type)`` or ``None``."""
