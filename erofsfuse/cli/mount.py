"""The ``erofsfuse`` command: mount an EROFS image (or a stack of them) with FUSE.

Compatible with erofs-utils' erofsfuse::

    erofsfuse [--device=PATH]... [--offset=BYTES] [-f] [-d] [-o OPT[,OPT...]] IMAGE MOUNTPOINT

Without ``-f`` the command returns once the mount is in place and keeps
serving in the background. Unmounting (``fusermount3 -u``, ``umount``) or
SIGTERM/SIGINT ends the daemon cleanly. mount(8) runs it through mount.fuse3
(``mount -t fuse.erofsfuse IMAGE MNT -o device=PATH``), which is why every
extra device can also be given as ``-o device=PATH``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import logging.handlers
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field

import pyfuse3
import trio

from .. import __version__
from ..erofs import ondisk as d
from ..erofs.errors import ErofsError
from ..erofs.verity import VerifiedFile, VeritySpec, parse_root_hash
from ..fuse.failover import (
    READY,
    WORKER_NAME,
    ConnectionProxy,
    Keeper,
    fuse_device_fd,
    name_process,
    protect_from_oom,
    ready_message,
)
from ..fuse.operations import ErofsOperations
from ..fuse.source import open_tree
from ..fuse.tree import Tree
from ..fuse.xattrpolicy import XattrAnswers, XattrMode
from ..host.fusedevice import fuse_problem
from ..host.mountinfo import mount_table

log = logging.getLogger("erofsfuse")

# Options libfuse understands and mount(8) passes; anything else is ours or refused.
FUSE_OPTIONS = {"allow_other", "allow_root", "auto_unmount", "default_permissions", "ro", "dev", "nodev", "suid",
                "nosuid", "exec", "noexec", "atime", "noatime", "relatime", "norelatime", "strictatime", "async",
                "sync", "dirsync", "blkdev"}
FUSE_VALUE_OPTIONS = {"fsname", "subtype", "max_read", "blksize", "context", "fscontext", "defcontext",
                      "rootcontext", "max_threads"}
IGNORED_OPTIONS = {"rw", "defaults", "auto", "noauto", "user", "nouser", "users", "_netdev", "nofail"}
READ_AHEAD_KB = 1024


class UsageError(Exception):
    pass


@dataclass
class MountOptions:
    """The parsed ``-o`` options: FUSE mount options plus erofsfuse's own."""

    fuse: set[str] = field(default_factory=lambda: {"ro", "default_permissions"})
    devices: list[str] = field(default_factory=list)
    offset: int | None = None
    threads: int = 4
    cache_mib: int = 32
    busy_poll_us: int = 200
    preload_kib: int = 128
    log: str | None = None
    failover: bool = False
    xattrs: XattrMode = XattrMode.AUTO
    verity: VeritySpec | None = None
    device_verity: dict[int, VeritySpec] = field(default_factory=dict)  # by device number, 1 first

    def device_verity_list(self) -> list[VeritySpec | None]:
        """The extra devices' hash trees in device order (None: read as it is)."""
        return [self.device_verity.get(n) for n in range(1, max(self.device_verity, default=0) + 1)]


def parse_options(values: list[str]) -> MountOptions:
    opts = MountOptions()
    verity: dict[str, str] = {}
    for value in values:
        for item in filter(None, value.split(",")):
            key, eq, arg = item.partition("=")
            if key in IGNORED_OPTIONS or key.startswith("x-"):
                continue
            if key == "device" and eq:
                opts.devices.append(arg)
            elif key == "offset" and eq:
                opts.offset = _integer(key, arg)
            elif key == "threads" and eq:
                opts.threads = max(1, _integer(key, arg))
            elif key == "cache_mib" and eq:
                opts.cache_mib = max(1, _integer(key, arg))
            elif key == "busy_poll" and eq:
                opts.busy_poll_us = max(0, _integer(key, arg))
            elif key == "preload" and eq:
                opts.preload_kib = max(0, _integer(key, arg))
            elif key == "log" and eq:
                opts.log = arg
            elif key == "failover" and not eq:
                opts.failover = True
            elif key == "xattrs" and eq:
                opts.xattrs = _xattr_mode(arg)
            elif key in ("verity", "verity_hash", "verity_hash_offset") and eq:
                verity[key] = arg
            elif key == "device_verity" and eq:
                number, spec = _device_verity(arg)
                opts.device_verity[number] = spec
            elif key in FUSE_OPTIONS and not eq:
                opts.fuse.add(key)
            elif key in FUSE_VALUE_OPTIONS and eq:
                opts.fuse.add(item)
            else:
                raise UsageError(f"unknown mount option '{item}'")
    if verity:
        if "verity" not in verity:
            raise UsageError("verity_hash and verity_hash_offset need verity=ROOTHASH")
        offset = verity.get("verity_hash_offset")
        opts.verity = VeritySpec(_root_hash(verity["verity"]), verity.get("verity_hash"),
                                 None if offset is None else _integer("verity_hash_offset", offset))
    return opts


