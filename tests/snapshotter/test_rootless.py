"""Rootless containerd: a user without root runs containers on this snapshotter, started with
``erofs-snapshotter rootless`` (real rootlesskit, containerd, runc and the installed erofs-snapshotter and
erofsfuse, all as that user), and sees what containerd's overlayfs snapshotter shows in the same containerd.
Also the startup checks that make a mode that cannot work fail at once, with its reason, and the messages
that reach containerd or the log when erofsfuse fails or serves in another mount namespace.

The user is made for the module (with subordinate ids) and deleted after it; /dev/fuse is opened to users
(mode 0666, Debian's default where udev runs) for the module, and put back as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from snapshotter.daemons import daemon_processes
from snapshotter.planner import MODE_LABEL, MODE_REASON_LABEL
from tests.fusemount import wait_gone
from tests.snapshotter import containerd, oci
from tests.snapshotter.conftest import erofsfuse_missing, start_env, stop_env
from tests.snapshotter.daemon import Client, SnapshotterProcess
from tests.snapshotter.mounting import mounts_below, unmount_below
from tests.snapshotter.test_containerd import READER, SCRIPT, Reads
from tests.snapshotter.test_lifecycle import LAYER_1, build_chain, stack_daemons, upper_of

BIN = Path(sys.executable).parent  # the installed commands
PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
FUSE = "/dev/fuse"
# What a host without cgroup delegation needs for runc under rootless containerd: no cgroup, no CPU shares.
RUN_FLAGS = ("--cgroup", "", "--cpu-shares", "0")


def rootless_missing() -> str | None:
    """Why the rootless end-to-end tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "making a user needs root"
    if str(BIN).startswith("/root/"):
        return "the test interpreter is not usable by other users (.ci/install builds one that is)"
    for tool in ("rootlesskit", "newuidmap", "newgidmap", "useradd", "getsubids", "setpriv", "nsenter", "unshare"):
        if not shutil.which(tool):
            return f"{tool} is not installed (Debian: rootlesskit, uidmap, passwd, util-linux)"
    return containerd.available() or erofsfuse_missing()


pytestmark = [
    pytest.mark.root,
    pytest.mark.containerd,
    pytest.mark.fuse,
    pytest.mark.skipif(rootless_missing() is not None, reason=str(rootless_missing())),
    pytest.mark.skipif(not oci.BUSYBOX.is_file(), reason="needs a static busybox (Debian: busybox-static)"),
]

# SCRIPT (identity, every path, contents, writes and deletions) and then more writes to the rootfs: a lower
# file changed through a hard link (copy-up), a renamed file, a renamed lower directory, a file in a directory
# only uid 1000 may write to.
WRITES = r"""echo appended >> /data/keep-link && cat /data/keep-link
mv /data/added.txt /data/renamed.txt && cat /data/renamed.txt && ls /data
mv /opaque /moved-dir; ls -a /moved-dir /opaque
echo "by $(id -u)" > /home/user/written; cat /home/user/written
stat -c '%n %A %u:%g %s %h' /data/keep-link /data/renamed.txt /moved-dir /home/user/written
exit 0
"""
CONTAINER_SCRIPT = SCRIPT.replace("exit 0\n", WRITES)


@contextlib.contextmanager
def device_mode(device: str, mode: int) -> Iterator[None]:
    """``device`` with ``mode`` for a while, then as it was."""
    before = stat.S_IMODE(os.stat(device).st_mode)
    os.chmod(device, mode)
    try:
        yield
    finally:
        os.chmod(device, before)


@dataclass
class User:
    """A user without root, with subordinate ids, whose home and runtime dir live under ``base``."""

    name: str
    uid: int
    gid: int
    base: Path

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def runtime(self) -> Path:
        """$XDG_RUNTIME_DIR, as systemd-logind would make it."""
        return self.base / "run"

    def command(self, *args: str) -> list[str]:
        """``args`` run as this user, in the environment a login gives."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "env", "-i",
                f"HOME={self.home}", f"XDG_RUNTIME_DIR={self.runtime}", f"PATH={PATH}", f"USER={self.name}", *args]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), capture_output=True, text=True, timeout=timeout, cwd=self.home)

    def subordinate_uids(self) -> range:
        """The user's subordinate uids, as getsubids reports them (``0: NAME START COUNT``)."""
        out = subprocess.run(["getsubids", self.name], check=True, capture_output=True, text=True).stdout.split()
        return range(int(out[2]), int(out[2]) + int(out[3]))

    def processes(self) -> list[str]:
        """Live processes of this user or of its subordinate ids (exited ones waiting to be reaped do not count)."""
        uids = {self.uid, *self.subordinate_uids()}
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                status = dict(line.split(":", 1) for line in Path(f"/proc/{entry}/status").read_text().splitlines())
            except (OSError, ValueError):
                continue
            if int(status["Uid"].split()[0]) in uids and not status["State"].strip().startswith("Z"):
                found.append(f"{entry} {status['Name'].strip()}")
        return found


