"""A large compressed read decodes its pclusters on several cores, and concurrent reads of one pcluster decode
it once. The bytes are checked against the file the image was made from."""

from __future__ import annotations

import random
import subprocess
import threading
import time

import pytest

import erofsfuse.erofs.data as data_module
from erofsfuse.erofs import ErofsImage, parallel
from erofsfuse.erofs.cache import SingleFlight
from erofsfuse.erofs.errors import CorruptImage

SIZE = 4 << 20
READ = 1 << 20


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """A 4 MiB file, text and random runs mixed, in an lz4hc image with 64 KiB pclusters."""
    root = tmp_path_factory.mktemp("parallel")
    rng = random.Random(7)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randrange(2, 9))) for _ in range(300)]
    out = bytearray()
    while len(out) < SIZE:
        if rng.random() < 0.5:
            out += rng.randbytes(rng.randrange(4096, 65536))
        else:
            out += b" ".join(rng.choices(words, k=rng.randrange(500, 8000)))
    content = bytes(out[:SIZE])
    (root / "tree").mkdir()
    (root / "tree" / "big.bin").write_bytes(content)
    path = root / "image.erofs"
    subprocess.run(["mkfs.erofs", "--quiet", "-zlz4hc", "-C65536", str(path), str(root / "tree")], check=True,
                   capture_output=True, timeout=120)
    return str(path), content


class DecoderWatch:
    """Wraps the decoder: counts decodes per pcluster and the most threads seen inside it at once."""

    def __init__(self, monkeypatch, delay: float):
        self.real = data_module.decompress
        self.delay = delay
        self.lock = threading.Lock()
        self.inside = 0
        self.most_inside = 0
        self.threads: set[int] = set()
        self.decodes: dict[int, int] = {}
        monkeypatch.setattr(data_module, "decompress", self)

    def __call__(self, algorithm, src, outlen, **kwargs):
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.threads.add(threading.get_ident())
            self.decodes[kwargs["la"]] = self.decodes.get(kwargs["la"], 0) + 1
        try:
            time.sleep(self.delay)  # long enough for the other threads to come in
            return self.real(algorithm, src, outlen, **kwargs)
        finally:
            with self.lock:
                self.inside -= 1


def test_a_large_read_decodes_on_several_cores(image, monkeypatch):
    path, content = image
    monkeypatch.setattr(parallel, "cores", lambda: 2)
    watch = DecoderWatch(monkeypatch, delay=0.005)
    with ErofsImage(path) as img:
        ino = img.resolve("/big.bin")
        assert len(img.extents(ino, 0, READ)) > 4
        assert img.read(ino, 0, READ) == content[:READ]
    assert watch.most_inside >= 2 and len(watch.threads) >= 2


def test_a_small_read_decodes_in_the_calling_thread(image, monkeypatch):
    path, content = image
    watch = DecoderWatch(monkeypatch, delay=0)
    with ErofsImage(path) as img:
        ino = img.resolve("/big.bin")
        assert img.read(ino, 4096, 8192) == content[4096:12288]
    assert watch.threads == {threading.get_ident()}


def test_concurrent_reads_of_one_pcluster_decode_it_once(image, monkeypatch):
    path, content = image
    with ErofsImage(path) as img:
        ino = img.resolve("/big.bin")
        ext = max(img.extents(ino), key=lambda e: e.llen)  # the largest pcluster: room for several readers
        assert ext.llen >= 4 * 4096
        watch = DecoderWatch(monkeypatch, delay=0.2)
        ranges = [(ext.la + i * 4096, 4096) for i in range(4)]
        start = threading.Barrier(len(ranges))
        got: dict[int, bytes] = {}

        def reader(offset: int, length: int) -> None:
            start.wait()
            got[offset] = img.read(ino, offset, length)

        threads = [threading.Thread(target=reader, args=r) for r in ranges]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert {off: got.get(off) for off, _ in ranges} == {off: content[off:off + n] for off, n in ranges}
    assert watch.decodes == {ext.la: 1}


def test_a_failed_decode_fails_every_reader_waiting_for_it():
    flight: SingleFlight[bytes] = SingleFlight()
    entered, release = threading.Event(), threading.Event()
    calls = []

    def failing() -> bytes:
        calls.append(1)
        entered.set()
        release.wait(10)
        raise CorruptImage("bad pcluster", 42)

    errors: list[BaseException] = []

    def run() -> None:
        try:
            flight.run("key", failing)
        except CorruptImage as exc:
            errors.append(exc)

    first = threading.Thread(target=run)
    first.start()
    entered.wait(10)
    second = threading.Thread(target=run)
    second.start()
    time.sleep(0.1)  # the second caller is waiting on the first
    release.set()
    first.join(10)
    second.join(10)
    assert len(calls) == 1 and len(errors) == 2 and all("bad pcluster" in str(e) for e in errors)
    assert flight.run("key", lambda: b"again") == b"again"  # a failure is not remembered
