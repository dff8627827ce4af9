"""Idle erofsfuse daemons: which stay up after their last snapshot goes, and which stop now.

Every container started on an image prepares a snapshot on the image's committed chain, and in fuse mode
one erofsfuse daemon serves that chain. Stopping the daemon with the chain's last snapshot makes the next
container on the same image (a restart, a second replica, the next ``ctr run``) pay a daemon start and cold
caches, so a daemon stays up, idle, for a while. An idle daemon waits in the kernel for requests that do
not come (no CPU), but it holds memory, so their number and their total resident memory are capped too.

The rules are pure functions of the idle stacks, the policy and the time; when a stack went idle is kept on
disk by the daemons (``stack.idle``), read on the boot clock, which counts across snapshotter restarts (a
daemon never outlives a reboot). ``ExpiryTimer`` only wakes the snapshotter when the earliest one is due.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

MIB = 1 << 20


def boot_clock() -> float:
    """Seconds since boot, suspend included: one clock for every process until the next reboot."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass(frozen=True)
class IdlePolicy:
    """How long and how many erofsfuse daemons stay up without a snapshot using them."""

    seconds: float = 300.0  # 0: a daemon stops as soon as no snapshot uses it
    max_daemons: int = 4
    max_memory: int = 512 * MIB  # resident bytes of all idle daemons together

    @property
    def lingers(self) -> bool:
        return self.seconds > 0 and self.max_daemons > 0 and self.max_memory > 0


@dataclass(frozen=True)
class IdleStack:
    """A mounted stack that no snapshot uses."""

    top: int  # the chain's top layer id
    since: float  # boot_clock() when its last snapshot went
    memory: int  # resident bytes of its keeper and worker


@dataclass(frozen=True)
class IdleVerdict:
    stop: dict[int, str]  # top layer id -> why its daemon stops now
    next_expiry: float | None  # boot_clock() when the earliest kept daemon's time is up; None if none is kept


def judge_idle(stacks: Iterable[IdleStack], policy: IdlePolicy, now: float) -> IdleVerdict:
    """Stop the daemons whose idle time is up; then, while more daemons are idle than allowed or they hold
    more memory than allowed together, the one idle longest."""
    if not policy.lingers:
        return IdleVerdict({s.top: "no snapshot uses it" for s in stacks}, None)
    stop: dict[int, str] = {}
    kept: list[IdleStack] = []
    for stack in sorted(stacks, key=lambda s: (s.since, s.top)):
        if now - stack.since >= policy.seconds:
            stop[stack.top] = f"idle for {now - stack.since:.0f}s (the limit is {policy.seconds:g}s)"
        else:
            kept.append(stack)
    while (count := len(kept)) > policy.max_daemons:
        stop[kept.pop(0).top] = f"idle longest of {count} idle daemons (at most {policy.max_daemons})"
    while kept and (total := sum(s.memory for s in kept)) > policy.max_memory:
        stop[kept.pop(0).top] = (f"idle longest while idle daemons hold {total / MIB:.0f} MiB "
                                 f"(at most {policy.max_memory / MIB:.0f} MiB)")
    return IdleVerdict(stop, min((s.since + policy.seconds for s in kept), default=None))


class ExpiryTimer:
    """Calls ``expire`` from its own thread once the time last set has come; sleeps in between (no polling)."""

    def __init__(self, expire: Callable[[], None]) -> None:
        self._expire = expire
        self._due: float | None = None
        self._stopped = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="idle-expiry", daemon=True)
        self._thread.start()

    def set(self, due: float | None) -> None:
        """Wake at ``due`` (boot_clock() seconds), replacing the time set before; None: not at all."""
        with self._changed:
            self._due = due
            self._changed.notify()

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        with self._changed:
            while not self._stopped:
                if self._due is None:
                    self._changed.wait()
                    continue
                remaining = self._due - boot_clock()
                if remaining > 0:
                    self._changed.wait(remaining)
                    continue
                self._due = None
                self._changed.release()
                try:
                    self._expire()
                except Exception:
                    log.exception("releasing unused mounts and daemons failed")
                finally:
                    self._changed.acquire()
