"""erofsfuse mounts show exactly what the kernel shows: corpus manifests, kernel mounts and overlays."""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from erofsfuse.erofs import ondisk as d
from erofsfuse.erofs.image import ErofsImage

from . import corpus
from .damage import largest_pcluster, patch
from .fusemount import daemon_pids, erofsfuse_command, fuse_mount, is_mounted, process_stat, unmount, wait_gone
from .kernel import erofs_mount, overlay_mount
from .trees import describe_path, diff_trees, sha256_file

REPO = str(Path(__file__).resolve().parent.parent)
SAMPLE = ["plain", "lz4hc-C32k-ztail-frag-dedupe", "zstd-b2048-ztail", "tar-index", "fsmeta-flat", "metabox-lz4hc"]


@pytest.mark.parametrize("name", corpus.image_names())
def test_corpus_image_through_fuse(name):
    m = corpus.manifest(name)
    with fuse_mount(corpus.image_path(name), corpus.device_paths(name)) as mnt:
        problems = diff_trees(m["entries"], describe_path(mnt))
        vfs = os.statvfs(mnt)
    assert not problems, "\n".join(problems)
    fs = m["statfs"]
    fields = ("bsize", "frsize", "blocks", "bfree", "bavail", "files", "ffree", "namemax")
    ours = [getattr(vfs, f"f_{field}") % (1 << 64) for field in fields]  # os.statvfs shows u64 counters as signed
    assert ours == [fs[field] for field in fields]


@pytest.mark.parametrize("names", [["layer1", "layer2", "layer3"], ["tlayer1", "tlayer2", "tlayer3"],
                                   ["layer1", "layer3"], ["incremental", "layer1", "tlayer2", "layer3"]])
def test_stack_equals_kernel_overlay(tmp_path, names):
    with fuse_mount(corpus.stack_file(tmp_path, names)) as mnt:
        ours = describe_path(mnt)
    with contextlib.ExitStack() as stack:
        lowers = [stack.enter_context(erofs_mount(corpus.image_path(n), corpus.device_paths(n))) for n in names]
        kernel = describe_path(stack.enter_context(overlay_mount(lowers)))
    problems = diff_trees(kernel, ours)
    assert not problems, "\n".join(problems)


def test_stack_with_one_layer_hides_whiteouts_unlike_the_plain_image(tmp_path):
    """A layer with whiteouts shows them as an image, and hides them as a stack (as overlayfs does)."""
    with fuse_mount(corpus.image_path("layer2")) as mnt:
        plain = describe_path(mnt)
    with fuse_mount(corpus.stack_file(tmp_path, ["layer2"])) as mnt:
        stacked = describe_path(mnt)
    whiteouts = [p for p, e in plain.items() if e["type"] == "chardev" and e["rdev"] == {"major": 0, "minor": 0}]
    assert whiteouts, "layer2 is expected to carry whiteouts"
    assert not set(whiteouts) & set(stacked)
    assert all(not k.startswith("trusted.overlay.") for e in stacked.values() for k in e["xattrs"])
    # overlayfs needs two lower layers: an empty directory below changes nothing but the root's nlink
    with (tempfile.TemporaryDirectory() as empty, erofs_mount(corpus.image_path("layer2")) as lower,
          overlay_mount([empty, lower]) as ovl):
        kernel = describe_path(ovl)
    kernel["/"]["nlink"] = stacked["/"]["nlink"]
    assert not diff_trees(kernel, stacked)


def test_killed_daemon_leaves_enotconn_and_fusermount_cleans_up():
    with tempfile.TemporaryDirectory() as mnt:
        subprocess.run(erofsfuse_command(corpus.image_path("plain"), mnt), check=True, timeout=60)
        try:
            pids = daemon_pids(mnt)
            assert len(pids) == 1
            os.kill(pids[0], signal.SIGKILL)
            assert wait_gone(pids)
            failures = []
            for _ in range(2):  # a request caught by the abort may say ECONNABORTED; later ones ENOTCONN
                with pytest.raises(OSError) as info:
                    os.listdir(mnt)
                failures.append(info.value.errno)
            assert failures[-1] == errno.ENOTCONN and set(failures) <= {errno.ENOTCONN, errno.ECONNABORTED}
            subprocess.run(["fusermount3", "-u", mnt], check=True)
            assert not is_mounted(mnt)
            assert os.listdir(mnt) == []
        finally:
            if is_mounted(mnt):
                subprocess.run(["umount", "-l", mnt], check=False)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_cleanly(sig):
    with tempfile.TemporaryDirectory() as mnt:
        subprocess.run(erofsfuse_command(corpus.image_path("lz4"), mnt), check=True, timeout=60)
        assert os.listdir(mnt)
        pids = daemon_pids(mnt)
        os.kill(pids[0], sig)
        assert wait_gone(pids)
        assert not is_mounted(mnt)


