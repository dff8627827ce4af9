"""The fs-verity digest of a file, as ``fsverity digest`` prints it.

fs-verity hashes a file with a Merkle tree much like dm-verity's (built here
by the same ``TreeBuilder``), with its own rules: the last block is padded
with zeros, the salt is padded to the hash's input block size and hashed in
front, and the file's digest is the hash of a 256-byte descriptor holding
the tree's root, the file size and the parameters. It is what the kernel
reports for a file with fs-verity enabled, so a digest taken here can be
compared with one taken on a host that has fs-verity.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable

from .devices import BackingFile
from .errors import DeviceError, UnsupportedFeature
from .verity import RUN_BYTES, BlockHasher, TreeBuilder, tree_levels

# the algorithm numbers of the descriptor
HASH_ALGORITHMS = {"sha256": 1, "sha512": 2}
MAX_SALT_SIZE = 32
DESCRIPTOR = struct.Struct("<BBBBIQ64s32s144x")  # version, algorithm, log2 block size, salt size, 0, size, root, salt
DESCRIPTOR_VERSION = 1


def file_digest(path: str, hash_name: str = "sha256", block_size: int = 4096, salt: bytes = b"",
                progress: Callable[[int], None] | None = None) -> bytes:
    """The fs-verity digest of the file at ``path``; ``progress`` is told how many bytes were hashed."""
    if hash_name not in HASH_ALGORITHMS:
        raise UnsupportedFeature(f"hash algorithm {hash_name!r} is not supported by fs-verity (one of "
                                 f"{', '.join(HASH_ALGORITHMS)})")
    digest_size = hashlib.new(hash_name).digest_size
    if block_size & (block_size - 1) or block_size < 2 * digest_size:
        raise UnsupportedFeature(f"fs-verity block size {block_size} is not supported (a power of two, at least "
                                 f"{2 * digest_size} for {hash_name})")
    if len(salt) > MAX_SALT_SIZE:
        raise UnsupportedFeature(f"a salt of {len(salt)} bytes is too long for fs-verity (at most {MAX_SALT_SIZE})")
    data = BackingFile(path)
    try:
        root = _root_hash(data, hash_name, block_size, salt, progress)
    finally:
        data.close()
    descriptor = DESCRIPTOR.pack(DESCRIPTOR_VERSION, HASH_ALGORITHMS[hash_name], block_size.bit_length() - 1,
                                 len(salt), 0, data.size, root, salt)
    return hashlib.new(hash_name, descriptor).digest()


def _root_hash(data: BackingFile, hash_name: str, block_size: int, salt: bytes,
               progress: Callable[[int], None] | None) -> bytes:
    """The root of the file's Merkle tree (all zeros for an empty file)."""
    if not data.size:
        return bytes(hashlib.new(hash_name).digest_size)
    padded_salt = salt
    if salt:
        input_block = hashlib.new(hash_name).block_size
        padded_salt = salt.ljust(-(-len(salt) // input_block) * input_block, b"\0")
    hasher = BlockHasher(hash_name, padded_salt, salt_first=True)
    fanout_bits = (block_size // hasher.digest_size).bit_length() - 1
    blocks = -(-data.size // block_size)
    builder = TreeBuilder(hasher, block_size, hasher.digest_size, fanout_bits, tree_levels(blocks, fanout_bits))
    step = max(block_size, RUN_BYTES // block_size * block_size)
    for pos in range(0, data.size, step):
        want = min(step, data.size - pos)
        run = os.pread(data.fd, want, pos)
        if len(run) != want:
            raise DeviceError(f"short read of {data.path} at {pos}")
        builder.add(hasher.digests(run.ljust(-(-want // block_size) * block_size, b"\0"), block_size))
        if progress is not None:
            progress(want)
    return builder.finish()
