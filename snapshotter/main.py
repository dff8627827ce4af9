"""``erofs-snapshotter``: the containerd proxy snapshotter daemon, in the foreground, logging to stderr.

Its settings (``settings``) come from a TOML file and the command line; ``erofs-snapshotter rootless``
starts containerd and the snapshotter for a user without root (``rootless``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from .core import open_snapshotter
from .daemons import find_erofsfuse
from .hostcheck import UnusableMode, check_mode
from .mounts import host_capabilities
from .planner import Mode, Verity
from .service import serve
from .settings import idle_policy, parse_settings

log = logging.getLogger("erofs-snapshotter")


def stop_signal_pipe() -> int:
    """A pipe that receives SIGTERM and SIGINT: whichever thread the kernel delivers them to, reading it
    wakes the main thread (a main thread blocked on a lock may never see a signal caught by a gRPC thread)."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    return read_end


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["rootless"]:
        from .rootless import main as rootless_main  # only when asked: it needs more than the daemon

        return rootless_main(argv[1:])
    settings = parse_settings(argv)
    logging.basicConfig(level=str(settings["log_level"]).upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    mode, host, erofsfuse = Mode(settings["mode"]), host_capabilities(), find_erofsfuse(settings["erofsfuse"])
    try:
        check_mode(mode, host, erofsfuse)
    except UnusableMode as exc:
        log.error("%s", exc)
        return 1
    wake = stop_signal_pipe()
    writable = settings["writable_root"]
    snapshotter = open_snapshotter(Path(str(settings["root"])), mode,
                                   writable_root=Path(writable) if writable else None,
                                   erofsfuse=erofsfuse, mkfs=str(settings["mkfs_erofs"]),
                                   idle=idle_policy(settings), host=host,
                                   flatten_layers=int(str(settings["flatten_layers"])),
                                   verity=Verity(settings["verity"]))
    group = settings["socket_group"]
    server = serve(snapshotter, Path(str(settings["address"])), group=int(group) if group else None)
    signum = os.read(wake, 1)[0]
    log.info("%s: stopping; layer mounts stay for running containers, idle erofsfuse daemons until the next start "
             "finds their time up", signal.Signals(signum).name)
    server.stop(grace=10).wait()
    Path(str(settings["address"])).unlink(missing_ok=True)
    snapshotter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
