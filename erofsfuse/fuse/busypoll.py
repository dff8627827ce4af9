"""Adaptive busy polling: keep the event loop awake for a moment after each request.

A FUSE request is a synchronous round trip for the program that made it.
When the daemon's CPU has gone idle between two requests, waking it costs
more than serving a cached lookup (on virtual machines, tens of
microseconds). Multi-threaded libfuse daemons hide this by chance: one of
their readers is often woken on the requester's CPU. A trio loop has a
single reader, so instead it polls (non-blocking epoll) for ``window``
seconds after the last request and sleeps only when that passes quietly,
as the kernel's ``busy_poll`` does for sockets. An idle mount costs nothing;
a busy one spends at most one core polling.
"""

from __future__ import annotations

import trio


class BusyPoll:
    """Counts requests and keeps trio polling while they keep coming."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.requests = 0
        self._waker: trio.Event | None = None

    def touch(self) -> None:
        """Called at the start of every request."""
        self.requests += 1
        if self._waker is not None:
            self._waker.set()
            self._waker = None

    async def run(self) -> None:
        """Poll while requests arrive at least every ``window`` seconds, else sleep until the next one."""
        if self.window <= 0:
            return
        clock = trio.current_time
        while True:
            seen = self.requests
            deadline = clock() + self.window
            while True:
                # a runnable task makes trio poll for events with a zero timeout
                await trio.lowlevel.checkpoint()
                if self.requests != seen:
                    seen = self.requests
                    deadline = clock() + self.window
                elif clock() > deadline:
                    break
            self._waker = trio.Event()
            await self._waker.wait()
