"""cache_salt (vLLM's per-request prefix-cache isolation): the salt is mixed into the root of a
request's block-hash chain, so the same prompt under another salt (or none) finds no cached
block, and under the same salt finds them all."""

from __future__ import annotations

import pytest

from pagedllm.core.block_hash import make_block_hasher, request_root_hash
from pagedllm.engine.input_processor import MAX_CACHE_SALT_CHARS, cache_salt_of
from pagedllm.lora.request import LoRARequest
from pagedllm.request import Request
from pagedllm.sampling_params import SamplingParams
from tests.core.core_helpers import BLOCK_SIZE, FakeRunner, make_scheduler, run_to_completion

PROMPT = list(range(100, 113))  # 3 full blocks of 4 and a partial one


def _request(req_id: str, salt: str | None, lora: LoRARequest | None = None) -> Request:
    return Request(req_id, PROMPT, SamplingParams(max_tokens=1), max_tokens=1,
                   block_hasher=make_block_hasher(BLOCK_SIZE), cache_salt=salt,
                   lora_request=lora)


@pytest.mark.parametrize(("first", "second", "hit_tokens"), [
    ("tenant-a", "tenant-a", 12),
    ("tenant-a", "tenant-b", 0),
    (None, "tenant-a", 0),
    ("tenant-a", None, 0),
    (None, None, 12),
])
def test_prefix_hits_only_under_the_same_salt(first, second, hit_tokens) -> None:
    scheduler = make_scheduler()
    runner = FakeRunner()
    scheduler.add_request(_request("first", first))
    run_to_completion(scheduler, runner)
    scheduler.add_request(_request("second", second))
    so = scheduler.schedule()
    assert so.scheduled_new_reqs[0].num_computed_tokens == hit_tokens
    assert so.num_scheduled_tokens == {"second": len(PROMPT) - hit_tokens}


def test_root_hash_separates_salt_and_adapter() -> None:
    lora = LoRARequest("ad", 1, "/nowhere")
    roots = {
        request_root_hash(_request("a", None)),
        request_root_hash(_request("b", "s")),
        request_root_hash(_request("c", "t")),
        request_root_hash(_request("d", None, lora)),
        request_root_hash(_request("e", "s", lora)),
        request_root_hash(_request("f", "t", lora)),
    }
    assert len(roots) == 6
    # deterministic: the same salt gives the same chain in another process
    assert request_root_hash(_request("g", "s")) == request_root_hash(_request("h", "s"))


def test_cache_salt_validation() -> None:
    assert cache_salt_of("text prompt") is None
    assert cache_salt_of({"prompt": "x"}) is None
    assert cache_salt_of({"prompt": "x", "cache_salt": "abc"}) == "abc"
    for bad in ("", 7, ["a"]):
        with pytest.raises(ValueError, match="non-empty string"):
            cache_salt_of({"prompt": "x", "cache_salt": bad})
    with pytest.raises(ValueError, match="at most"):
        cache_salt_of({"prompt": "x", "cache_salt": "a" * (MAX_CACHE_SALT_CHARS + 1)})
