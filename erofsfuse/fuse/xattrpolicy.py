"""Whether xattr requests are answered, or the kernel is told once that the tree has no xattrs.

Through overlayfs every lookup asks for ``trusted.overlay.*`` and ``user.overlay.*``, and ``ls -l`` asks
for ``security.selinux`` and ``system.posix_acl_access`` of every file; FUSE caches none of the answers, so
on a container's tree most requests can be xattr questions answered "no such attribute". Answered with
ENOSYS instead, GETXATTR is never sent again on that connection: getxattr(2) then fails with EOPNOTSUPP
where the kernel's own mount says ENODATA (the POSIX ACL names still give ENODATA, from the kernel's ACL
code), and overlayfs takes that as "absent". That cannot be taken back, so it is answered only once every
inode of the tree is known to show no xattr; until then, and for a tree with any, answers are exact.

LISTXATTR keeps its exact answer, an empty list, unless xattrs are hidden on purpose: ENOSYS would make
listxattr(2) fail with EOPNOTSUPP too, so that ``getfattr -d`` and ``rsync -X`` report errors where the
kernel's mount lists nothing, while ``ls -l``, ``find`` and overlayfs lookups never list (a copy-up does,
once per file).
"""

from __future__ import annotations

import enum
import logging
import time

import trio

from ..erofs.errors import ErofsError
from ..erofs.xattrscan import XattrSearch
from .tree import Tree

log = logging.getLogger("erofsfuse")


class XattrMode(enum.Enum):
    """``-o xattrs=``: find out whether the tree has any (auto), always answer (on), or never (off)."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


class XattrAnswers:
    """For one mount: whether GETXATTR gets ENOSYS (``absent``), LISTXATTR too (``hidden``), and finding out.

    ``settle`` runs next to the FUSE loop and searches the images a batch of inodes at a time, so that
    requests are answered (exactly) while it works.
    """

    def __init__(self, tree: Tree, mode: XattrMode = XattrMode.AUTO):
        self.tree = tree
        self.mode = mode
        self.absent = self.hidden = mode is XattrMode.OFF
        self.inodes = 0  # inodes looked at by the search

    async def settle(self) -> None:
        """Log which answers apply; in auto mode find out first."""
        if self.mode is XattrMode.OFF:
            log.info("xattrs hidden (-o xattrs=off): the kernel is told that no inode has any, whatever the "
                     "images hold")
            return
        if self.mode is XattrMode.ON:
            log.info("xattrs answered as stored (-o xattrs=on)")
            return
        started = time.monotonic()
        try:
            found = await self._search()
        except Exception:
            log.exception("the search for xattrs failed: xattrs answered as stored")
            return
        if found:
            log.info("%s: xattrs answered as stored", found)
            return
        self.absent = True
        log.info("no inode has an xattr, scanned %d inodes in %.0f ms: getxattr answered ENOSYS, after which "
                 "the kernel asks no more", self.inodes, (time.monotonic() - started) * 1000)

    async def _search(self) -> str | None:
        """Why the tree is taken to have xattrs (where it shows one, or a layer says it does), or None."""
        images = self.tree.images()
        for i, (img, known) in enumerate(zip(images, self.tree.layer_xattrs(), strict=True)):
            where = img.path if len(images) == 1 else f"layer {i} ({img.path})"
            if known is not None:
                if known:
                    return f"{where} has xattrs, says the stack file"
                continue
            search = XattrSearch(img, self.tree.shows_xattr)
            try:
                for _ in search.steps():
                    await trio.sleep(0)  # let the FUSE loop answer requests between batches
            except ErofsError as exc:
                log.warning("the search for xattrs in %s gave up after %d inodes: %s", where, search.inodes, exc)
                return f"{where} may have xattrs"
            finally:
                self.inodes += search.inodes
            if search.found is not None:
                return f"nid {search.found} of {where} has xattrs"
        return None
