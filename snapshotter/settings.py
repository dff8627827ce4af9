"""The settings of ``erofs-snapshotter``: a TOML file (``--config``) and the command line, the command line winning::

    root = "/var/lib/erofs-snapshotter"
    address = "/run/erofs-snapshotter/snapshotter.sock"
    mode = "auto"                # auto | kernel | fuse
    writable_root = "/fast/erofs-snapshotter"   # optional: upper dirs of active snapshots
    erofsfuse = "/usr/local/bin/erofsfuse"      # optional: default is next to this Python, then PATH
    mkfs_erofs = "mkfs.erofs"
    socket_group = "containerd"  # optional: the socket is 0660 and owned by this group, not 0600
    fuse_idle_seconds = 300      # fuse mode: how long a chain's daemon stays up after its last snapshot goes
    fuse_idle_max = 4            # ... how many daemons may be idle at once (the longest idle stops first)
    fuse_idle_memory_mib = 512   # ... and how much memory they may hold together
    flatten_layers = 32          # kernel mode: chains deeper than this are mounted as one fsmeta (0: never)
    verity = "off"               # off | on (a dm-verity tree per layer, checked in fuse mode) | required (fuse only)
    log_level = "info"
"""

from __future__ import annotations

import argparse
import grp
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path

from erofsfuse import __version__

from .flatten import MKFS_OPTIONS
from .idle import MIB, IdlePolicy
from .planner import Mode, Verity

IDLE = IdlePolicy()
# Chains deeper than this are flattened by default: see the README's Snapshotter section for the measurements
FLATTEN_LAYERS = 32
DEFAULTS = {
    "root": "/var/lib/erofs-snapshotter",
    "address": "/run/erofs-snapshotter/snapshotter.sock",
    "mode": Mode.AUTO.value,
    "writable_root": None,
    "erofsfuse": None,
    "mkfs_erofs": "mkfs.erofs",
    "socket_group": None,
    "fuse_idle_seconds": f"{IDLE.seconds:g}",
    "fuse_idle_max": str(IDLE.max_daemons),
    "fuse_idle_memory_mib": str(IDLE.max_memory // MIB),
    "flatten_layers": str(FLATTEN_LAYERS),
    "verity": Verity.OFF.value,
    "log_level": "info",
}
NUMBERS = {"fuse_idle_seconds": float, "fuse_idle_max": int, "fuse_idle_memory_mib": int, "flatten_layers": int}


def parse_settings(argv: list[str] | None = None,
                   defaults: Mapping[str, str | None] = DEFAULTS) -> dict[str, str | None]:
    parser = argparse.ArgumentParser(prog="erofs-snapshotter", description=(
        "containerd snapshotter keeping layers as EROFS blobs, mounted with the kernel or erofsfuse"),
        epilog="erofs-snapshotter rootless [...] starts containerd and the snapshotter for a user without root "
               "(see erofs-snapshotter rootless --help)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", type=Path, help="TOML file with the settings below")
    parser.add_argument("--root", help=f"state directory (default {DEFAULTS['root']})")
    parser.add_argument("--address", help=f"unix socket to serve on (default {DEFAULTS['address']})")
    parser.add_argument("--mode", choices=[m.value for m in Mode], help="how layers are mounted (default auto)")
    parser.add_argument("--writable-root", dest="writable_root",
                        help="keep upper dirs of active snapshots on this (separate) filesystem")
    parser.add_argument("--erofsfuse", help="erofsfuse executable for fuse mode")
    parser.add_argument("--mkfs-erofs", dest="mkfs_erofs", help="mkfs.erofs executable")
    parser.add_argument("--socket-group", dest="socket_group",
                        help="group (name or id) that may use the socket too (mode 0660; default: root only, 0600)")
    parser.add_argument("--fuse-idle-seconds", dest="fuse_idle_seconds", metavar="SECONDS",
                        help="fuse mode: keep a chain's erofsfuse daemon up this long after its last snapshot goes, "
                             "so the next container on the image finds it warm "
                             f"(default {DEFAULTS['fuse_idle_seconds']}; 0 stops it at once)")
    parser.add_argument("--fuse-idle-max", dest="fuse_idle_max", metavar="N",
                        help=f"at most this many idle daemons (default {DEFAULTS['fuse_idle_max']})")
    parser.add_argument("--fuse-idle-memory-mib", dest="fuse_idle_memory_mib", metavar="MIB",
                        help=f"idle daemons hold at most this much memory together (default "
                             f"{DEFAULTS['fuse_idle_memory_mib']})")
    parser.add_argument("--flatten-layers", dest="flatten_layers", metavar="N",
                        help="kernel mode: serve a chain of more than N layers as one erofs mount of a metadata image "
                             "that refers to the layers (built at the chain's first use; layers are then converted "
                             f"with {' '.join(MKFS_OPTIONS)}) (default {DEFAULTS['flatten_layers']}; 0 never does)")
    parser.add_argument("--verity", choices=[v.value for v in Verity],
                        help="give every committed layer a dm-verity hash tree (its root hash in the snapshot's "
                             "erofs.verity label) that fuse mode checks each block against: on (kernel mode mounts "
                             "the layers unchecked) or required (every chain in fuse mode, checked) (default off)")
    parser.add_argument("--log-level", dest="log_level", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    settings: dict[str, str | None] = dict(defaults)
    if args.config:
        with open(args.config, "rb") as f:
            from_file = tomllib.load(f)
        unknown = set(from_file) - set(DEFAULTS)
        if unknown:
            parser.error(f"{args.config}: unknown settings {', '.join(sorted(unknown))}")
        settings.update({k: str(v) for k, v in from_file.items()})
    settings.update({k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None})
    if settings["mode"] not in {m.value for m in Mode}:
        parser.error(f"mode must be one of {', '.join(m.value for m in Mode)}")
    if settings["verity"] not in {v.value for v in Verity}:
        parser.error(f"verity must be one of {', '.join(v.value for v in Verity)}")
    if settings["verity"] == Verity.REQUIRED and settings["mode"] == Mode.KERNEL:
        parser.error("verity = required needs fuse or auto mode: the kernel mounts layers without checking them "
                     "(no dm-verity)")
    for key, kind in NUMBERS.items():
        try:
            value = kind(str(settings[key]))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError
        except ValueError:
            parser.error(f"{key} must be a {'whole ' if kind is int else ''}number of 0 or more, not {settings[key]!r}")
    if settings["socket_group"] is not None:
        try:
            settings["socket_group"] = str(group_id(str(settings["socket_group"])))
        except KeyError:
            parser.error(f"socket group {settings['socket_group']!r} does not exist")
    return settings


def group_id(name: str) -> int:
    """A group given by name or number."""
    return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid


def idle_policy(settings: dict[str, str | None]) -> IdlePolicy:
    return IdlePolicy(float(str(settings["fuse_idle_seconds"])), int(str(settings["fuse_idle_max"])),
                      int(str(settings["fuse_idle_memory_mib"])) * MIB)
