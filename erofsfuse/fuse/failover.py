"""Surviving SIGKILL: a keeper holds the FUSE connection, a respawned worker resumes it.

A FUSE mount dies when the last file descriptor of its connection closes.
With ``-o failover`` a small keeper process holds a duplicate of the
connection and respawns the worker (the process that serves requests)
whenever it dies without being asked to, so programs using the mount (for
instance an overlay built on it) never see ENOTCONN.

A new worker cannot simply read the old connection: libfuse answers every
request with EIO until it has processed FUSE_INIT, which the kernel sent only
once, to the first worker. So a resumed worker hands libfuse one end of a
SEQPACKET socket pair instead (libfuse accepts ``/dev/fd/N`` as a mountpoint),
writes a synthetic FUSE_INIT into the other end, swallows libfuse's reply,
and from then on shuttles messages between the socket and the real
connection. It first asks the kernel to resend the requests the dead worker
had read but not answered (FUSE_NOTIFY_RESEND, Linux 6.9 and later).

The synthetic INIT claims protocol 7.13: that keeps libfuse on plain
read/writev (no splice, which a socket cannot do) while every request and
reply the kernel exchanges still has the layout libfuse expects.

The keeper is forked from the process the ``erofsfuse`` command started, and
workers are forked from the keeper, so starting or replacing a worker costs
no interpreter start-up.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable

from ..host.credentials import CAP_SYS_RESOURCE, privileged_in_initial_namespace

log = logging.getLogger("erofsfuse")

FUSE_INIT = 26
FUSE_NOTIFY_RESEND = 7
IN_HEADER = struct.Struct("<I I Q Q I I I H H")  # len opcode unique nodeid uid gid pid total_extlen padding
OUT_HEADER = struct.Struct("<I i Q")  # len error unique
INIT_IN = struct.Struct("<I I I I I 44x")  # major minor max_readahead flags flags2
FAKE_INIT_UNIQUE = (1 << 62) - 1
# what the kernel offers that this daemon relies on: async reads, readdirplus, POSIX ACLs, big requests
INIT_FLAGS = (1 << 0) | (1 << 5) | (1 << 13) | (1 << 14) | (1 << 18) | (1 << 20) | (1 << 22)
MESSAGE_MAX = 4 << 20
READY = b"ready"  # what a starting daemon reports once its mount is live; otherwise "error: ..."
RESPAWN_LIMIT = 10  # respawns within RESPAWN_WINDOW seconds before the keeper gives up
RESPAWN_WINDOW = 60.0


def ready_message(error: str | None) -> bytes:
    """The report of a starting daemon (worker) to whoever waits for its mount."""
    return f"error: {error}".encode() if error else READY


def fake_init() -> bytes:
    body = INIT_IN.pack(7, 13, 128 << 10, INIT_FLAGS, 0)
    return IN_HEADER.pack(IN_HEADER.size + len(body), FUSE_INIT, FAKE_INIT_UNIQUE, 0, 0, 0, 0, 0, 0) + body


def resend_notification() -> bytes:
    return OUT_HEADER.pack(OUT_HEADER.size, FUSE_NOTIFY_RESEND, 0)


def fuse_device_fd() -> int:
    """This process's descriptor of /dev/fuse (the mounted connection)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                return int(name)
        except OSError:
            continue
    raise RuntimeError("no /dev/fuse descriptor in this process")


def protect_from_oom() -> None:
    """Ask the OOM killer to spare this process: possible with CAP_SYS_RESOURCE in the initial user namespace
    only, so not attempted elsewhere (a rootless daemon would log a warning for every start of every worker)."""
    if not privileged_in_initial_namespace(CAP_SYS_RESOURCE):
        log.debug("not protecting process %d from the OOM killer: not privileged in the initial user namespace",
                  os.getpid())
        return
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")
    except OSError as exc:
        log.warning("cannot protect process %d from the OOM killer: %s", os.getpid(), exc.strerror)


