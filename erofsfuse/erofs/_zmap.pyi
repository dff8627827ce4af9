"""Type stub of the compiled ``_zmap`` module (native/zmap.pyx)."""

from collections.abc import Callable
from typing import Final

ONDISK_DIGEST: str

# flags of an extent
MAPPED: Final[int]
INLINE: Final[int]
FRAGMENT: Final[int]
PARTIAL_REF: Final[int]
FULL_MAPPED: Final[int]

# (la, llen, pa, plen, algorithm, flags)
_Extent = tuple[int, int, int, int, int, int]

class ZMap:
    """The compressed-data map of one inode; ``map(offset)`` returns the extent holding it."""

    def __init__(
        self,
        nid: int,
        layout: int,
        size: int,
        data_start: int,
        blkszbits: int,
        algorithms: int,
        fetch: Callable[[int], bytes],
        chunk_bits: int,
    ) -> None: ...
    @property
    def nid(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def data_start(self) -> int: ...
    @property
    def fragmentoff(self) -> int: ...
    @property
    def tail_headlcn(self) -> int: ...
    @property
    def inline_pos(self) -> int: ...
    @property
    def extent_count(self) -> int: ...
    @property
    def blkszbits(self) -> int: ...
    @property
    def lclusterbits(self) -> int: ...
    @property
    def advise(self) -> int: ...
    @property
    def inline_size(self) -> int: ...
    @property
    def alg_head1(self) -> int: ...
    @property
    def alg_head2(self) -> int: ...
    @property
    def algorithms(self) -> int: ...
    @property
    def compact(self) -> bool: ...
    @property
    def all_fragment(self) -> bool: ...
    @property
    def initialized(self) -> bool: ...
    @property
    def extents_format(self) -> bool: ...
    def map(self, offset: int, whole: bool = True) -> _Extent:
        """The extent holding ``offset``: ``(la, llen, pa, plen, algorithm, flags)``."""
    def map_range(self, offset: int, end: int) -> list[_Extent]:
        """The extents (as ``map`` gives them) that together cover ``[offset, end)``, in order."""
