"""Chained hashes of full KV blocks: the prefix-cache keys.

The hash of block i covers its tokens *and* the hash of block i-1, so equal hashes mean equal
prefixes up to and including that block:

    hash_0 = H(ROOT_PARENT_HASH, tokens[0:bs])
    hash_i = H(hash_{i-1},      tokens[i*bs:(i+1)*bs])

A request under a LoRA adapter, or with a `cache_salt`, starts its chain from a root mixed with
the adapter's id and name and the salt (`request_root_hash`), so the same prompt under two
adapters (or none), or two salts (or none), never shares a block. A block holding placeholder
tokens of an image mixes in that image's content hash (`MultiModalFeature.identifier`): the
placeholder ids are the same for every image, so the same prompt with two different images never
shares a block, and with the same image does. Only full blocks are hashed; a partial tail block
has no hash. H is SHA-256 over a fixed binary encoding, truncated to 64 bits: deterministic
across processes, collision risk negligible.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from pagedllm.request import BlockHasher, Request

ROOT_PARENT_HASH: int = int.from_bytes(hashlib.sha256(b"pagedllm-root").digest()[:8], "little")
"""Stand-in parent hash of a request's first block."""


def request_root_hash(request: Request) -> int:
    """The parent hash of the request's first block: ROOT_PARENT_HASH for the base model without
    a salt, else a hash of the root, the adapter (LoRA) and the cache salt."""
    lora = request.lora_request
    salt = getattr(request, "cache_salt", None)
    if lora is None and salt is None:
        return ROOT_PARENT_HASH
    data = struct.pack("<Q", ROOT_PARENT_HASH)
    # Tagged and length-prefixed, so no (adapter, salt) pair encodes like another.
    if lora is not None:
        name = lora.lora_name.encode()
        data += b"L" + struct.pack("<qQ", lora.lora_int_id, len(name)) + name
    if salt is not None:
        encoded = salt.encode()
        data += b"S" + struct.pack("<Q", len(encoded)) + encoded
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little")


def hash_block_tokens(parent_hash: int | None, token_ids: Sequence[int],
                      extra_keys: Sequence[str] = ()) -> int:
    """Hash one full block given its parent block's hash (None: first block); extra_keys: the
    content hashes of the images whose placeholders it holds."""
    parent = ROOT_PARENT_HASH if parent_hash is None else parent_hash
    data = struct.pack(f"<Q{len(token_ids)}q", parent, *token_ids)
    for key in extra_keys:
        data += b"\0" + key.encode()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little")


def block_extra_keys(request: Request, start: int, end: int) -> tuple[str, ...]:
    """The identifiers of the request's images with placeholders in positions [start, end)."""
    features = request.mm_features
    if not features:
        return ()
    return tuple(f.identifier for f in features if f.overlaps(start, end))


def hash_request_tokens(block_size: int, token_ids: Sequence[int]) -> list[int]:
    """Hashes of every full block of a token sequence (a helper for tests and tools)."""
    hashes: list[int] = []
    parent: int | None = None
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash_block_tokens(parent, token_ids[start : start + block_size])
        hashes.append(parent)
    return hashes


def make_block_hasher(block_size: int) -> BlockHasher:
    """A BlockHasher: returns the hashes of the request's blocks that became full since the last
    call, i.e. of blocks len(request.block_hashes) .. request.num_tokens // block_size - 1."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")

    def hasher(request: Request) -> list[int]:
        token_ids = request.all_token_ids
        parent = request.block_hashes[-1] if request.block_hashes else request_root_hash(request)
        new_hashes: list[int] = []
        for i in range(len(request.block_hashes), request.num_tokens // block_size):
            start, end = i * block_size, (i + 1) * block_size
            parent = hash_block_tokens(parent, token_ids[start:end],
                                       block_extra_keys(request, start, end))
            new_hashes.append(parent)
        return new_hashes

    return hasher