class ConnectionProxy:
    """Relays one FUSE connection to a libfuse session that has not seen the kernel's INIT."""

    def __init__(self, device_fd: int, on_closed: Callable[[], None]):
        self.device_fd = device_fd
        self.on_closed = on_closed
        self.session_end, self.proxy_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for sock in (self.session_end, self.proxy_end):
            self._grow_buffers(sock)
        self.resumed = threading.Event()
        self._closing = False

    @staticmethod
    def _grow_buffers(sock: socket.socket) -> None:
        so_sndbufforce, so_rcvbufforce = 32, 33  # Linux; root may exceed the system maximum
        for forced, plain in ((so_sndbufforce, socket.SO_SNDBUF), (so_rcvbufforce, socket.SO_RCVBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, forced, MESSAGE_MAX)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, plain, MESSAGE_MAX)

    @property
    def mountpoint_for_libfuse(self) -> str:
        return f"/dev/fd/{self.session_end.fileno()}"

    def start(self) -> None:
        self.proxy_end.send(fake_init())
        threading.Thread(target=self._replies, name="fuse-replies", daemon=True).start()

    def _replies(self) -> None:
        """libfuse's replies to the kernel; the one to the synthetic INIT starts the relay."""
        while True:
            try:
                message = self.proxy_end.recv(MESSAGE_MAX)
            except OSError:
                message = b""
            if not message:
                return
            unique = OUT_HEADER.unpack_from(message)[2]
            if unique == FAKE_INIT_UNIQUE:
                error = OUT_HEADER.unpack_from(message)[1]
                if error:
                    log.error("libfuse refused the resumed session (error %d)", error)
                    self._close()
                    return
                self._write(resend_notification())
                threading.Thread(target=self._requests, name="fuse-requests", daemon=True).start()
                self.resumed.set()
                continue
            self._write(message)

    def _requests(self) -> None:
        """The kernel's requests, passed on to libfuse."""
        while True:
            try:
                message = os.read(self.device_fd, MESSAGE_MAX)
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOENT:  # the request was interrupted before it was read
                    continue
                break
            if not message:
                break
            try:
                self.proxy_end.send(message)
            except OSError:
                break
        self._close()

    def _write(self, message: bytes) -> None:
        try:
            os.write(self.device_fd, message)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # the request was interrupted meanwhile, nobody waits for the reply
                log.debug("reply to the kernel failed: %s", exc)

    def _close(self) -> None:
        if not self._closing:
            self._closing = True
            self.on_closed()


# -- the keeper ------------------------------------------------------------------------------------------------

WorkerStarter = Callable[[int, "int | None", list[int]], int]
KEEPER_NAME = b"erofsfuse-keep"
WORKER_NAME = b"erofsfuse"


def name_process(name: bytes) -> None:
    """Set this process's name (``ps``, /proc/PID/comm): keepers and workers tell themselves apart by it."""
    import ctypes

    pr_set_name = 15
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_name, ctypes.c_char_p(name[:15]), 0, 0, 0)


class Keeper:
    """Holds the connection, starts the worker, respawns it when it dies unasked.

    ``start_worker(channel_fd, resume_fd, close_fds)`` starts a worker process
    (forked from this already loaded process, which takes milliseconds) that
    reports on ``channel_fd`` and returns its pid.
    """

    def __init__(self, start_worker: WorkerStarter, ready_fd: int, mountpoint: str, on_ready: Callable[[], None]):
        self.start_worker = start_worker
        self.ready_fd = ready_fd
        self.mountpoint = mountpoint
        self.on_ready = on_ready
        self.device_fd: int | None = None
        self.worker = 0
        self.stopping = False
        self.respawns: list[float] = []

    def _spawn(self, resume: bool) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        close_in_worker = [ours.fileno()] + ([self.ready_fd] if self.ready_fd >= 0 else [])
        self.worker = self.start_worker(theirs.fileno(), self.device_fd if resume else None, close_in_worker)
        theirs.close()
        return ours

    def _await_ready(self, channel: socket.socket) -> str | None:
        """Wait for the worker's report: None when it serves, else its error message.

        The first worker sends the connection's descriptor along, to be kept.
        """
        try:
            message, fds, _, _ = socket.recv_fds(channel, 65536, 1)
        except OSError as exc:
            message, fds = f"error: {exc}".encode(), []
        channel.close()
        for fd in fds:
            if self.device_fd is None:
                self.device_fd = fd
            else:
                os.close(fd)
        if message == READY:
            return None
        return message.decode(errors="replace").removeprefix("error: ") or "the worker exited before mounting"

    def _forward(self, signum: int, frame: object) -> None:
        self.stopping = True
        if self.worker:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.worker, signal.SIGTERM)

    def _wait_worker(self) -> int:
        """The worker's exit: its status, or minus the signal that killed it."""
        while True:
            try:
                _, status = os.waitpid(self.worker, 0)
            except InterruptedError:
                continue
            return os.waitstatus_to_exitcode(status)

    def run(self) -> int:
        name_process(KEEPER_NAME)
        protect_from_oom()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._forward)
        error = self._await_ready(self._spawn(resume=False))
        os.write(self.ready_fd, ready_message(error))
        os.close(self.ready_fd)
        self.ready_fd = -1
        if error:
            self._wait_worker()
            return 1
        self.on_ready()
        while True:
            status = self._wait_worker()
            if self.stopping or status == 0:
                log.info("worker exited (status %d); the mount on %s is gone", status, self.mountpoint)
                return 0
            now = time.monotonic()
            self.respawns = [t for t in self.respawns if now - t < RESPAWN_WINDOW] + [now]
            if len(self.respawns) > RESPAWN_LIMIT:
                log.error("worker died %d times within %.0f s; giving up on %s", RESPAWN_LIMIT, RESPAWN_WINDOW,
                          self.mountpoint)
                return 1
            log.warning("worker for %s died (%s); resuming the connection in a new worker", self.mountpoint,
                        describe_status(status))
            error = self._await_ready(self._spawn(resume=True))
            if error:
                log.error("the new worker could not resume %s: %s", self.mountpoint, error)


def describe_status(status: int) -> str:
    if status < 0:
        return f"killed by {signal.Signals(-status).name}"
    return f"exit status {status}"
