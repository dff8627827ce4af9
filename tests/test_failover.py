"""``-o failover``: a worker killed with SIGKILL is replaced without the mount noticing."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import subprocess
import tempfile
import threading
import time

import pytest

from . import corpus
from .fusemount import daemon_pids, erofsfuse_command, is_mounted, wait_gone
from .kernel import mount, umount
from .trees import sha256_file

NAME = "lz4hc-C1M-big"


def keeper_and_worker(mountpoint: str) -> tuple[int, int]:
    """The mount's keeper (the daemon process named erofsfuse-keep) and its worker child."""
    for pid in daemon_pids(mountpoint):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/comm", "rb") as f:
            if f.read().strip() == b"erofsfuse-keep":
                children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
                return pid, int(children[0])
    raise AssertionError(f"no keeper for {mountpoint}")


def wait_for_new_worker(mountpoint: str, old: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(AssertionError, IndexError):
            _, worker = keeper_and_worker(mountpoint)
            if worker != old:
                return worker
        time.sleep(0.05)
    raise AssertionError("the keeper did not start a new worker")


@contextlib.contextmanager
def failover_mount(image: str, log_path: str | None = None):
    with tempfile.TemporaryDirectory(prefix="efuse-fo-") as mnt:
        options = ["failover"] + ([f"log={log_path}"] if log_path else [])
        subprocess.run(erofsfuse_command(image, mnt, options=options), check=True, timeout=60, capture_output=True)
        keeper, _ = keeper_and_worker(mnt)
        try:
            yield mnt
        finally:
            subprocess.run(["fusermount3", "-u", mnt], check=False, capture_output=True)
            if is_mounted(mnt):
                subprocess.run(["umount", "-l", mnt], check=False, capture_output=True)
            assert wait_gone([keeper])


def big_file() -> tuple[str, str]:
    entries = corpus.manifest(NAME)["entries"]
    path, e = max(((p, e) for p, e in entries.items() if e["type"] == "file"), key=lambda pe: pe[1]["size"])
    return path, e["sha256"]


def test_open_file_keeps_reading_across_sigkill(tmp_path):
    path, sha = big_file()
    log = tmp_path / "mount.log"
    with failover_mount(corpus.image_path(NAME), str(log)) as mnt:
        keeper, worker = keeper_and_worker(mnt)
        with open(mnt + path, "rb") as f:
            head = f.read(300_000)
            os.kill(worker, signal.SIGKILL)
            assert wait_gone([worker])
            rest = f.read()
        assert hashlib.sha256(head + rest).hexdigest() == sha
        new_worker = wait_for_new_worker(mnt, worker)
        entries = corpus.manifest(NAME)["entries"]
        assert sorted(os.listdir(mnt)) == sorted(entries["/"]["entries"])
        for p, e in list(entries.items())[:300]:
            if e["type"] == "file":
                assert sha256_file(mnt + p) == e["sha256"], p
        assert keeper_and_worker(mnt) == (keeper, new_worker)
    text = log.read_text()
    assert "died (killed by SIGKILL)" in text and "unmounted" in text


def test_overlay_on_the_mount_survives_sigkill(tmp_path):
    """The container case: an overlay whose lower layer is the FUSE mount keeps reading."""
    path, sha = big_file()
    upper, work, merged = (tmp_path / n for n in ("upper", "work", "merged"))
    for d in (upper, work, merged):
        d.mkdir()
    with failover_mount(corpus.image_path(NAME)) as mnt:
        mount("overlay", str(merged), "overlay", 0, f"lowerdir={mnt},upperdir={upper},workdir={work}")
        try:
            (merged / "written-by-container").write_text("upper layer still works")
            _, worker = keeper_and_worker(mnt)
            os.kill(worker, signal.SIGKILL)
            assert wait_gone([worker])
            assert sha256_file(str(merged) + path) == sha
            assert (merged / "written-by-container").read_text() == "upper layer still works"
            assert sorted(os.listdir(merged)) == sorted([*corpus.manifest(NAME)["entries"]["/"]["entries"],
                                                         "written-by-container"])
        finally:
            umount(str(merged))


def test_request_queued_while_the_worker_dies_is_answered():
    """A read issued while the worker is stopped, then killed, completes from the new worker."""
    path, sha = big_file()
    with failover_mount(corpus.image_path(NAME)) as mnt:
        _, worker = keeper_and_worker(mnt)
        os.kill(worker, signal.SIGSTOP)
        result: dict[str, object] = {}

        def reader() -> None:
            try:
                result["sha"] = sha256_file(mnt + path)
            except OSError as exc:
                result["error"] = exc

        thread = threading.Thread(target=reader)
        thread.start()
        time.sleep(0.3)
        os.kill(worker, signal.SIGKILL)
        thread.join(timeout=30)
        assert not thread.is_alive(), "the queued request was never answered"
        assert result == {"sha": sha}


def test_killing_the_keeper_leaves_the_worker_serving():
    path, sha = big_file()
    with failover_mount(corpus.image_path(NAME)) as mnt:
        keeper, worker = keeper_and_worker(mnt)
        os.kill(keeper, signal.SIGKILL)
        assert wait_gone([keeper])
        assert sha256_file(mnt + path) == sha
        subprocess.run(["fusermount3", "-u", mnt], check=True)
        assert wait_gone([worker])
        assert not is_mounted(mnt)


def test_sigterm_to_the_keeper_unmounts():
    with failover_mount(corpus.image_path(NAME)) as mnt:
        keeper, worker = keeper_and_worker(mnt)
        os.kill(keeper, signal.SIGTERM)
        assert wait_gone([keeper, worker])
        assert not is_mounted(mnt)


@pytest.mark.slow
def test_keeper_gives_up_on_a_crash_loop():
    """A worker that keeps dying is respawned a bounded number of times, then the mount is abandoned."""
    with failover_mount(corpus.image_path("plain")) as mnt:
        keeper, worker = keeper_and_worker(mnt)
        for _ in range(20):
            if not os.path.exists(f"/proc/{keeper}"):
                break
            os.kill(worker, signal.SIGKILL)
            wait_gone([worker])
            try:
                worker = wait_for_new_worker(mnt, worker, timeout=5)
            except AssertionError:
                break
        assert wait_gone([keeper])
        with pytest.raises(OSError) as info:
            os.listdir(mnt)
        assert info.value.errno == errno.ENOTCONN
        subprocess.run(["fusermount3", "-u", mnt], check=True)
        assert not is_mounted(mnt)


def test_oom_killer_spares_the_failover_processes():
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1")  # lowering needs CAP_SYS_RESOURCE
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("0")
    except PermissionError:
        pytest.skip("this machine does not let even root change oom_score_adj (no CAP_SYS_RESOURCE)")
    with failover_mount(corpus.image_path("plain")) as mnt:
        for pid in keeper_and_worker(mnt):
            with open(f"/proc/{pid}/oom_score_adj") as f:
                assert int(f.read()) == -1000