def _device_verity(text: str) -> tuple[int, VeritySpec]:
    """``N:ROOTHASH[:HASHPATH[:OFFSET]]``: device N's tree (appended when HASHPATH is empty or left out)."""
    number, _, rest = text.partition(":")
    root, _, rest = rest.partition(":")
    if not number.isdigit() or int(number) < 1 or not root:
        raise UsageError(f"device_verity needs N:ROOTHASH[:HASHPATH[:OFFSET]] (N from 1), not '{text}'")
    path, offset = rest, None
    head, colon, tail = rest.rpartition(":")
    if colon and tail.isdigit():
        path, offset = head, int(tail)
    return int(number), VeritySpec(_root_hash(root), path or None, offset)


def _root_hash(text: str) -> bytes:
    try:
        return parse_root_hash(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _xattr_mode(text: str) -> XattrMode:
    try:
        return XattrMode(text)
    except ValueError:
        raise UsageError(f"option xattrs needs auto, on or off, not '{text}'") from None


def _integer(key: str, text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise UsageError(f"option {key} needs a number, not '{text}'") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="erofsfuse", description="Mount an EROFS image or a stack of images with FUSE.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--device", action="append", default=[], metavar="PATH",
                   help="an extra device, in device-table order (repeat as needed)")
    p.add_argument("--offset", type=lambda s: int(s, 0), default=None, metavar="BYTES",
                   help="where the image starts inside IMAGE")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-d", "--debug", action="store_true", help="log every request (implies -f)")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                   help="mount options: allow_other, fsname=, subtype=, device=PATH, offset=N, threads=N, "
                        "cache_mib=N, busy_poll=USEC, preload=KIB (files up to this size go into the page "
                        "cache when first opened, so reading them asks nothing; default 128, 0: off), "
                        "log=FILE (where a background daemon logs; default syslog), "
                        "failover (survive SIGKILL), xattrs=auto|on|off (auto: once no inode is found to have an "
                        "xattr, tell the kernel so and be asked no more; on: always answer; off: never), "
                        "verity=ROOTHASH (check every block against the image's "
                        "dm-verity tree, appended to it unless verity_hash=PATH; verity_hash_offset=N), "
                        "device_verity=N:ROOTHASH[:HASHPATH[:OFFSET]] (the same for extra device N)")
    p.add_argument("image", metavar="IMAGE", help="EROFS image, or a JSON stack file of layers")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    return p


def describe(tree: Tree) -> str:
    """One line about what is being served: images, devices, features."""
    parts = []
    for img in tree.images():
        sb = img.sb
        features = d.feature_names(sb.feature_incompat, d.INCOMPAT_NAMES)
        algs = [d.ALGORITHM_NAMES[a] for a in range(d.COMPRESSION_MAX) if sb.available_algorithms & (1 << a)]
        devs = [dev.path for dev in img.devices.extras] or (["flat"] if img.devices.flat else [])
        text = f"{img.path} (block {sb.block_size}"
        text += f", devices {','.join(devs)}" if devs else ""
        text += f", features {','.join(features)}" if features else ""
        text += f", compression {','.join(algs)}" if algs else ""
        verified = [dev.path for dev in (img.devices.primary, *img.devices.extras) if isinstance(dev, VerifiedFile)]
        text += f", verified {','.join(verified)}" if verified else ""
        parts.append(text + ")")
    return "; ".join(parts)


