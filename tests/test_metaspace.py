"""Metadata reads: what is fetched from the device for which access pattern, and that the bytes are right."""

from __future__ import annotations

import random

import pytest

from erofsfuse.erofs.errors import CorruptImage
from erofsfuse.erofs.metaspace import READ_AHEAD_CHUNKS, MetaSpace

PAGE = 4096


def space_over(data: bytes, unreadable_from: int | None = None) -> tuple[MetaSpace, list[tuple[int, int]]]:
    fetches: list[tuple[int, int]] = []

    def fetch(pos: int, length: int) -> bytes:
        fetches.append((pos, length))
        if unreadable_from is not None and pos + length > unreadable_from:
            raise CorruptImage(f"bad bytes from {unreadable_from}")
        return data[pos : pos + length]

    return MetaSpace("test space", 12, len(data), fetch, 1 << 20), fetches


def test_scattered_misses_fetch_one_page_and_a_run_of_misses_reads_ahead():
    data = random.Random(7).randbytes(64 * PAGE + 100)
    space, fetches = space_over(data)
    assert space.read(40 * PAGE + 5, 10) == data[40 * PAGE + 5 : 40 * PAGE + 15]
    assert space.read(2 * PAGE, 4) == data[2 * PAGE : 2 * PAGE + 4]
    assert fetches == [(40 * PAGE, PAGE), (2 * PAGE, PAGE)]

    fetches.clear()
    assert space.read(3 * PAGE + 100, 5 * PAGE) == data[3 * PAGE + 100 : 8 * PAGE + 100]
    assert fetches == [(3 * PAGE, READ_AHEAD_CHUNKS * PAGE)]  # the page after the last miss

    fetches.clear()
    end = 3 + READ_AHEAD_CHUNKS
    assert space.read(9 * PAGE, (end - 9) * PAGE) == data[9 * PAGE : end * PAGE]
    assert fetches == []  # all read ahead already
    assert space.read(end * PAGE, 8) == data[end * PAGE : end * PAGE + 8]
    assert fetches == [(end * PAGE, READ_AHEAD_CHUNKS * PAGE)]  # the walk goes on: read ahead again


def test_read_ahead_stops_at_the_end_and_every_byte_is_right():
    data = random.Random(8).randbytes(20 * PAGE + 123)
    space, fetches = space_over(data)
    assert b"".join(space.read(pos, min(PAGE, len(data) - pos)) for pos in range(0, len(data), PAGE)) == data
    assert all(pos + length <= len(data) for pos, length in fetches)
    assert len(fetches) < 5
    with pytest.raises(CorruptImage, match="past the end of the test space"):
        space.read(len(data) - 4, 8)


def test_a_read_ahead_into_unreadable_bytes_still_reads_the_chunk_asked_for():
    data = random.Random(9).randbytes(40 * PAGE)
    space, fetches = space_over(data, unreadable_from=6 * PAGE)
    assert space.read(4 * PAGE, 8) == data[4 * PAGE : 4 * PAGE + 8]
    assert space.read(5 * PAGE, 8) == data[5 * PAGE : 5 * PAGE + 8]
    assert fetches[-2:] == [(5 * PAGE, READ_AHEAD_CHUNKS * PAGE), (5 * PAGE, PAGE)]
    with pytest.raises(CorruptImage, match="bad bytes"):
        space.read(6 * PAGE, 8)
