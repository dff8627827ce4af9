"""``erofs-snapshotter rootless``: containerd and this snapshotter for a user without root, in one rootlesskit
namespace, started the way nerdctl's ``containerd-rootless.sh`` starts containerd.

As the user, the command checks what rootless containers need and replaces itself with rootlesskit, which
maps the user's subordinate ids into a new user namespace, gives it a mount namespace with ``/etc`` and
``/run`` copied up (writable, private copies), its own network through slirp4netns (or the host's), and runs
the command again inside, as that namespace's root. Its state directory, ``$XDG_RUNTIME_DIR/containerd-rootless``
(the one nerdctl's tools look in), holds ``child_pid``, the process to ``nsenter``.

Inside, ``/run/containerd`` becomes a bind of ``$XDG_RUNTIME_DIR/containerd``: containerd 1.6 keeps its shims'
sockets there whatever its configuration says, and ``ctr`` finds containerd's socket there. The snapshotter
starts first and serves (kernel EROFS mounts are impossible in a user namespace, so auto mode picks fuse),
then containerd, configured with it as the ``erofs`` proxy plugin. A snapshotter that exits is started again
(containerd redials it); containerd's exit, or SIGTERM/SIGINT, stops both. On the way out the erofsfuse mounts
of this namespace are detached: a later start gets a new namespace and could never reach them, while running
containers keep them through their overlays (which hold mounts of their own) until they end.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from erofsfuse.host.mounting import MS_BIND, mount

from .layout import Layout
from .mounts import mounts_under, unmount
from .settings import DEFAULTS, parse_settings

log = logging.getLogger("erofs-snapshotter rootless")

STATE_DIR_NAME = "containerd-rootless"  # under $XDG_RUNTIME_DIR, as nerdctl names it
SHARED_RUN = Path("/run/containerd")  # containerd 1.6's shim sockets are there, whatever its state setting
STOP_TIMEOUT = 30.0  # seconds containerd and the snapshotter get to stop after SIGTERM
CONTAINERD_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
# no Kubernetes here: ctr and nerdctl talk to containerd itself
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{state}/containerd.sock"

[proxy_plugins]
  [proxy_plugins.erofs]
    type = "snapshot"
    address = "{snapshotter}"
"""


class RootlessError(Exception):
    """Rootless containerd cannot start here; the message says why and what to do."""


@dataclass(frozen=True)
class Plan:
    """Where everything goes, the same outside the namespace and inside (both read the same environment)."""

    runtime_dir: Path  # $XDG_RUNTIME_DIR
    data_dir: Path  # $XDG_DATA_HOME
    net: str
    containerd_config: Path | None  # the user's own, instead of the generated one
    snapshotter: dict[str, str | None]  # erofs-snapshotter's settings

    @property
    def state_dir(self) -> Path:
        return self.runtime_dir / STATE_DIR_NAME

    @property
    def shared_run(self) -> Path:
        """What the namespace sees at /run/containerd."""
        return self.runtime_dir / "containerd"

    def snapshotter_args(self) -> list[str]:
        """The settings as erofs-snapshotter options (those from a --config file included)."""
        return [arg for key, value in self.snapshotter.items() if value is not None
                for arg in (f"--{key.replace('_', '-')}", value)]


def rootless_defaults(runtime_dir: Path, data_dir: Path) -> Mapping[str, str | None]:
    """erofs-snapshotter's settings for a user: state under the user's data, the socket in the runtime dir."""
    return {**DEFAULTS, "root": str(data_dir / "erofs-snapshotter"),
            "address": str(runtime_dir / "erofs-snapshotter" / "snapshotter.sock")}


def user_dirs(environ: Mapping[str, str]) -> tuple[Path, Path]:
    """$XDG_RUNTIME_DIR (which must exist and be the user's own) and $XDG_DATA_HOME (~/.local/share)."""
    runtime = environ.get("XDG_RUNTIME_DIR")
    if not runtime:
        raise RootlessError("XDG_RUNTIME_DIR is not set: log in through systemd-logind (ssh, a desktop, "
                            "machinectl shell USER@), or set it to a directory of your own with mode 0700")
    try:
        owner = os.stat(runtime).st_uid
    except OSError as exc:
        raise RootlessError(f"XDG_RUNTIME_DIR {runtime}: {exc.strerror}") from exc
    if owner != os.getuid():
        raise RootlessError(f"XDG_RUNTIME_DIR {runtime} is not yours (owner uid {owner})")
    data = environ.get("XDG_DATA_HOME") or str(Path(environ.get("HOME", "~")).expanduser() / ".local" / "share")
    return Path(runtime), Path(data)