def test_fifty_concurrent_readers_get_correct_data():
    name = "zstd-C256k-big"
    m = corpus.manifest(name)
    files = [(p, e["sha256"]) for p, e in m["entries"].items() if e["type"] == "file" and e["size"] > 0]
    rng = random.Random(7)
    work = [rng.choice(files) for _ in range(400)]
    with fuse_mount(corpus.image_path(name)) as mnt, concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda item: sha256_file(mnt + item[0]) == item[1], work))
    assert all(results)


@pytest.mark.root
@pytest.mark.fuse
@pytest.mark.parametrize("helper", ["mount", "mount.fuse3"])
def test_mount_helper_forms(tmp_path, helper):
    """``mount -t fuse.erofsfuse`` and ``mount.fuse3 ... -t erofsfuse`` both reach erofsfuse."""
    name = "blobdev"
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + ":" + os.environ["PATH"])
    device = corpus.device_paths(name)[0]
    if helper == "mount":
        if not os.path.exists("/usr/local/bin/erofsfuse"):
            pytest.skip("mount(8) needs erofsfuse on its fixed PATH (.ci/install links it into /usr/local/bin)")
        cmd = ["mount", "-t", "fuse.erofsfuse", corpus.image_path(name), str(tmp_path), "-o", f"device={device}"]
    else:
        cmd = ["mount.fuse3", corpus.image_path(name), str(tmp_path), "-t", "erofsfuse",
               "-o", f"device={device},allow_other"]
    subprocess.run(cmd, check=True, timeout=60, env=env, capture_output=True)
    try:
        assert not diff_trees(corpus.manifest(name)["entries"], describe_path(str(tmp_path)))
    finally:
        unmount(str(tmp_path))


