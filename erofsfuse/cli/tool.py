"""``erofstool``: inspect, verify and extract EROFS images without mounting them.

This module only parses arguments and prints; the work is done by the
library, ``extract`` and ``fsck``. Errors become one line on stderr and an
exit code here, once: 0 success, 1 a corrupt or unsupported image, a failed
check or a failed operation, 2 a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import stat
import sys
import traceback
import uuid
from collections.abc import Callable, Iterator

from .. import __version__
from ..erofs import ondisk as d
from ..erofs.errors import ErofsError
from ..erofs.fsverity import file_digest
from ..erofs.image import ErofsImage
from ..erofs.inode import Inode
from ..erofs.stream import chunks
from ..erofs.tarcheck import compare_layer, read_layer
from ..erofs.verity import DEFAULT_SALT_SIZE, VerifiedFile, VerityParams, format_tree
from .extract import extract
from .fsck import Problem, check
from .progress import Progress

EXIT_OK, EXIT_FAILED = 0, 1  # argparse itself exits with 2 on a usage error
DIFFERENCES_SHOWN = 20
_EPOCH = datetime.datetime(1970, 1, 1)


class CommandError(Exception):
    """A request that cannot be carried out on a sound image (``cat`` of a directory, ...)."""


# -- output ---------------------------------------------------------------------
def emit(*parts: str | bytes) -> None:
    """One line on stdout, parts separated by spaces; names are bytes on disk and are written as such."""
    line = b" ".join(os.fsencode(p) if isinstance(p, str) else p for p in parts)
    sys.stdout.buffer.write(line + b"\n")


def show_time(ns: int, *, full: bool = True) -> str:
    """UTC date of an mtime in nanoseconds (any EROFS time, 1901 to 2446 and beyond, in years 1-9999)."""
    seconds, frac = divmod(ns, 1_000_000_000)
    try:
        t = _EPOCH + datetime.timedelta(seconds=seconds)
    except OverflowError:
        return f"{seconds}s"
    text = f"{t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}:{t.minute:02d}"
    return f"{text}:{t.second:02d}.{frac:09d} UTC" if full else text


# -- commands -------------------------------------------------------------------
def cmd_info(img: ErofsImage, args: argparse.Namespace) -> int:
    sb = img.sb
    rows: list[tuple[str, object]] = [
        ("block size", sb.block_size),
        ("uuid", sb.uuid_text),
        ("volume name", sb.volume_label),
        ("root nid", sb.root_nid),
        ("inodes", sb.inos),
        ("epoch", f"{sb.epoch} ({show_time(sb.epoch * 1_000_000_000)})"),
        ("build time", f"{sb.build_time} ({show_time(sb.build_time * 1_000_000_000)})"),
        ("fixed nsec", sb.fixed_nsec),
        ("blocks", sb.primary_blocks),
        ("total blocks", img.total_blocks),
        ("meta blkaddr", sb.meta_blkaddr),
        ("xattr blkaddr", sb.xattr_blkaddr),
        ("packed nid", sb.packed_nid),
        ("metabox nid", sb.metabox_nid),
        ("xattr prefixes", sb.xattr_prefix_count),
        ("checksum", f"0x{sb.checksum:08x}"),
        ("compat features", _features(sb.feature_compat, d.COMPAT_NAMES)),
        ("incompat features", _features(sb.feature_incompat, d.INCOMPAT_NAMES)),
        ("devices", len(img.devices.slots)),
    ]
    for i, slot in enumerate(img.devices.slots, 1):
        tag = slot.tag.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
        where = f"file {args.device[i - 1]}" if img.devices.extras else "flat, inside the primary file"
        rows.append((f"device {i}", f"blocks {slot.blocks}, uniaddr {slot.uniaddr}, tag {tag!r}, {where}"))
    rows.extend(_compression_rows(img))
    for key, value in rows:
        emit(f"{key}: {value}")
    return EXIT_OK


def _features(mask: int, names: dict[int, str]) -> str:
    return " ".join([f"0x{mask:x}", *d.feature_names(mask, names)])


def _compression_rows(img: ErofsImage) -> list[tuple[str, object]]:
    sb, cfg = img.sb, img.sb.compression
    algs = [d.ALGORITHM_NAMES[a] for a in range(d.COMPRESSION_MAX) if sb.available_algorithms & (1 << a)]
    rows: list[tuple[str, object]] = [("compression", " ".join(algs) or "none")]
    if "lz4" in algs:
        rows += [("lz4 max distance", cfg.lz4_max_distance), ("lz4 max pcluster blocks", cfg.lz4_max_pclusterblks)]
    if "lzma" in algs:
        rows.append(("lzma dictionary size", cfg.lzma_dict_size))
    if "deflate" in algs:
        rows.append(("deflate window bits", cfg.deflate_windowbits))
    if "zstd" in algs:
        rows.append(("zstd window log", cfg.zstd_windowlog + d.ZSTD_WINDOWLOG_BASE))
    return rows


def cmd_ls(img: ErofsImage, args: argparse.Namespace) -> int:
    path = os.fsencode(args.path)
    ino = img.resolve(path, follow=not args.long)
    listing = [(entry.name, img.inode(entry.nid)) for entry in img.entries(ino)] if ino.is_dir else [(path, ino)]
    if not args.long:
        for name, _ in listing:
            emit(name)
        return EXIT_OK
    rows = [_long_row(img, name, child) for name, child in listing]
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(5)]
    for row in rows:
        cells = [row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:5], widths[1:], strict=True)), row[5]]
        emit(*cells, *row[6:])
    return EXIT_OK


def _long_row(img: ErofsImage, name: bytes, ino: Inode) -> list[str | bytes]:
    """``ls -l`` columns: mode, nlink, uid, gid, size or ``major, minor``, mtime, name[, ->, target]."""
    is_device = stat.S_ISCHR(ino.mode) or stat.S_ISBLK(ino.mode)
    size = "{}, {}".format(*ino.rdev_pair) if is_device else str(ino.size)
    row: list[str | bytes] = [stat.filemode(ino.mode), str(ino.nlink), str(ino.uid), str(ino.gid), size,
                              show_time(ino.mtime_ns, full=False), name]
    if ino.is_symlink:
        row += [b"->", img.readlink(ino)]
    return row


def cmd_stat(img: ErofsImage, args: argparse.Namespace) -> int:
    ino = img.resolve(os.fsencode(args.path))
    st = img.stat(ino)
    rows: list[tuple[str, str | bytes]] = [
        ("path", os.fsencode(args.path)),
        ("nid", str(ino.nid)),
        ("type", img.file_type(ino)),
        ("mode", f"{stat.S_IMODE(ino.mode):04o} ({stat.filemode(ino.mode)})"),
        ("inode", "compact" if ino.compact else "extended"),
        ("layout", d.LAYOUT_NAMES.get(ino.layout, str(ino.layout))),
        ("size", str(st.st_size)),
        ("blocks", str(st.st_blocks)),
        ("nlink", str(st.st_nlink)),
        ("uid", str(st.st_uid)),
        ("gid", str(st.st_gid)),
    ]
    if stat.S_ISCHR(ino.mode) or stat.S_ISBLK(ino.mode):
        rows.append(("rdev", f"{st.st_rdev_major},{st.st_rdev_minor}"))
    rows += [("mtime", f"{show_time(st.st_mtime_ns)} ({st.st_mtime_ns} ns)"),
             ("xattrs", str(len(img.xattrs(ino))))]
    if ino.is_symlink:
        rows.append(("target", img.readlink(ino)))
    for key, value in rows:
        emit(f"{key}:", value)
    return EXIT_OK


def cmd_cat(img: ErofsImage, args: argparse.Namespace) -> int:
    ino = img.resolve(os.fsencode(args.path), follow=True)
    if not ino.is_reg:
        raise CommandError(f"{args.path}: {'is a directory' if ino.is_dir else 'not a regular file'}")
    out = sys.stdout.buffer
    for _, data in chunks(img, ino):
        out.write(data)
    out.flush()
    return EXIT_OK


def cmd_getfattr(img: ErofsImage, args: argparse.Namespace) -> int:
    ino = img.resolve(os.fsencode(args.path))
    items = sorted(img.xattrs(ino))
    if items:
        emit(b"# file: " + os.fsencode(args.path))
        for name, value in items:
            emit(name + b"=0x" + value.hex().encode())
        emit(b"")
    return EXIT_OK


def cmd_extract(img: ErofsImage, args: argparse.Namespace) -> int:
    total = img.sb.inos if os.fsencode(args.path).strip(b"/") == b"" else None
    with Progress("extracting", total) as progress:
        extract(img, args.dest, os.fsencode(args.path), progress)
    return EXIT_OK


def cmd_fsck(img: ErofsImage, args: argparse.Namespace) -> int:
    with Progress("checking", img.sb.inos) as progress:

        def report(problem: Problem) -> None:
            progress.message(f"erofstool: {args.image}: {problem}")

        result = check(img, report, progress)
    if not result.clean:
        print(f"erofstool: {args.image}: {len(result.problems)} problem(s) found", file=sys.stderr)
        return EXIT_FAILED
    emit(f"{args.image}: clean, {result.inodes} inodes, {result.entries} entries, {result.bytes} bytes of data")
    return EXIT_OK


def cmd_verify(img: ErofsImage, args: argparse.Namespace) -> int:
    with Progress("reading layer", os.path.getsize(args.layer)) as progress:
        layer = read_layer(args.layer, progress.advance)
    with Progress("comparing", len(layer.paths)) as progress:
        differences = compare_layer(img, layer, progress.advance)
    for difference in differences[:DIFFERENCES_SHOWN]:
        emit(difference.path + b":", difference.message)
    if len(differences) > DIFFERENCES_SHOWN:
        emit(f"... and {len(differences) - DIFFERENCES_SHOWN} more")
    if differences:
        print(f"erofstool: {args.image}: {len(differences)} difference(s) from {args.layer}", file=sys.stderr)
        return EXIT_FAILED
    emit(f"{args.image}: identical to {args.layer}, {len(layer.paths)} paths, {layer.file_bytes} bytes of file data")
    return EXIT_OK


# -- proofs: these take any file, not only an EROFS image ----------------------
def cmd_verity_format(args: argparse.Namespace) -> int:
    params = _verity_params(args, os.urandom(DEFAULT_SALT_SIZE), uuid.uuid4().bytes)
    with Progress("hashing", os.path.getsize(args.image) // params.data_block_size) as progress:
        tree = format_tree(args.image, args.hashfile, params, hash_offset=args.hash_offset,
                           superblock=not args.no_superblock, progress=progress.advance)
    if tree.uncovered_bytes:
        print(f"erofstool: {args.image}: warning: the last {tree.uncovered_bytes} bytes are not a whole data "
              "block and are not covered by the tree", file=sys.stderr)
    p = tree.params
    rows: list[tuple[str, object]] = [
        ("UUID", p.uuid_text if tree.superblock else ""),
        ("Hash type", p.hash_type),
        ("Data blocks", p.data_blocks),
        ("Data block size", p.data_block_size),
        ("Hash blocks", tree.layout.hash_blocks),
        ("Hash block size", p.hash_block_size),
        ("Hash algorithm", p.hash_name),
        ("Salt", p.salt.hex() or "-"),
        ("Root hash", tree.root_hash.hex()),
        ("Hash device size", f"{tree.hash_device_size} [bytes]"),
        ("Hash offset", tree.hash_offset),
    ]
    for key, value in rows:
        emit(f"{key + ':':<18}{value}")
    return EXIT_OK


def cmd_verity_verify(args: argparse.Namespace) -> int:
    if args.hashfile is None and args.hash_offset is None:
        raise CommandError("give HASHFILE, or --hash-offset where the tree is appended to IMAGE")
    params = _verity_params(args, b"", bytes(16)) if args.no_superblock else None
    checked = VerifiedFile(args.image, args.root_hash, hash_path=args.hashfile, hash_offset=args.hash_offset or 0,
                           params=params)
    with contextlib.closing(checked), Progress("verifying", checked.params.data_blocks) as progress:
        checked.check_all(progress.advance)
    p = checked.params
    emit(f"{args.image}: verified, {p.data_blocks} data blocks of {p.data_block_size} bytes match root hash "
         f"{args.root_hash.hex()}")
    return EXIT_OK


def _verity_params(args: argparse.Namespace, salt: bytes, uuid_bytes: bytes) -> VerityParams:
    """The tree parameters from the options; ``salt`` and ``uuid_bytes`` stand in for missing ones."""
    return VerityParams(args.data_blocks, args.hash, args.data_block_size, args.hash_block_size,
                        salt if args.salt is None else args.salt, args.format,
                        getattr(args, "uuid", None) or uuid_bytes)


def cmd_digest(args: argparse.Namespace) -> int:
    salt = args.salt or b""
    with Progress("hashing", os.path.getsize(args.image)) as progress:
        digest = file_digest(args.image, args.hash_alg, args.block_size, salt, progress.advance)
    if args.compact:
        emit(digest.hex())
    else:
        emit(f"{args.hash_alg}:{digest.hex()}", args.image)
    return EXIT_OK


# -- arguments ------------------------------------------------------------------
def _offset(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("the offset cannot be negative")
    return value


def _hex(text: str) -> bytes:
    """Hex digits as bytes; ``-`` is none (veritysetup's way of saying no salt)."""
    try:
        return b"" if text == "-" else bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not hex digits: {text!r}") from None


def _uuid(text: str) -> bytes:
    try:
        return uuid.UUID(text).bytes
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text!r}") from None