def parse_plan(argv: list[str], environ: Mapping[str, str]) -> tuple[Plan, bool]:
    """The plan, and whether this is the run inside the namespace."""
    parser = argparse.ArgumentParser(
        prog="erofs-snapshotter rootless",
        description="Run containerd with erofs-snapshotter as a user without root, in one rootlesskit namespace. "
                    "Other options are erofs-snapshotter's; here --root defaults to $XDG_DATA_HOME/erofs-snapshotter "
                    "and --address to $XDG_RUNTIME_DIR/erofs-snapshotter/snapshotter.sock.",
        epilog="Use ctr inside the namespace: nsenter -U --preserve-credentials -m --wd=$PWD "
               "-t $(cat $XDG_RUNTIME_DIR/containerd-rootless/child_pid) ctr ...")
    parser.add_argument("--net", choices=["slirp4netns", "host"],
                        help="the namespace's network: its own through slirp4netns (the default where it is "
                             "installed), or the host's")
    parser.add_argument("--containerd-config", dest="containerd_config", type=Path,
                        help="containerd configuration to use instead of the generated one (it must have "
                             "the erofs proxy plugin at the snapshotter's address)")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if os.geteuid() == 0 and not args.inside:
        parser.error("this is for users without root; as root, run erofs-snapshotter and containerd themselves")
    try:
        runtime, data = user_dirs(environ)
    except RootlessError as exc:
        parser.error(str(exc))
    settings = parse_settings(rest, rootless_defaults(runtime, data))
    for key in ("root", "address", "writable_root"):  # the same wherever rootlesskit starts us
        if settings[key] is not None:
            settings[key] = str(Path(str(settings[key])).absolute())
    net = args.net or ("slirp4netns" if shutil.which("slirp4netns") else "host")
    config = args.containerd_config.absolute() if args.containerd_config else None
    return Plan(runtime, data, net, config, settings), args.inside


# -- outside: as the user ---------------------------------------------------------------------------------
def missing_prerequisites(plan: Plan) -> list[str]:
    """What keeps rootless containerd from starting, each with what to do about it."""
    problems = []
    commands = {"rootlesskit": "rootlesskit", "newuidmap": "uidmap", "newgidmap": "uidmap",
                "containerd": "containerd", "runc": "runc"}
    if plan.net == "slirp4netns":
        commands["slirp4netns"] = "slirp4netns"
    for command, package in commands.items():
        if not shutil.which(command):
            problems.append(f"{command} is not installed (Debian package {package})")
    if plan.net == "slirp4netns":
        try:
            os.close(os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC))
        except OSError as exc:
            problems.append(f"slirp4netns needs /dev/net/tun open to this user ({exc.strerror}); "
                            "make it mode 0666 or use --net host")
    return problems


def rootlesskit_command(plan: Plan, argv: list[str]) -> list[str]:
    """rootlesskit with nerdctl's settings, running this command again inside."""
    network = (["--net=slirp4netns", "--mtu=65520", "--slirp4netns-sandbox=auto", "--slirp4netns-seccomp=auto",
                "--disable-host-loopback", "--port-driver=builtin"] if plan.net == "slirp4netns" else ["--net=host"])
    return ["rootlesskit", f"--state-dir={plan.state_dir}", *network, "--copy-up=/etc", "--copy-up=/run",
            "--propagation=rslave", sys.executable, "-m", "snapshotter.main", "rootless", "--inside", *argv]


# -- inside: root of the namespace ------------------------------------------------------------------------
def share_run_containerd(plan: Plan) -> None:
    """Make /run/containerd the user's runtime directory (the copied-up /run shows the host's as a symlink)."""
    plan.shared_run.mkdir(mode=0o700, parents=True, exist_ok=True)
    if SHARED_RUN.is_symlink():
        SHARED_RUN.unlink()
    SHARED_RUN.mkdir(mode=0o700, exist_ok=True)
    mount(str(plan.shared_run), SHARED_RUN, "none", MS_BIND)


def containerd_config(plan: Plan) -> Path:
    """The user's containerd configuration, or one with the user's directories and the erofs proxy plugin."""
    if plan.containerd_config:
        return plan.containerd_config
    path = plan.shared_run / "erofs-rootless.toml"
    path.write_text(CONTAINERD_CONFIG.format(root=plan.data_dir / "containerd", state=SHARED_RUN,
                                             snapshotter=plan.snapshotter["address"]))
    return path


