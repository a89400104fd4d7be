"""Request: the engine core's record of one sequence (one sample of a prompt).

Scheduling is by token counts: `num_computed_tokens` (tokens whose K/V are in the cache) catches up
with `num_tokens` (prompt + generated). A prefill is just a request far behind; a decode is one
token behind.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING

from pagedllm.sampling_params import SamplingParams

if TYPE_CHECKING:
    from pagedllm.lora.request import LoRARequest
    from pagedllm.multimodal.inputs import MultiModalFeature
    from pagedllm.structured_output.request import StructuredOutputRequest


class FinishReason(str, enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


class RequestStatus(enum.IntEnum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    # Everything after this is finished.
    FINISHED_STOPPED = enum.auto()
    FINISHED_LENGTH_CAPPED = enum.auto()
    FINISHED_ABORTED = enum.auto()

    @staticmethod
    def is_finished(status: RequestStatus) -> bool:
        return status > RequestStatus.PREEMPTED

    @staticmethod
    def finish_reason(status: RequestStatus) -> FinishReason | None:
        return _FINISH_REASONS.get(status)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: FinishReason.STOP,
    RequestStatus.FINISHED_LENGTH_CAPPED: FinishReason.LENGTH,
    RequestStatus.FINISHED_ABORTED: FinishReason.ABORT,
}


class TokenSpan(Sequence[int]):
    """A read-only view of tokens [start, stop) of a request's one token list (stop None: up to
    its end, so it sees tokens appended later). Indexing is O(1); a slice copies."""

    __slots__ = ("_tokens", "_start", "_stop")

    def __init__(self, tokens: list[int], start: int, stop: int | None = None) -> None:
        self._tokens, self._start, self._stop = tokens, start, stop

    def __len__(self) -> int:
        return self._end() - self._start

    def __getitem__(self, index: int | slice) -> int | list[int]:  # type: ignore[override]
        if isinstance(index, slice):
            return self._tokens[self._start : self._end()][index]
        length = len(self)
        if index < 0:
            index += length
        if not 0 <= index < length:
            raise IndexError(f"token index {index} out of range for {length} tokens")
        return self._tokens[self._start + index]

    def __iter__(self) -> Iterator[int]:
        return islice(self._tokens, self._start, self._end())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, TokenSpan)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TokenSpan({list(self)})"

    def _end(self) -> int:
        return len(self._tokens) if self._stop is None else self._stop


# Appends the hashes of newly full blocks of a request to request.block_hashes.
BlockHasher = Callable[["Request"], list[int]]


class Request:
    tenant: str | None = None
    """Who sent it (the API key's name): the waiting queue shares the batch fairly between
    tenants (core/sched/fair_share.py). None: no API keys, one tenant."""
    tenant_weight: int = 1
    """The tenant's `fair_share` weight: its share of the batch relative to the others'."""

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        max_tokens: int,
        eos_token_ids: tuple[int, ...] = (),
        arrival_time: float | None = None,
        priority: int = 0,
        block_hasher: BlockHasher | None = None,
        lora_request: LoRARequest | None = None,
        cache_salt: str | None = None,
        mm_features: list[MultiModalFeature] | None = None,
        encoder_prompt_token_ids: list[int] | None = None,
    ) -> None:
        self.request_id = request_id
        self.encoder_prompt_token_ids = encoder_prompt_token_ids
        """Encoder-decoder models: the encoder's input, sent to the runner each time the request
        is (re)scheduled new; None for decoder-only models."""
        self.mm_features = mm_features
        """The prompt's images; their content hashes are part of the prefix-cache keys of the
        blocks holding their placeholders, so it must be set before the block hasher runs."""
        self.lora_request = lora_request
        """The adapter the request runs under (None: the base model); part of its prefix-cache
        keys, so it must be set before the block hasher first runs."""
        self.cache_salt = cache_salt
        """vLLM's cache_salt: mixed into the prefix-cache keys (like the adapter), so only
        requests with the same salt share KV blocks (tenant isolation)."""
        self.sampling_params = sampling_params
        self._all_token_ids: list[int] = list(prompt_token_ids)
        """The scheduler side's one record of the tokens: prompt, then output."""
        self.num_prompt_tokens = len(self._all_token_ids)
        self.prompt_token_ids = TokenSpan(self._all_token_ids, 0, self.num_prompt_tokens)
        self.output_token_ids = TokenSpan(self._all_token_ids, self.num_prompt_tokens)
        self.max_tokens = max_tokens
        """Generation cap after clamping the user's max_tokens to the context length."""
        self.eos_token_ids = eos_token_ids
        self.arrival_time = arrival_time if arrival_time is not None else time.time()
        self.priority = priority
        self.status = RequestStatus.WAITING
        self.stop_reason: int | str | None = None
        self.num_computed_tokens = 0
        """Tokens whose K/V are written in (or shared from) the cache."""
        self.num_cached_tokens: int | None = None
        """Prompt tokens served from the prefix cache at first scheduling (None: not yet)."""
        self.num_preemptions = 0
        self.block_hashes: list[int] = []
        """Chained hashes of this request's full blocks (prefix-cache keys), in order."""
        self._block_hasher = block_hasher
        self.spec_token_ids: list[int] = []
        """Drafts to verify at this request's next decode step (speculative decoding)."""
        self.structured_output: StructuredOutputRequest | None = None
        """Grammar state, for requests with structured outputs or a thinking budget (set by
        the StructuredOutputManager)."""
        if block_hasher is not None:
            self.block_hashes.extend(block_hasher(self))

    @property
    def all_token_ids(self) -> list[int]:
        return self._all_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self._all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self._all_token_ids) - self.num_prompt_tokens

    def append_output_token_ids(self, token_ids: int | list[int]) -> None:
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        self._all_token_ids.extend(token_ids)
        if self._block_hasher is not None:
            self.block_hashes.extend(self._block_hasher(self))

    def is_finished(self) -> bool:
        return RequestStatus.is_finished(self.status)

    def get_finish_reason(self) -> FinishReason | None:
        return RequestStatus.finish_reason(self.status)

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, status={self.status.name}, "
            f"computed={self.num_computed_tokens}/{self.num_tokens})"
        )