@pytest.fixture(scope="module")
def user() -> Iterator[User]:
    base = Path(tempfile.mkdtemp(prefix="erofs-rootless-"))
    base.chmod(0o755)
    name = f"erofs-rl-{os.getpid()}"
    made_files = [f for f in ("/etc/subuid", "/etc/subgid") if not os.path.exists(f)]
    for f in made_files:  # useradd gives a new user subordinate ids where these exist
        Path(f).touch(0o644)
    subprocess.run(["useradd", "--create-home", "--home-dir", str(base / "home"), "--shell", "/bin/sh",
                    "--user-group", name], check=True, capture_output=True)
    ids = [int(subprocess.check_output(["id", option, name])) for option in ("-u", "-g")]
    made = User(name, *ids, base)
    try:
        made.runtime.mkdir(mode=0o700)
        os.chown(made.runtime, made.uid, made.gid)
        assert len(made.subordinate_uids()) >= 65536
        with device_mode(FUSE, 0o666):
            yield made
    finally:
        for line in made.processes():  # a failed test's leftovers; a passing one leaves none
            with contextlib.suppress(OSError):
                os.kill(int(line.split()[0]), signal.SIGKILL)
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
        for f in made_files:
            if Path(f).stat().st_size == 0:
                os.unlink(f)
    for f in ("/etc/passwd", "/etc/subuid", "/etc/subgid"):
        assert not os.path.exists(f) or f"{name}:" not in Path(f).read_text(), f


@pytest.fixture(scope="module")
def image(user: User) -> oci.Image:
    """The test image, where the user can read it."""
    base = user.base / "image"
    base.mkdir(mode=0o755)
    layers = [layer.write(base / f"layer-{i}.tar") for i, layer in enumerate(oci.sample_layers())]
    return oci.build_archive(base / "image.tar", layers, ["/bin/sh", "-c", CONTAINER_SCRIPT],
                             {"root": "", "user": "1000:1000"})


