"""The pyfuse3 adapter: FUSE requests onto a ``Tree``.

This is the edge where library errors become errno values: a typed
``ErofsError`` becomes its errno (EIO for corruption) and is logged once
with the inode and reason; any other exception is logged with its
traceback and answered with EIO, so no request can take the mount down.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Callable

import pyfuse3
import trio

from ..erofs.errors import ErofsError, IntegrityError
from .busypoll import BusyPoll
from .direntplus import names_only
from .listing import ListingAdvisor
from .tree import ROOT_INO, Node, Tree
from .xattrpolicy import XattrAnswers, XattrMode

log = logging.getLogger("erofsfuse")

# The image never changes: let the kernel keep names, attributes and pages.
CACHE_TIMEOUT = 365 * 24 * 3600.0
# Reads at least this large, or that decode slowly, run in worker threads so
# that one slow read never stalls lookups elsewhere; small cheap reads run
# inline, where a thread hand-off would cost more than the read.
THREAD_READ_THRESHOLD = 128 * 1024
# how many inodes the server remembers having put into the page cache (so it does so once per file)
PRELOADED_REMEMBERED = 1 << 20


def _errno_of(exc: BaseException) -> int:
    return getattr(exc, "errno", None) or errno.EIO


def fuse_handler(method: Callable) -> Callable:
    """Map exceptions to FUSE errors at the edge, and trace requests in debug mode."""
    name = method.__name__

    @functools.wraps(method)
    async def handler(self: ErofsOperations, *args):
        self.activity.touch()
        try:
            result = await method(self, *args)
        except pyfuse3.FUSEError as exc:
            if self.debug:
                log.debug("%s%r -> %s", name, args, os.strerror(exc.errno))
            raise
        except ErofsError as exc:
            code = _errno_of(exc)
            if exc.answer:
                if self.debug:
                    log.debug("%s%r -> %s", name, args, os.strerror(code))
            else:
                self.report(name, args, exc, code)
            raise pyfuse3.FUSEError(code) from None
        except Exception as exc:
            log.exception("unexpected error in %s%r", name, args)
            raise pyfuse3.FUSEError(errno.EIO) from exc
        if self.debug:
            log.debug("%s%r -> %s", name, args, _summary(result))
        return result

    return handler


def _summary(result: object) -> str:
    if isinstance(result, bytes):
        return f"{len(result)} bytes"
    if isinstance(result, pyfuse3.EntryAttributes):
        return f"ino {result.st_ino} mode {result.st_mode:o} size {result.st_size}"
    return repr(result)


class ErofsOperations(pyfuse3.Operations):
    """Read-only FUSE operations over a tree of EROFS images."""

    supports_dot_lookup = False
    enable_acl = True  # let the kernel enforce POSIX ACLs as it does for EROFS

    def __init__(self, tree: Tree, *, debug: bool = False, threads: int = 4, busy_poll: float = 0.0,
                 xattrs: XattrAnswers | None = None, preload: int = 0):
        """``xattrs`` decides whether xattr requests are answered (always, by default); files of at most
        ``preload`` bytes go into the kernel's page cache with their first open."""
        super().__init__()
        self.tree = tree
        self.preload = preload
        self._preloaded: set[int] = set()
        self.xattrs = xattrs if xattrs is not None else XattrAnswers(tree, XattrMode.ON)
        self.debug = debug
        self.nodes: dict[int, Node] = {ROOT_INO: tree.root}
        self.lookups: dict[int, int] = {}
        self._reported: set[tuple[int | None, str]] = set()
        self._limiter = trio.CapacityLimiter(threads)
        self._store_limiter = trio.CapacityLimiter(threads)  # page-cache stores (preload), which may wait on READs
        self.block_size = tree.root.image.sb.block_size
        self.activity = BusyPoll(busy_poll)  # run by the FUSE loop next to pyfuse3.main
        self.listings = ListingAdvisor()

    # -- bookkeeping -------------------------------------------------------------
    def report(self, op: str, args: tuple, exc: ErofsError, code: int) -> None:
        """Log a failed request once per inode and reason, or per bad block (then only in debug mode)."""
        key = (exc.path, exc.block) if isinstance(exc, IntegrityError) else (getattr(exc, "nid", None), str(exc))
        if key in self._reported:
            log.debug("%s%r -> %s: %s", op, args, os.strerror(code), exc)
            return
        if len(self._reported) < 100_000:
            self._reported.add(key)
        level = logging.ERROR if code == errno.EIO else logging.WARNING
        log.log(level, "%s%r: %s (%s)", op, args, exc, os.strerror(code))

    def _node(self, ino: int) -> Node:
        """The node for a kernel inode number; rebuilt from the image if this process never saw it."""
        node = self.nodes.get(ino)
        if node is None:
            try:
                node = self.tree.node_by_ino(ino)
            except ErofsError as exc:
                log.warning("inode number %d cannot be resolved: %s", ino, exc)
                raise pyfuse3.FUSEError(errno.ESTALE) from None
        return node

    def _remember(self, node: Node) -> Node:
        """Count one kernel reference to ``node`` (a lookup or a readdirplus entry)."""
        known = self.nodes.setdefault(node.ino, node)
        self.lookups[node.ino] = self.lookups.get(node.ino, 0) + 1
        return known

    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        """The tree's stat of ``node`` as pyfuse3 hands it to the kernel (which may keep it forever)."""
        mode, number, nlink, uid, gid, size, blocks, rdev_major, rdev_minor, mtime_ns = self.tree.stat(node)
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = number
        attrs.entry_timeout = CACHE_TIMEOUT
        attrs.attr_timeout = CACHE_TIMEOUT
        attrs.st_mode = mode
        attrs.st_nlink = nlink
        attrs.st_uid = uid
        attrs.st_gid = gid
        if rdev_major or rdev_minor:
            attrs.st_rdev = os.makedev(rdev_major, rdev_minor)
        attrs.st_size = size
        attrs.st_blksize = self.block_size
        attrs.st_blocks = blocks
        attrs.st_atime_ns = attrs.st_ctime_ns = attrs.st_mtime_ns = mtime_ns
        return attrs

    # -- names -------------------------------------------------------------------
    @fuse_handler
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        child = self.tree.lookup(self._node(parent_inode), name)
        if child is None:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = CACHE_TIMEOUT
            return negative
        self.listings.looked_up(parent_inode, ctx.pid, child.inode.is_dir)
        return self.attributes(self._remember(child))

    @fuse_handler
    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            left = self.lookups.get(ino, 0) - count
            if left > 0:
                self.lookups[ino] = left
                continue
            self.lookups.pop(ino, None)
            if ino != ROOT_INO:
                self.nodes.pop(ino, None)

    @fuse_handler
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.attributes(self._node(inode))

    @fuse_handler
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.tree.readlink(self._node(inode))

    @fuse_handler
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return not mode & os.W_OK

    # -- directories ---------------------------------------------------------------
    @fuse_handler
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if not stat.S_ISDIR(self._node(inode).inode.mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        self.listings.opened(inode, ctx.pid)
        return inode

    @fuse_handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        node = self._node(fh)
        if names_only is not None and not self.listings.with_attributes(fh):
            reply = pyfuse3.readdir_reply
            for name, ino, mode, next_id in self.tree.listing(node, start_id):
                if not reply(token, name, names_only(ino, mode), next_id):
                    break
            return
        for name, child, next_id in self.tree.entries(node, start_id):
            if not pyfuse3.readdir_reply(token, name, self.attributes(child), next_id):
                break
            if name not in (b".", b".."):
                self._remember(child)

    @fuse_handler
    async def releasedir(self, fh: int) -> None:
        self.listings.closed(fh)

    # -- files ---------------------------------------------------------------------
    @fuse_handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        node = self._node(inode)
        if self.preload and inode not in self._preloaded:
            await self._store_small_file(inode, node)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def _store_small_file(self, inode: int, node: Node) -> None:
        """Put a small file's bytes into the kernel's page cache before the OPEN is answered, so that the READ
        which usually follows is answered by the kernel (it keeps them: the image never changes)."""
        if len(self._preloaded) >= PRELOADED_REMEMBERED:
            self._preloaded.clear()  # a file opened again after this is stored again: harmless
        self._preloaded.add(inode)
        size = node.inode.size
        if not 0 < size <= self.preload or not stat.S_ISREG(node.inode.mode):
            return
        try:
            if node.image.costly_read(node.inode, 0, size):
                data = await trio.to_thread.run_sync(self.tree.read, node, 0, size, limiter=self._limiter)
            else:
                data = self.tree.read(node, 0, size)
        except ErofsError:
            return  # the open succeeds, as without preloading: the READ that follows reports it
        try:
            # never from the loop's thread: the kernel waits for the lock of each page it stores into, and
            # a page may be locked by a READ of the same file (from an earlier open) that only the loop
            # can answer; READs take their threads from the other limiter
            await trio.to_thread.run_sync(pyfuse3.notify_store, inode, 0, data, limiter=self._store_limiter)
        except OSError as exc:  # the kernel does not take it: READ as usual
            log.debug("cannot store inode %d in the page cache: %s", inode, exc)

    @fuse_handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        node = self._node(fh)
        if size >= THREAD_READ_THRESHOLD or node.image.costly_read(node.inode, off, size):
            return await trio.to_thread.run_sync(self.tree.read, node, off, size, limiter=self._limiter)
        return self.tree.read(node, off, size)

    @fuse_handler
    async def release(self, fh: int) -> None:
        return None

    # -- extended attributes ---------------------------------------------------------
    @fuse_handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        if self.xattrs.hidden:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # the kernel asks no more
        names = [name for name, _ in self.tree.xattrs(self._node(inode))]
        if ctx.uid != 0:
            # the kernel lists trusted.* only to CAP_SYS_ADMIN
            names = [name for name in names if not name.startswith(b"trusted.")]
        return names

    @fuse_handler
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if self.xattrs.absent:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # the kernel asks no more: the tree has none
        node = self._node(inode)
        if not node.inode.xattr_isize:  # most files have none: `ls -l` asks twice for each
            raise pyfuse3.FUSEError(errno.ENODATA)
        return self.tree.getxattr(node, name)

    # -- filesystem ----------------------------------------------------------------
    @fuse_handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        fs = self.tree.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = fs.block_size
        out.f_blocks = fs.blocks
        out.f_bfree = out.f_bavail = 0
        out.f_files = fs.files
        out.f_ffree = out.f_favail = fs.files_free
        out.f_namemax = fs.name_max
        return out
