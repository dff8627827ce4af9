"""Who this process is to the kernel: its user namespace, its capabilities, its mount namespace.

Rootless setups (``unshare -Urm``, rootlesskit) make a process root with every capability inside a user
namespace, which is not what the kernel asks for everywhere: mounting EROFS, or lowering a process's OOM
score, needs the capability in the initial user namespace.
"""

from __future__ import annotations

import os

CAP_SYS_ADMIN = 21
CAP_SYS_RESOURCE = 24
_INITIAL_UID_MAP = ["0", "0", "4294967295"]  # the initial namespace maps every id to itself


def in_user_namespace() -> bool:
    """Whether this process runs in a user namespace other than the initial one."""
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() != _INITIAL_UID_MAP
    except OSError:
        return False


def has_capability(capability: int) -> bool:
    """Whether ``capability`` is effective for this process (in its own user namespace)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> capability & 1)
    return False


def privileged_in_initial_namespace(capability: int) -> bool:
    """Whether this process holds ``capability`` where the kernel checks it against the initial user namespace."""
    return not in_user_namespace() and has_capability(capability)


def shares_mount_namespace(pid: int | str) -> bool:
    """Whether process ``pid`` is in this process's mount namespace (FileNotFoundError if it is gone).

    The kernel shows a process's namespaces to processes of its own user namespace that hold the capabilities
    it holds, and to those with CAP_SYS_PTRACE over it: one this process may not look at is in another user
    namespace (a sibling rootlesskit's, say), which has mount namespaces of its own.
    """
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    except PermissionError:
        return False