def raise_read_ahead(mountpoint: str) -> None:
    """Let the kernel read ahead 1 MiB at a time (root only: it is a sysfs knob).

    Runs once FUSE_INIT has been answered (the kernel resets read-ahead
    then); ``mountpoint`` must already be resolved, since resolving it
    stats the mount.
    """
    if os.geteuid() != 0:
        return
    try:
        os.stat(mountpoint)  # returns once the FUSE loop answers, i.e. after INIT
    except OSError:
        return
    device = mount_device(mountpoint)
    try:
        if device is None:
            raise OSError("not in /proc/self/mountinfo")
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as knob:
            knob.write(str(READ_AHEAD_KB))
    except OSError as exc:
        log.debug("could not raise read-ahead for %s: %s", mountpoint, exc)


def mount_device(mountpoint: str) -> str | None:
    """The ``major:minor`` of the newest mount at (resolved) ``mountpoint``, read without touching it."""
    found = [m.device for m in mount_table() if str(m.target) == mountpoint]
    return found[-1] if found else None


async def serve(ops: ErofsOperations, mountpoint: str, proxy: ConnectionProxy | None) -> bool:
    """Run the FUSE loop until unmounted; returns True if a signal asked us to stop."""
    stopped_by_signal = False
    async with trio.open_nursery() as nursery:
        read_ahead = functools.partial(trio.to_thread.run_sync, raise_read_ahead, mountpoint, abandon_on_cancel=True)
        nursery.start_soon(read_ahead)

        async def watch_signals() -> None:
            nonlocal stopped_by_signal
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                async for signum in signals:
                    log.info("received %s, unmounting", signal.Signals(signum).name)
                    stopped_by_signal = True
                    pyfuse3.terminate()
                    return

        nursery.start_soon(watch_signals)
        nursery.start_soon(ops.activity.run)
        nursery.start_soon(ops.xattrs.settle)
        if proxy is not None:
            token = trio.lowlevel.current_trio_token()
            proxy.on_closed = lambda: trio.from_thread.run_sync(pyfuse3.terminate, trio_token=token)
            proxy.start()
        await pyfuse3.main(min_tasks=1, max_tasks=32)
        nursery.cancel_scope.cancel()
    return stopped_by_signal


class Readiness:
    """Tells whoever started us whether the mount is live: the terminal, a parent's pipe, or a keeper."""

    def __init__(self, pipe_fd: int | None, keeper_fd: int | None, log_path: str | None):
        self.pipe_fd = pipe_fd
        self.keeper = socket.socket(fileno=keeper_fd) if keeper_fd is not None else None
        self.log_path = log_path

    def report(self, error: str | None = None, device_fd: int | None = None) -> None:
        message = ready_message(error)
        if self.keeper is not None:
            socket.send_fds(self.keeper, [message], [device_fd] if device_fd is not None and not error else [])
            self.keeper.close()
        elif self.pipe_fd is not None:
            os.write(self.pipe_fd, message)
            os.close(self.pipe_fd)
        elif error:
            print(f"erofsfuse: {error}", file=sys.stderr)
            return
        if not error and (self.keeper is not None or self.pipe_fd is not None):
            detach_logging(self.log_path)