class Stopped(Exception):
    """SIGTERM or SIGINT arrived."""


class Signals:
    """SIGTERM, SIGINT and SIGCHLD, waited for on one pipe."""

    def __init__(self) -> None:
        self.read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        signal.set_wakeup_fd(write_end)
        self.stop: signal.Signals | None = None
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, self._caught)

    def _caught(self, signum: int, frame: object) -> None:
        if signum != signal.SIGCHLD and self.stop is None:
            self.stop = signal.Signals(signum)

    def wait(self, timeout: float | None = None) -> None:
        """Sleep until a signal (or ``timeout``); ``Stopped`` once a stop was asked for."""
        if self.stop is None and select.select([self.read_end], [], [], timeout)[0]:
            os.read(self.read_end, 64)
        if self.stop is not None:
            raise Stopped(self.stop.name)


def start_snapshotter(plan: Plan, signals: Signals) -> subprocess.Popen:
    """Start erofs-snapshotter and wait until it serves (its socket appears then)."""
    address = Path(str(plan.snapshotter["address"]))
    address.unlink(missing_ok=True)  # one a killed snapshotter left would look ready
    proc = subprocess.Popen([sys.executable, "-m", "snapshotter.main", *plan.snapshotter_args()])
    while not address.exists():
        if proc.poll() is not None:
            raise RootlessError(f"erofs-snapshotter did not start ({exit_status(proc.returncode)}); "
                                "see its messages above")
        try:
            signals.wait(0.05)
        except Stopped:
            stop(proc, "erofs-snapshotter")
            raise
    return proc


def exit_status(returncode: int) -> str:
    return f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exit status {returncode}"


def stop(proc: subprocess.Popen, name: str) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", name, STOP_TIMEOUT)
            proc.kill()
            proc.wait()


def detach_fuse_mounts(plan: Plan) -> None:
    """Detach the erofsfuse mounts this namespace leaves: no later snapshotter can see them, and a daemon
    whose mount is detached and unused exits, while containers still running keep reading through it."""
    for entry in mounts_under(Layout(Path(str(plan.snapshotter["root"])).resolve()).snapshots_dir):
        if entry.fstype.startswith("fuse"):
            log.info("detaching %s: a later start is in a new namespace and cannot reach it", entry.target)
            unmount(entry.target)


def supervise(plan: Plan, signals: Signals) -> int:
    """Run the snapshotter (started again whenever it exits) and containerd until containerd exits or a stop
    is asked for; returns containerd's exit status (0 for a stop)."""
    snapshotter = start_snapshotter(plan, signals)
    containerd = subprocess.Popen(["containerd", "--config", str(containerd_config(plan))])
    log.info("containerd (pid %d) and erofs-snapshotter (pid %d) started (network: %s); child_pid is in %s",
             containerd.pid, snapshotter.pid, plan.net, plan.state_dir)
    try:
        while containerd.poll() is None:
            if snapshotter.poll() is not None:
                log.warning("erofs-snapshotter exited (%s); starting it again", exit_status(snapshotter.returncode))
                snapshotter = start_snapshotter(plan, signals)
            signals.wait()
        log.warning("containerd exited (%s); stopping erofs-snapshotter", exit_status(containerd.returncode))
        return containerd.returncode if containerd.returncode >= 0 else 128 - containerd.returncode
    except Stopped as exc:
        log.info("%s: stopping containerd and erofs-snapshotter", exc)
        return 0
    finally:
        stop(containerd, "containerd")
        stop(snapshotter, "erofs-snapshotter")


def run_inside(plan: Plan) -> int:
    signals = Signals()
    share_run_containerd(plan)
    try:
        return supervise(plan, signals)
    except Stopped:
        return 0
    finally:
        detach_fuse_mounts(plan)


def main(argv: list[str]) -> int:
    plan, inside = parse_plan(argv, os.environ)
    logging.basicConfig(level=str(plan.snapshotter["log_level"]).upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if inside:
            return run_inside(plan)
        problems = missing_prerequisites(plan)
        if problems:
            raise RootlessError("; ".join(problems))
        command = rootlesskit_command(plan, argv)
        os.execvp(command[0], command)
    except RootlessError as exc:
        log.error("%s", exc)
        return 1