def test_bad_image_gives_one_clear_line(tmp_path):
    bad = tmp_path / "bad.erofs"
    bad.write_bytes(b"\0" * 8192)
    proc = subprocess.run(erofsfuse_command(str(bad), str(tmp_path)), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "bad magic" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_fuse_unavailable_is_reported_clearly(tmp_path):
    """Without /dev/fuse (an empty /dev in a private mount namespace) the error is one line."""
    command = " ".join(erofsfuse_command(corpus.image_path("plain"), str(tmp_path)))
    script = f"mount -t tmpfs none /dev && exec {command}"
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "/dev/fuse does not exist" in proc.stderr and "Traceback" not in proc.stderr


def _corrupt_one_file(src: str, dst: Path) -> tuple[str, int]:
    """Copy ``src`` and break its largest compressed pcluster; returns (path, nid) of the file it belongs to."""
    shutil.copyfile(src, dst)
    with ErofsImage(src) as img:
        path, ino, (_, _, pa, plen, _, _) = largest_pcluster(img, lambda ext: ext.algorithm < d.COMPRESSION_MAX)
    patch(dst, pa, bytes(range(256)) * (plen // 256))
    return os.fsdecode(path), ino.nid


def test_corrupt_file_gives_eio_and_the_daemon_keeps_serving(tmp_path):
    name = "lz4hc-C1M-big"
    bad_path, nid = _corrupt_one_file(corpus.image_path(name), tmp_path / "bad.erofs")
    log = tmp_path / "daemon.log"
    m = corpus.manifest(name)
    with fuse_mount(str(tmp_path / "bad.erofs"), options=[f"log={log}"]) as mnt:
        for _ in range(2):
            with pytest.raises(OSError) as info:
                sha256_file(mnt + bad_path)
            assert info.value.errno == errno.EIO
        good = [(p, e) for p, e in m["entries"].items() if e["type"] == "file" and p != bad_path]
        for p, e in good[:200]:
            if e["sha256"] != m["entries"][bad_path]["sha256"]:
                assert sha256_file(mnt + p) == e["sha256"]
        assert sorted(os.listdir(mnt)) == sorted(m["entries"]["/"]["entries"])
        assert daemon_pids(mnt)
    text = log.read_text()
    assert f"nid {nid}" in text and "ERROR" in text
    assert text.count(f"nid {nid}") <= 2, "a repeated failure is logged once at error level"


def _run_describe(prefix: list[str], image: str | None, devices: list[str], mnt: str) -> dict:
    """Describe ``mnt`` inside another context (a user namespace, another user): with ``image``, mount it there
    with erofsfuse first and unmount it after; without, describe what is already mounted."""
    lines = [
        "import json, subprocess, sys",
        f"sys.path.insert(0, {REPO!r})",
        "from tests.trees import describe_path",
        "from tests.fusemount import erofsfuse_command",
        f"print(json.dumps(describe_path({mnt!r}, xattrs=False, denied_ok=True)))",
    ]
    if image is not None:
        lines[-1:] = [
            f"subprocess.run(erofsfuse_command({image!r}, {mnt!r}, {devices!r}), check=True)",
            "try:",
            "    " + lines[-1],
            "finally:",
            f"    subprocess.run(['fusermount3', '-u', {mnt!r}], check=True)",
        ]
    proc = subprocess.run([*prefix, sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _expected_in_namespace(entries: dict, mapped_uid: int, mapped_gid: int) -> dict:
    overflow_uid = int(Path("/proc/sys/kernel/overflowuid").read_text())
    overflow_gid = int(Path("/proc/sys/kernel/overflowgid").read_text())
    out = {}
    for path, e in entries.items():
        e = dict(e, xattrs=None)
        e["uid"] = 0 if e["uid"] == mapped_uid else overflow_uid
        e["gid"] = 0 if e["gid"] == mapped_gid else overflow_gid
        out[path] = e
    return out


@pytest.mark.fuse  # erofsfuse mounts in the child process
@pytest.mark.parametrize("name", SAMPLE)
def test_rootless_in_user_namespace(tmp_path, name):
    """As root of ``unshare -Urm`` (where kernel EROFS never mounts): names, content, mapped owners."""
    got = _run_describe(["unshare", "-Urm"], corpus.image_path(name), corpus.device_paths(name), str(tmp_path))
    expected = _expected_in_namespace(corpus.manifest(name)["entries"], os.getuid(), os.getgid())
    keys = ("type", "mode", "uid", "gid", "size", "nlink", "ino", "mtime_ns", "target", "sha256", "entries", "rdev")
    problems = diff_trees(expected, got, keys)
    assert not problems, "\n".join(problems)


def test_unprivileged_user_mount():
    """A plain user mounts through fusermount3; nothing of root's is needed but read access."""
    if sys.executable.startswith("/root/"):
        pytest.skip("the test interpreter is not usable by other users (.ci/install builds one that is)")
    nobody = 65534
    with tempfile.TemporaryDirectory(prefix="efuse-user-") as base:
        os.chmod(base, 0o755)
        mnt = Path(base) / "mnt"
        mnt.mkdir()
        os.chown(mnt, nobody, nobody)
        as_nobody = ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups"]
        mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
        os.chmod("/dev/fuse", 0o600)
        try:
            proc = subprocess.run([*as_nobody, *erofsfuse_command(corpus.image_path("plain"), str(mnt))],
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 1
            assert proc.stderr.count("\n") == 1 and "/dev/fuse (mode 0600) is not open to this user" in proc.stderr
            os.chmod("/dev/fuse", 0o666)
            _check_unprivileged_mount(as_nobody, mnt)
        finally:
            os.chmod("/dev/fuse", mode)
            if is_mounted(str(mnt)):  # the user could not unmount (fusermount3 needs /etc/mtab): not left behind
                unmount(str(mnt))


def _check_unprivileged_mount(as_user: list[str], mnt: Path) -> None:
    """What the user sees through its own mount is what the same user sees through the kernel's mount."""
    name = "lz4hc-C64k-ztailpacking"
    got = _run_describe(as_user, corpus.image_path(name), [], str(mnt))
    assert not is_mounted(str(mnt))
    with erofs_mount(corpus.image_path(name)) as kernel_mnt:
        expected = _run_describe(as_user, None, [], kernel_mnt)
    assert sum(1 for e in expected.values() if e["sha256"]), "the user can read files at all"
    keys = ("type", "mode", "uid", "gid", "size", "nlink", "mtime_ns", "target", "sha256", "entries", "rdev")
    problems = diff_trees(expected, got, keys)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("how", ["--offset", "-o offset"])
def test_image_embedded_at_an_offset(tmp_path, how):
    """An image inside a larger file (after 1 MiB of other bytes) mounts with --offset or -o offset."""
    name = "lz4hc-C64k-ztailpacking"
    prefix = os.urandom(1 << 20)
    embedded = tmp_path / "embedded.img"
    embedded.write_bytes(prefix + Path(corpus.image_path(name)).read_bytes())
    where = {"args": [f"--offset={len(prefix)}"]} if how == "--offset" else {"options": [f"offset={len(prefix)}"]}
    with fuse_mount(str(embedded), **where) as mnt:
        assert not diff_trees(corpus.manifest(name)["entries"], describe_path(mnt))


def _cpu_seconds(pid: int) -> float:
    fields = process_stat(pid)  # utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("busy_poll", ["0", "200", "100000"])
def test_busy_polling_stops_when_requests_stop(busy_poll):
    """After a burst of requests the daemon polls for at most its window, then sleeps: an idle mount costs no CPU."""
    name = "plain"
    m = corpus.manifest(name)
    path = next(p for p, e in m["entries"].items() if e["type"] == "file")
    with fuse_mount(corpus.image_path(name), options=[f"busy_poll={busy_poll}"]) as mnt:
        [pid] = daemon_pids(mnt)
        for _ in range(2000):
            with pytest.raises(OSError) as info:
                os.getxattr(mnt + path, "user.absent")
            assert info.value.errno == errno.ENODATA
        assert sha256_file(mnt + path) == m["entries"][path]["sha256"]
        time.sleep(int(busy_poll) / 1e6 + 0.2)
        before = _cpu_seconds(pid)
        time.sleep(1.0)
        assert _cpu_seconds(pid) - before < 0.05
