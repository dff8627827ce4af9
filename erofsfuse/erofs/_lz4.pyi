"""Type stub of the compiled ``_lz4`` module (native/lz4.pyx)."""

_Buffer = bytes | bytearray | memoryview

def decompress(src: _Buffer, outlen: int, partial: bool, zero_padding: bool = True) -> bytes:
    """Decode ``src`` (one pcluster) into exactly ``outlen`` bytes."""