def _on_image(command: Callable[[ErofsImage, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A command that works on an opened image, run with the image the common options name."""

    def run(args: argparse.Namespace) -> int:
        with ErofsImage(args.image, args.device, args.offset) as img:
            return command(img, args)

    return run


def _add_proof_commands(sub: argparse._SubParsersAction, debugging: argparse.ArgumentParser,
                        parsers: dict[str, argparse.ArgumentParser]) -> None:
    """``verity format``, ``verity verify`` and ``digest``: trees and digests of any file."""
    tree = argparse.ArgumentParser(add_help=False)
    tree.add_argument("--hash-offset", type=_offset, metavar="BYTES",
                      help="where the tree (its superblock first) starts in HASHFILE, or in IMAGE when appended")
    tree.add_argument("--no-superblock", action="store_true",
                      help="no veritysetup superblock: the parameters below are the tree's")
    tree.add_argument("--hash", default="sha256", metavar="ALGORITHM", help="sha256 (default), sha1, sha512, ...")
    tree.add_argument("--data-block-size", type=_offset, default=4096, metavar="BYTES", help="default 4096")
    tree.add_argument("--hash-block-size", type=_offset, default=4096, metavar="BYTES", help="default 4096")
    tree.add_argument("--data-blocks", type=_offset, default=0, metavar="N",
                      help="data blocks covered (default: the whole data area)")
    tree.add_argument("--salt", type=_hex, metavar="HEX", help="hex, or - for none")
    tree.add_argument("--format", type=int, default=1, choices=(0, 1), help="hash type: 1 (default) or 0 (Chrome OS)")

    text = "dm-verity hash trees as veritysetup makes them"
    verity = sub.add_parser("verity", help=text, description=text)
    actions = verity.add_subparsers(dest="action", required=True, metavar="ACTION")
    text = "write IMAGE's hash tree to HASHFILE (or append it to IMAGE) and print the root hash"
    p = parsers["verity format"] = actions.add_parser("format", parents=[tree, debugging], help=text,
                                                      description=text + " (salt: random by default)")
    p.add_argument("--uuid", type=_uuid, help="the superblock's UUID (default: a random one)")
    p.add_argument("image", metavar="IMAGE", help="the file the tree covers")
    p.add_argument("hashfile", metavar="HASHFILE", nargs="?", help="where the tree goes (default: appended to IMAGE)")
    p.set_defaults(handler=cmd_verity_format)
    text = "check every block of IMAGE against its hash tree and a root hash"
    p = parsers["verity verify"] = actions.add_parser("verify", parents=[tree, debugging], help=text, description=text)
    p.add_argument("image", metavar="IMAGE", help="the file the tree covers")
    p.add_argument("hashfile", metavar="HASHFILE", nargs="?", help="the tree (default: appended to IMAGE)")
    p.add_argument("root_hash", metavar="ROOTHASH", type=_hex, help="the root hash, in hex")
    p.set_defaults(handler=cmd_verity_verify)

    text = "the file's fs-verity digest, as fsverity digest prints it"
    p = parsers["digest"] = sub.add_parser("digest", parents=[debugging], help=text, description=text)
    p.add_argument("--hash-alg", default="sha256", choices=("sha256", "sha512"), help="default sha256")
    p.add_argument("--block-size", type=_offset, default=4096, metavar="BYTES", help="default 4096")
    p.add_argument("--salt", type=_hex, metavar="HEX", help="hex")
    p.add_argument("--compact", action="store_true", help="print the digest alone")
    p.add_argument("image", metavar="FILE", help="any file")
    p.set_defaults(handler=cmd_digest)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser (for help and errors) and each command's own parser."""
    debugging = argparse.ArgumentParser(add_help=False)
    debugging.add_argument("--debug", action="store_true", help="print a traceback for internal errors")
    common = argparse.ArgumentParser(add_help=False, parents=[debugging])
    common.add_argument("--device", action="append", default=[], metavar="PATH",
                        help="an extra device file, once per device in device-table order (none for a flat image)")
    common.add_argument("--offset", type=_offset, default=0, metavar="BYTES",
                        help="where the image starts inside IMAGE (default 0)")
    common.add_argument("image", metavar="IMAGE", help="the EROFS image (primary device)")

    parser = argparse.ArgumentParser(prog="erofstool", description="Inspect, verify and extract EROFS images.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: list[tuple[str, Callable[..., int], str]] = [
        ("info", cmd_info, "superblock, features, devices and compression settings"),
        ("ls", cmd_ls, "list a directory (like ls, or ls -l with -l)"),
        ("stat", cmd_stat, "every attribute of one inode"),
        ("cat", cmd_cat, "write a file's contents to stdout (follows symlinks)"),
        ("getfattr", cmd_getfattr, "every xattr of a path, as getfattr -d -m - -e hex shows them"),
        ("extract", cmd_extract, "copy the image (or PATH in it) to DEST, keeping all metadata"),
        ("fsck", cmd_fsck, "read and check every inode, directory, xattr and data byte"),
        ("verify", cmd_verify, "check that the image holds exactly the content of an OCI layer tarball"),
    ]
    parsers = {}
    for name, handler, text in commands:
        p = parsers[name] = sub.add_parser(name, parents=[common], help=text, description=text)
        p.set_defaults(handler=_on_image(handler))
        if name == "ls":
            p.add_argument("-l", dest="long", action="store_true", help="long listing")
        if name == "verify":
            p.add_argument("--layer", required=True, metavar="TARBALL",
                           help="the layer tarball (plain, gzip or zstd)")
        if name == "extract":
            p.add_argument("dest", metavar="DEST", help="a new directory, or an empty one")
        if name in ("ls", "extract"):
            p.add_argument("path", metavar="PATH", nargs="?", default="/", help="a path inside the image (default /)")
        elif name in ("stat", "cat", "getfattr"):
            p.add_argument("path", metavar="PATH", help="a path inside the image")
    _add_proof_commands(sub, debugging, parsers)
    return parser, parsers


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Options may stand anywhere among the operands (``ls IMAGE -l /``), as with most commands."""
    parser, commands = build_parser()
    words = 2 if argv[:1] == ["verity"] else 1  # verity's actions are commands of their own
    name = " ".join(argv[:words])
    if name in commands:
        return commands[name].parse_intermixed_args(argv[words:])
    return parser.parse_args(argv)  # help, or a usage error


# -- the edge -------------------------------------------------------------------
@contextlib.contextmanager
def _stdout_gone() -> Iterator[None]:
    """A reader that went away (``erofstool cat ... | head``) ends the run quietly."""
    try:
        yield
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise


def _describe_os_error(exc: OSError) -> str:
    where = [os.fsdecode(f) for f in (exc.filename, exc.filename2) if f is not None]
    return ": ".join([*where, exc.strerror or str(exc)])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        with _stdout_gone():
            status = args.handler(args)
            sys.stdout.flush()  # here, where a reader that went away is still handled
            return status
    except BrokenPipeError:
        return EXIT_FAILED
    except (ErofsError, CommandError) as exc:
        message = str(exc)
    except OSError as exc:
        message = _describe_os_error(exc)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: still one line, the traceback only on request
        if args.debug:
            traceback.print_exc()
        message = f"internal error: {type(exc).__name__}: {exc}"
        if not args.debug:
            message += " (run with --debug for details)"
    print(f"erofstool: {args.image}: {message}", file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