def run(args: argparse.Namespace, opts: MountOptions, readiness: Readiness, resume_fd: int | None = None) -> int:
    """Open the image, mount (or resume the connection ``resume_fd``), report readiness, serve until unmounted."""
    name_process(WORKER_NAME)
    offset = opts.offset if opts.offset is not None else (args.offset or 0)
    try:
        tree = open_tree(args.image, args.device + opts.devices, offset, verity=opts.verity,
                         device_verity=opts.device_verity_list(), cache_bytes=opts.cache_mib << 20)
    except (ErofsError, OSError, ValueError) as exc:
        readiness.report(f"{args.image}: {exc}")
        return 1
    fuse_opts = set(opts.fuse)
    if not any(o.startswith("fsname=") for o in fuse_opts):
        fuse_opts.add("fsname=" + os.path.abspath(args.image).replace("\\", "\\\\").replace(",", "\\,"))
    if not any(o.startswith("subtype=") for o in fuse_opts):
        fuse_opts.add("subtype=erofsfuse")
    ops = ErofsOperations(tree, debug=args.debug, threads=opts.threads, busy_poll=opts.busy_poll_us / 1e6,
                          xattrs=XattrAnswers(tree, opts.xattrs), preload=opts.preload_kib * 1024)
    mountpoint = os.path.realpath(args.mountpoint)
    proxy = ConnectionProxy(resume_fd, on_closed=lambda: None) if resume_fd is not None else None
    if proxy is None and (problem := fuse_problem(allow_other="allow_other" in fuse_opts)):
        readiness.report(f"cannot mount on {args.mountpoint}: {problem}")
        return 1
    try:
        pyfuse3.init(ops, proxy.mountpoint_for_libfuse if proxy else mountpoint, fuse_opts)
    except RuntimeError:
        readiness.report(f"cannot mount on {args.mountpoint}: FUSE refused the mount (see the message above)")
        return 1
    if opts.failover:
        protect_from_oom()
    log.info("%s %s on %s", "resumed" if proxy else "mounted", describe(tree), args.mountpoint)
    readiness.report(device_fd=None if proxy else fuse_device_fd())
    clean = False
    try:
        by_signal = trio.run(serve, ops, mountpoint, proxy)
        clean = not by_signal
    finally:
        pyfuse3.close(unmount=not clean and proxy is None)
        if proxy is not None and not clean:
            # a resumed session did not mount: take the mount down the way a user would
            subprocess.run(["fusermount3", "-u", "-z", mountpoint], check=False, capture_output=True)
        tree.close()
        log.info("unmounted %s", args.mountpoint)
    return 0


def detach_logging(path: str | None) -> None:
    """A background daemon lets go of the caller's stderr: log to ``path`` or to syslog."""
    root = logging.getLogger()
    formatter = logging.Formatter("%(asctime)s erofsfuse[%(process)d] %(levelname)s %(message)s")
    handler: logging.Handler | None = None
    if path:
        handler = logging.FileHandler(path)
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler("/dev/log")
        formatter = logging.Formatter("erofsfuse[%(process)d]: %(levelname)s %(message)s")
    for old in list(root.handlers):
        root.removeHandler(old)
    if handler is not None:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def daemonize() -> int:
    """Fork; the parent waits until the child reports the mount is live, then exits."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        chunks = []
        while chunk := os.read(read_fd, 4096):
            chunks.append(chunk)
        message = b"".join(chunks)
        if message == READY:
            os._exit(0)
        if not message:
            _, status = os.waitpid(pid, 0)
            message = f"error: the daemon exited before mounting (status {status})".encode()
        print(f"erofsfuse: {message.decode(errors='replace').removeprefix('error: ')}", file=sys.stderr)
        os._exit(1)
    os.close(read_fd)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    return write_fd


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        opts = parse_options(args.options)
    except UsageError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="erofsfuse[%(process)d] %(levelname)s %(message)s", stream=sys.stderr)
    if not os.path.isdir(args.mountpoint):
        print(f"erofsfuse: mountpoint {args.mountpoint} is not a directory", file=sys.stderr)
        return 1
    background = not (args.foreground or args.debug)
    if background and opts.failover:
        return run_keeper(args, opts, daemonize())
    readiness = Readiness(daemonize() if background else None, None, opts.log)
    try:
        return run(args, opts, readiness)
    except BaseException:
        log.exception("erofsfuse daemon failed")
        return 1


def run_keeper(args: argparse.Namespace, opts: MountOptions, ready_fd: int) -> int:
    """Become the keeper of a failover mount; workers are forked from here."""

    def start_worker(channel_fd: int, resume_fd: int | None, close_fds: list[int]) -> int:
        pid = os.fork()
        if pid:
            return pid
        status = 1
        try:
            for fd in close_fds:
                os.close(fd)
            status = run(args, opts, Readiness(None, channel_fd, opts.log), resume_fd)
        except BaseException:
            log.exception("erofsfuse worker failed")
        finally:
            os._exit(status)

    keeper = Keeper(start_worker, ready_fd, os.path.realpath(args.mountpoint), lambda: detach_logging(opts.log))
    return keeper.run()


if __name__ == "__main__":
    sys.exit(main())
