from pagedllm.core.block_hash import (
    hash_block_tokens,
    hash_request_tokens,
    make_block_hasher,
)
from tests.core.core_helpers import make_request


def test_same_prefix_same_hashes() -> None:
    a = hash_request_tokens(4, [1, 2, 3, 4, 5, 6, 7, 8, 9])
    b = hash_request_tokens(4, [1, 2, 3, 4, 5, 6, 7, 8, 42, 43])
    assert len(a) == 2 and len(b) == 2  # partial tail blocks are not hashed
    assert a == b


def test_parent_changes_hash() -> None:
    a = hash_request_tokens(4, [1, 2, 3, 4, 5, 6, 7, 8])
    b = hash_request_tokens(4, [9, 2, 3, 4, 5, 6, 7, 8])
    assert a[1] != b[1]  # same tokens in block 1, different parent
    assert hash_block_tokens(None, [5, 6, 7, 8]) != a[1]
    assert hash_block_tokens(a[0], [5, 6, 7, 8]) == a[1]


def test_deterministic() -> None:
    assert hash_block_tokens(123, [1, 2]) == hash_block_tokens(123, [1, 2])


def test_hasher_is_incremental() -> None:
    request = make_request("r", [1, 2, 3, 4, 5, 6], max_tokens=8)
    assert request.block_hashes == hash_request_tokens(4, [1, 2, 3, 4])
    request.append_output_token_ids(7)
    assert len(request.block_hashes) == 1
    request.append_output_token_ids([8, 9])
    assert request.block_hashes == hash_request_tokens(4, [1, 2, 3, 4, 5, 6, 7, 8])
    assert make_block_hasher(4)(request) == []  # nothing new became full
