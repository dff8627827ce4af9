"""Decoding one physical cluster (pcluster) into its logical bytes.

Each algorithm uses the standard library for its job (liblz4 through the
native module, because EROFS needs partial LZ4 decoding; ``lzma``, ``zlib``
and ``pyzstd`` for the rest). Every decoder is told the exact output size,
so a corrupt or hostile stream can never make it allocate more.
"""

from __future__ import annotations

import lzma
import zlib

import pyzstd

from . import _lz4
from . import ondisk as d
from .errors import CorruptImage, UnsupportedFeature
from .superblock import CompressionConfig


def strip_padding(src: bytes) -> memoryview:
    """Skip the zero bytes that align a compressed stream to the end of its pcluster."""
    margin = len(src) - len(src.lstrip(b"\0"))
    if margin >= len(src):
        raise CorruptImage("pcluster holds nothing but padding")
    return memoryview(src)[margin:]


def _lzma(src: bytes, outlen: int, cfg: CompressionConfig, partial: bool) -> bytes:
    # MicroLZMA is raw LZMA1 whose first (always zero) range-coder byte is
    # replaced by the inverted properties byte.
    stream = strip_padding(src)
    props = stream[0] ^ 0xFF
    if props >= 9 * 5 * 5:
        raise CorruptImage(f"invalid MicroLZMA properties byte 0x{stream[0]:02x}")
    lc, rest = props % 9, props // 9
    lp, pb = rest % 5, rest // 5
    filt = {"id": lzma.FILTER_LZMA1, "dict_size": cfg.lzma_dict_size, "lc": lc, "lp": lp, "pb": pb}
    try:
        # liblzma refuses properties such as lc + lp > 4 when the decoder is made
        dec = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=[filt])
        # MicroLZMA has no end marker: the range coder's lookahead would turn any
        # further request into noise, so only the length can be checked.
        return dec.decompress(b"\0" + bytes(stream[1:]), max_length=outlen)
    except lzma.LZMAError as exc:
        raise CorruptImage(f"MicroLZMA stream is corrupt: {exc}") from None


def _deflate(src: bytes, outlen: int, cfg: CompressionConfig, partial: bool) -> bytes:
    # as the kernel: full window always; the config field only bounds what an image may ask for
    dec = zlib.decompressobj(-d.DEFLATE_MAX_WINDOWBITS)
    try:
        out = dec.decompress(strip_padding(src), outlen)
        if not partial and len(out) == outlen and dec.decompress(dec.unconsumed_tail, 1):
            raise CorruptImage(f"DEFLATE stream decodes to more than {outlen} bytes")
        return out
    except zlib.error as exc:
        raise CorruptImage(f"DEFLATE stream is corrupt: {exc}") from None


def _zstd(src: bytes, outlen: int, cfg: CompressionConfig, partial: bool) -> bytes:
    dec = pyzstd.ZstdDecompressor()
    try:
        out = dec.decompress(strip_padding(src), max_length=outlen)
        if not partial and len(out) == outlen and not dec.eof and dec.decompress(b"", max_length=1):
            raise CorruptImage(f"Zstandard stream decodes to more than {outlen} bytes")
        return out
    except pyzstd.ZstdError as exc:
        raise CorruptImage(f"Zstandard stream is corrupt: {exc}") from None


_STREAM_DECODERS = {d.COMPRESSION_LZMA: _lzma, d.COMPRESSION_DEFLATE: _deflate, d.COMPRESSION_ZSTD: _zstd}


def decompress(
    algorithm: int,
    src: bytes | memoryview,
    outlen: int,
    *,
    partial: bool,
    la: int,
    block_size: int,
    cfg: CompressionConfig,
    lz4_zero_padding: bool,
) -> bytes | memoryview:
    """The first ``outlen`` decoded bytes of pcluster ``src`` for the extent at ``la``.

    ``partial`` allows the stream to decode to more than ``outlen`` bytes (the
    extent uses a prefix); otherwise the output must be exactly ``outlen``.
    An uncompressed pcluster gives a slice of ``src`` itself (a view when it is one).
    """
    if algorithm == d.COMPRESSION_LZ4:
        # without zero padding (the legacy format) a pcluster may hold more than its extent, as in the kernel
        return _lz4.decompress(src, outlen, partial or not lz4_zero_padding, lz4_zero_padding)
    if algorithm == d.COMPRESSION_SHIFTED:
        if outlen > len(src):
            raise CorruptImage(f"uncompressed pcluster of {len(src)} bytes cannot hold {outlen} bytes")
        return src[:outlen]
    if algorithm == d.COMPRESSION_INTERLACED:
        if outlen > len(src):
            raise CorruptImage(f"uncompressed pcluster of {len(src)} bytes cannot hold {outlen} bytes")
        # The extent's first block is rotated: its bytes up to the block end
        # sit at the end of the pcluster, the rest start at the beginning.
        room = block_size - (la & (block_size - 1))
        start = len(src) - room
        head = min(room, outlen)
        return b"".join((src[start : start + head], src[: outlen - head]))
    decoder = _STREAM_DECODERS.get(algorithm)
    if decoder is None:
        raise UnsupportedFeature(f"compression algorithm {algorithm} is not supported")
    out = decoder(bytes(src), outlen, cfg, partial)  # no copy when ``src`` is bytes already
    if len(out) != outlen:
        raise CorruptImage(f"{d.ALGORITHM_NAMES[algorithm]} stream decoded to {len(out)} bytes instead of {outlen}")
    return out
