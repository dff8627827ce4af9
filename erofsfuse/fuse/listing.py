"""Which directory listings carry attributes, learnt per process from what it does next.

A listing with attributes (READDIRPLUS) spares a LOOKUP for every entry the
caller then stats (``ls -l``, ``tar``, ``du``), but costs the daemon and the
kernel an inode per entry, wasted on callers that only want names and types
(``find -type f``, globbing, overlayfs merging directories). The kernel's own
answer, ``readdirplus_auto``, decides per directory and guesses wrong for a
large directory read in full before its entries are stat'ed; pyfuse3 turns it
off. Deciding per process works better: a process gets names-only listings
until it looks up a non-directory in a directory it just had listed that way
(it wants attributes: from then on its listings carry them). Looking up a
subdirectory does not count: that is how any walker descends.

Threads of one process count as one caller (a Go walker lists on one thread
and stats on others). Callers the kernel does not name (pid 0) get attributes.
"""

from __future__ import annotations

import functools
from collections import OrderedDict, deque
from collections.abc import Callable

RECENT_LISTINGS = 8  # per process: the directories whose names-only listing a lookup may follow
PROCESSES = 4096  # processes remembered (least recently seen forgotten first)


def thread_group(tid: int) -> int:
    """The process a thread belongs to (its thread group id); the thread itself if /proc cannot tell."""
    try:
        with open(f"/proc/{tid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return tid


class ListingAdvisor:
    """Chooses, per directory listing, between entries with attributes and names only."""

    def __init__(self, process_of: Callable[[int], int] = thread_group):
        # a reused thread id may briefly map to an old process: that only costs speed
        self._process_of = functools.lru_cache(maxsize=PROCESSES)(process_of)
        self._openers: dict[int, int] = {}  # directory inode -> process of its latest opener
        self._listed: OrderedDict[int, deque[int]] = OrderedDict()  # process -> names-only listings, newest last
        self._wants_attributes: OrderedDict[int, None] = OrderedDict()

    def opened(self, dir_ino: int, pid: int) -> None:
        """A directory was opened (OPENDIR) by thread ``pid``."""
        if pid:
            self._openers[dir_ino] = self._process_of(pid)
        else:
            self._openers.pop(dir_ino, None)

    def closed(self, dir_ino: int) -> None:
        self._openers.pop(dir_ino, None)

    def with_attributes(self, dir_ino: int) -> bool:
        """Whether the next page of ``dir_ino``'s listing carries attributes (else: names only)."""
        process = self._openers.get(dir_ino)
        if process is None:
            return True
        if process in self._wants_attributes:
            self._wants_attributes.move_to_end(process)
            return True
        recent = self._listed.get(process)
        if recent is None:
            recent = self._listed[process] = deque(maxlen=RECENT_LISTINGS)
            if len(self._listed) > PROCESSES:
                self._listed.popitem(last=False)
        else:
            self._listed.move_to_end(process)
        if dir_ino not in recent:
            recent.append(dir_ino)
        return False

    def looked_up(self, parent_ino: int, pid: int, is_dir: bool) -> None:
        """Thread ``pid`` looked up a name in ``parent_ino`` (a LOOKUP that found something)."""
        if is_dir or not pid or not self._listed:
            return
        process = self._process_of(pid)
        recent = self._listed.get(process)
        if recent is not None and parent_ino in recent:
            del self._listed[process]
            self._wants_attributes[process] = None
            if len(self._wants_attributes) > PROCESSES:
                self._wants_attributes.popitem(last=False)