class RootlessContainerd:
    """``erofs-snapshotter rootless`` run by the user as the README says, and ctr through nsenter."""

    def __init__(self, user: User) -> None:
        self.user = user
        self.log = user.base / "rootless.log"
        self.proc: subprocess.Popen | None = None
        self.snapshotter_root = user.home / ".local/share/erofs-snapshotter"
        self.address = user.runtime / "erofs-snapshotter/snapshotter.sock"

    def start(self) -> None:
        """Start and wait until ctr reaches containerd and containerd the snapshotter."""
        with open(self.log, "ab") as log:
            # --net host: this host's /dev/net/tun is not open to users, which slirp4netns needs
            self.proc = subprocess.Popen(self.user.command(str(BIN / "erofs-snapshotter"), "rootless", "--net", "host",
                                                           "--log-level", "debug"),
                                         stdout=log, stderr=log, cwd=self.user.home)
        deadline = time.monotonic() + 60
        while self.ctr("snapshots", "--snapshotter", "erofs", "ls", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rootless containerd did not start:\n{self.log_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM, as a service manager or Ctrl-C would stop it: rootlesskit passes it on."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        proc.terminate()
        try:
            assert proc.wait(timeout=60) == 0, self.log_text()[-3000:]
        except subprocess.TimeoutExpired:
            proc.kill()
            raise

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """ctr in the namespace, entered as the README says."""
        child = self.user.runtime / "containerd-rootless/child_pid"
        if not child.exists():
            return subprocess.CompletedProcess(args, 1, "", f"{child} does not exist yet")
        proc = self.user.run("nsenter", "-U", "--preserve-credentials", "-m", f"--wd={self.user.home}", "-t",
                             child.read_text().strip(), "ctr", *args)
        if check and proc.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                                 f"log:\n{self.log_text()[-3000:]}")
        return proc

    def run(self, snapshotter: str, ref: str, name: str) -> str:
        out = self.ctr("run", "--rm", *RUN_FLAGS, "--snapshotter", snapshotter, ref, name).stdout
        assert out, f"no output from {name}"
        return out

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            assert time.monotonic() < deadline, f"{text!r} not logged:\n{self.log_text()[-3000:]}"
            time.sleep(0.1)

    def remove_everything(self, image: oci.Image) -> None:
        """Delete the images from both snapshotters; nothing of the snapshotter's may stay."""
        for snapshotter in ("overlayfs", "erofs"):
            self.ctr("images", "rm", "--sync", *image.refs.values(), check=False)
            listed = self.ctr("snapshots", "--snapshotter", snapshotter, "ls").stdout.splitlines()
            assert listed[1:] == [], listed
        client = Client(self.address)
        try:
            assert client.walk() == []
        finally:
            client.close()
        assert list((self.snapshotter_root / "snapshots").iterdir()) == []


@contextlib.contextmanager
def rootless_containerd(user: User) -> Iterator[RootlessContainerd]:
    """Rootless containerd for one test; afterwards no process of the user or its subordinate ids is left."""
    pair = RootlessContainerd(user)
    pair.start()
    try:
        yield pair
    finally:
        pair.stop()
        deadline = time.monotonic() + 30  # a daemon whose mount was detached exits once it notices
        while (left := user.processes()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left == [], pair.log_text()[-3000:]
        assert mounts_below(user.base) == []


def test_rootless_containers_see_what_overlayfs_shows(user: User, image: oci.Image) -> None:
    with rootless_containerd(user) as pair:
        assert "erofs-snapshotter rootless: containerd (pid" in pair.log_text()
        for name in ("overlayfs", "erofs"):
            out = pair.ctr("images", "import", "--snapshotter", name, str(image.archive)).stdout
            assert out.count("done") == len(image.refs), out
        for who, ref in image.refs.items():
            expected = pair.run("overlayfs", ref, f"overlay-{who}")
            actual = pair.run("erofs", ref, f"erofs-{who}")
            assert actual == expected, who
            assert ("uid=1000(user)" if who == "user" else "uid=0(root)") in actual
            assert "only this survives" in actual and "hidden by opaque" not in actual
            assert ("by 1000\n" if who == "user" else "appended\n") in actual  # the writes went through

        pair.ctr("containers", "create", "--snapshotter", "erofs", image.refs["root"], "created")
        client = Client(pair.address)
        try:
            (active,) = [i for i in client.walk("kind==active") if i.name.endswith("/created")]
            assert active.labels[MODE_LABEL] == "fuse"
            assert "user namespace" in active.labels[MODE_REASON_LABEL]
            assert client.mounts(active.name)[0].options[0] == "userxattr"
        finally:
            client.close()
        pair.ctr("containers", "rm", "created")
        daemon_logs = [path.read_text() for path in pair.snapshotter_root.glob("snapshots/*/stack.log")]
        assert daemon_logs and not [text for text in daemon_logs if "OOM" in text]  # only root may ask: not tried
        pair.remove_everything(image)
    assert "detaching" not in pair.log_text()  # the images' removal stopped every erofsfuse daemon


def stack_of(client: Client, key: str) -> Path:
    """The erofsfuse mount under a fuse-mode snapshot (its overlay's one lowerdir)."""
    (lower,) = [o.removeprefix("lowerdir=") for o in client.mounts(key)[0].options if o.startswith("lowerdir=")]
    return Path(lower)


def test_a_rootless_container_outlives_restarts_and_a_killed_worker(user: User, image: oci.Image) -> None:
    """A container keeps reading its files while the snapshotter is killed (the rootless command starts it
    again), while its erofsfuse worker is killed (the keeper replaces it), and while the whole rootless
    containerd is stopped and started again, in a new namespace that cannot see the old one's mounts."""
    with rootless_containerd(user) as pair:
        pair.ctr("images", "import", "--snapshotter", "erofs", str(image.archive))
        pair.ctr("run", "-d", *RUN_FLAGS, "--snapshotter", "erofs", image.refs["root"], "reader", "sh", "-c", READER)
        try:
            client = Client(pair.address)
            (active,) = [i for i in client.walk("kind==active") if i.name.endswith("/reader")]
            reads = Reads(upper_of(client.mounts(active.name)) / "reads")
            stack = stack_of(client, active.name)
            client.close()
            # The daemons serve in the rootless mount namespace: another one, seen from here.
            serving = daemon_processes([stack], elsewhere=True)[stack]
            assert serving.keeper is not None and len(serving.workers) == 1, serving

            (snapshotter,) = [int(line.split()[0]) for line in subprocess.run(
                ["pgrep", "-a", "-u", str(user.uid), "-f", "snapshotter.main --root"],
                capture_output=True, text=True).stdout.splitlines()]
            os.kill(snapshotter, signal.SIGKILL)
            pair.wait_for_log("erofs-snapshotter exited (killed by SIGKILL); starting it again")
            pair.wait_for_log(f"adopting erofsfuse for chain {stack.parent.name} at {stack} (keeper {serving.keeper}")
            reads.check_more()

            os.kill(serving.workers[0], signal.SIGKILL)
            assert wait_gone(list(serving.workers))
            reads.check_more()
            resumed = daemon_processes([stack], elsewhere=True)[stack]
            assert resumed.keeper == serving.keeper and resumed.workers != serving.workers

            pair.stop()
            reads.check_more(5)  # nothing of rootless containerd runs, the container does
            pair.start()
            pair.wait_for_log(f"erofsfuse for chain {stack.parent.name} also runs in another mount namespace "
                              f"(keeper {serving.keeper}, workers {list(resumed.workers)})")
            reads.check_more()
            exec_out = pair.ctr("task", "exec", "--exec-id", "probe", "reader", "cat", "/data/added.txt").stdout
            assert exec_out == "added in layer 2\n"  # the new containerd reaches the container's shim
        finally:
            pair.ctr("task", "kill", "-s", "KILL", "reader", check=False)
            deadline = time.monotonic() + 30
            while pair.ctr("task", "delete", "reader", check=False).returncode != 0 and time.monotonic() < deadline:
                time.sleep(0.2)
            pair.ctr("containers", "rm", "reader", check=False)
        # The first namespace's daemon exits with the container that used it.
        assert wait_gone([serving.keeper, *resumed.workers], timeout=30)
        pair.remove_everything(image)


# -- startup checks, and what erofsfuse's failures look like ------------------------------------------------
def start_as(user: User, mode: str, *extra: str) -> tuple[subprocess.Popen, Path, str]:
    """erofs-snapshotter as ``user`` in ``unshare -Urm`` (rootless containerd's setting) until it serves or
    exits; returns the process, its socket, and what it wrote."""
    root, address = user.home / f"root-{mode}", user.runtime / f"{mode}.sock"
    out = user.base / f"start-{mode}.log"
    with open(out, "wb") as log:
        proc = subprocess.Popen(user.command("unshare", "-Urm", str(BIN / "erofs-snapshotter"), "--root", str(root),
                                             "--address", str(address), "--mode", mode, *extra),
                                stdout=log, stderr=log, cwd=user.home)
    deadline = time.monotonic() + 30
    while proc.poll() is None and not address.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc, address, out.read_text()


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=30)


def test_modes_that_cannot_work_refuse_to_start(user: User) -> None:
    """/dev/fuse 0600 (no udev): in a user namespace fuse mode cannot work, and neither can the kernel."""
    with device_mode(FUSE, 0o600):
        for mode, reason in (("fuse", "fuse mode cannot work here: /dev/fuse (mode 0600) is not open to this user"),
                             ("auto", "no mode can work here: not kernel mode (running in a user namespace, where "
                                      "the kernel does not mount erofs), not fuse mode (/dev/fuse (mode 0600) is not "
                                      "open to this user"),
                             ("kernel", "kernel mode cannot work here: running in a user namespace")):
            proc, address, out = start_as(user, mode)
            stop(proc)
            assert proc.returncode == 1 and not address.exists(), out
            assert reason in out and "Traceback" not in out, out
    proc, address, out = start_as(user, "fuse")  # /dev/fuse 0666 again
    try:
        assert proc.poll() is None and address.exists(), out
    finally:
        stop(proc)


def test_rootless_says_what_it_lacks(user: User) -> None:
    """Before rootlesskit runs: no $XDG_RUNTIME_DIR (``su`` gives none), no /dev/net/tun for slirp4netns."""
    command = [str(BIN / "erofs-snapshotter"), "rootless"]
    no_runtime_dir = subprocess.run([part for part in user.command(*command) if not part.startswith("XDG_")],
                                    capture_output=True, text=True, timeout=60, cwd=user.home)
    assert no_runtime_dir.returncode == 2 and "XDG_RUNTIME_DIR is not set" in no_runtime_dir.stderr
    with device_mode("/dev/net/tun", 0o600):
        no_tun = user.run(*command, "--net", "slirp4netns", timeout=60)
    assert no_tun.returncode == 1, no_tun.stderr
    assert "slirp4netns needs /dev/net/tun open to this user (Permission denied)" in no_tun.stderr
    assert user.processes() == []


def test_auto_mode_says_once_which_mode_it_uses(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir/erofsfuse"
    env = start_env(tmp_path / "t", "auto", ["--erofsfuse", str(missing)])
    try:
        build_chain(env, LAYER_1)
        env.client.prepare("one", "layer-0")
        env.client.view("two", "layer-0")
        for key in ("one", "two"):
            assert env.client.stat(key).labels[MODE_LABEL] == "kernel"
        said = [line for line in env.daemon.log.read_text().splitlines() if "fuse mode cannot work here" in line]
        assert len(said) == 1 and f"({missing} is not an executable): auto mode mounts every layer with the kernel" \
            in said[0], said
    finally:
        stop_env(env, tmp_path / "t")
    refused = subprocess.run([*SnapshotterProcess.base_command(), "--root", str(tmp_path / "r"), "--address",
                              str(tmp_path / "s.sock"), "--mode", "fuse", "--erofsfuse", str(missing)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and f"fuse mode cannot work here: {missing} is not an executable" in refused.stderr


def test_a_failed_erofsfuse_is_reported_with_its_own_reason(tmp_path: Path) -> None:
    """What containerd is told is the line erofsfuse itself prints for the failure, not the daemon log's history."""
    env = start_env(tmp_path / "t", "fuse")
    try:
        build_chain(env, LAYER_1)
        env.client.prepare("used", "layer-0")
        stack = stack_of(env.client, "used")
        assert stack_daemons(env.root)
        env.client.remove("used")  # its daemon stops; its log stays, with what it logged
        assert stack_daemons(env.root) == {}
        (blob,) = (env.root / "snapshots").glob("*/layer.erofs")
        blob.write_bytes(bytes(blob.stat().st_size))  # no superblock any more
        with pytest.raises(grpc.RpcError) as failure:
            env.client.prepare("again", "layer-0")
        target = tmp_path / "mnt"
        target.mkdir()
        own = subprocess.run([str(BIN / "erofsfuse"), str(stack.parent / "stack.json"), str(target)],
                             capture_output=True, text=True, timeout=60)
        assert own.returncode == 1 and own.stderr.count("\n") == 1, own.stderr
        reason = own.stderr.strip().removeprefix("erofsfuse: ")
        assert failure.value.details() == f"erofsfuse for chain {stack.parent.name} failed (exit 1): {reason}"
    finally:
        stop_env(env, tmp_path / "t")


def test_daemons_in_another_mount_namespace_are_reported(tmp_path: Path) -> None:
    """A snapshotter started in a new mount namespace (as a restarted rootlesskit starts it) cannot see the
    mounts of the one before; it says which daemon serves the chain there, and mounts its own."""
    root = tmp_path / "root"
    private = ["unshare", "--mount", "--propagation", "private"]
    first = SnapshotterProcess(root, tmp_path / "first.sock", "fuse")
    first.prefix = private
    first.start()
    client = Client(first.address)
    stack = root / "unknown"
    try:
        LAYER_1(upper_of(client.prepare("base-a")))
        client.commit("base", "base-a")
        client.prepare("top", "base")
        stack = stack_of(client, "top")
        client.close()
        theirs = daemon_processes([stack], elsewhere=True)[stack]  # the first namespace is another one from here
        assert theirs.keeper is not None and len(theirs.workers) == 1, theirs
        first.stop()
        assert "also runs in another mount namespace" not in first.log.read_text()

        second = SnapshotterProcess(root, tmp_path / "second.sock", "fuse")
        second.prefix = private
        logged = first.log.stat().st_size
        second.start()
        second.stop()
        with open(second.log) as f:
            f.seek(logged)
            log = f.read()
        assert (f"erofsfuse for chain {stack.parent.name} also runs in another mount namespace "
                f"(keeper {theirs.keeper}, workers {list(theirs.workers)})") in log, log
        assert f"started erofsfuse for chain {stack.parent.name}" in log
        assert len(serving(stack)) == 4  # a keeper and a worker in each namespace
    finally:
        client.close()
        first.stop()
        daemons = serving(stack)
        for pid in daemons:  # SIGTERM to a keeper or worker ends both; the namespace they held goes with them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        assert wait_gone(daemons)
        unmount_below(tmp_path)


def serving(stack: Path) -> list[int]:
    """The erofsfuse processes serving ``stack``, in any mount namespace."""
    found = subprocess.run(["pgrep", "-f", f"{stack}$"], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split()]
