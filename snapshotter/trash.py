"""Deleting directories off the request path.

Commit empties an upper dir of maybe 50,000 files and Remove deletes whole snapshot directories; both
only rename into a trash directory on the same filesystem and a background thread deletes from there.
Whatever is left in a trash after a crash is deleted at the next start or Cleanup.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from pathlib import Path

from .mounts import remove_tree

log = logging.getLogger(__name__)


class Trash:
    def __init__(self, trash_dirs: list[Path]) -> None:
        self._dirs = trash_dirs
        self._queue: queue.Queue[Path] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="trash", daemon=True)
        self._worker.start()

    def _trash_for(self, path: Path) -> Path:
        """The trash on the same filesystem as ``path`` (renames cannot cross filesystems)."""
        dev = path.lstat().st_dev
        for d in self._dirs:
            if d.stat().st_dev == dev:
                return d
        raise OSError(f"no trash directory on the filesystem of {path}")

    def discard(self, path: Path) -> None:
        """Move ``path`` out of the way now and delete it in the background."""
        try:
            target = self._trash_for(path) / uuid.uuid4().hex
        except FileNotFoundError:
            return
        except OSError:
            log.warning("deleting %s in place: no trash on its filesystem", path)
            remove_tree(path)
            return
        path.rename(target)
        self._queue.put(target)

    def requeue_leftovers(self) -> None:
        for d in self._dirs:
            for entry in d.iterdir():
                self._queue.put(entry)

    def drain(self) -> None:
        """Wait until everything discarded so far is deleted."""
        self._queue.join()

    def _run(self) -> None:
        while True:
            path = self._queue.get()
            try:
                remove_tree(path)
            except Exception:
                log.exception("could not delete %s", path)
            finally:
                self._queue.task_done()
