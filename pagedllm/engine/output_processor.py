"""EngineCoreOutputs -> RequestOutputs: incremental detokenization, stop strings, logprobs, and
the fan-in of n > 1 samples into one RequestOutput."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pagedllm.core.sched.output import LogprobsLists
from pagedllm.engine.messages import EngineCoreOutput
from pagedllm.outputs import (
    ClassificationOutput,
    ClassificationRequestOutput,
    CompletionOutput,
    EmbeddingOutput,
    EmbeddingRequestOutput,
    Logprob,
    PoolingRequestOutput,
    PromptLogprobs,
    RequestOutput,
)
from pagedllm.pooling_params import PoolingParams, activate_logits, finish_embedding
from pagedllm.request import FinishReason
from pagedllm.sampling_params import RequestOutputKind, SamplingParams
from pagedllm.tokenizer.detokenizer import IncrementalDetokenizer, decode_tokens
from pagedllm.tokenizer.stop import StopStringChecker


@dataclass
class ParentRequest:
    """The user's request when n > 1: its samples run as child requests."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    children: dict[int, CompletionOutput] = field(default_factory=dict)
    num_finished: int = 0
    prompt_logprobs: PromptLogprobs | None = None
    num_cached_tokens: int = 0


class RequestState:
    """One sample being generated (a request with n == 1, or one child of a parent)."""

    def __init__(self, request_id: str, parent: ParentRequest, index: int,
                 params: SamplingParams, tokenizer: Any, decode_cache: dict[int, str]) -> None:
        self.request_id = request_id
        self.decode_cache = decode_cache
        self.parent = parent
        self.index = index
        self.params = params
        self.tokenizer = tokenizer
        self.token_ids: list[int] = []
        self.text = ""
        self.sent_text_len = 0
        self.sent_tokens = 0
        self.sent_logprobs = 0
        self.logprobs: list[dict[int, Logprob]] | None = [] if params.logprobs is not None else None
        self.cumulative_logprob: float | None = 0.0 if params.logprobs is not None else None
        self.finish_reason: FinishReason | None = None
        self.stop_reason: int | str | None = None
        self.detokenizer = (
            IncrementalDetokenizer(
                tokenizer, parent.prompt_token_ids, params.skip_special_tokens,
                params.spaces_between_special_tokens,
            )
            if params.detokenize and tokenizer is not None else None
        )
        self.stop_checker = StopStringChecker(params.stop or [], params.include_stop_str_in_output)

    def update(self, out: EngineCoreOutput) -> bool:
        """Apply one engine-core output; True if a stop string finished the request here."""
        self.token_ids.extend(out.new_token_ids)
        if out.new_logprobs is not None and self.logprobs is not None:
            self._append_logprobs(out.new_logprobs)
        if out.finish_reason is not None:
            self.finish_reason, self.stop_reason = out.finish_reason, out.stop_reason
        if self.detokenizer is None or not out.new_token_ids:
            return False
        delta = self.detokenizer.update(out.new_token_ids)
        if self.finish_reason is not None:
            delta += self.detokenizer.flush()  # release a held-back incomplete character
        self.text = self.detokenizer.output_text
        if not self.params.stop or self.finish_reason == FinishReason.ABORT:
            return False
        hit = self.stop_checker.check(self.text, len(delta))
        if hit is None:
            return False
        stop_str, self.text = hit
        still_running = self.finish_reason is None
        self.finish_reason, self.stop_reason = FinishReason.STOP, stop_str
        return still_running

    def _append_logprobs(self, lists: LogprobsLists) -> None:
        for ids, lps, rank in zip(lists.token_ids, lists.logprobs, lists.ranks):
            entry = _logprob_dict(ids, lps, rank, self.tokenizer, self.decode_cache)
            self.logprobs.append(entry)  # type: ignore[union-attr]
            self.cumulative_logprob += lps[0]  # type: ignore[operator]

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def completion(self, delta: bool) -> CompletionOutput:
        text_end = len(self.text)
        if not self.finished:
            text_end -= self.stop_checker.holdback(self.text)
        text_end = max(text_end, self.sent_text_len)
        if delta:
            text = self.text[self.sent_text_len:text_end]
            token_ids = self.token_ids[self.sent_tokens:]
            logprobs = self.logprobs[self.sent_logprobs:] if self.logprobs is not None else None
            self.sent_text_len, self.sent_tokens = text_end, len(self.token_ids)
            self.sent_logprobs = len(self.logprobs) if self.logprobs is not None else 0
        else:
            text, token_ids, logprobs = self.text[:text_end], list(self.token_ids), self.logprobs
        return CompletionOutput(
            index=self.index,
            text=text,
            token_ids=token_ids,
            cumulative_logprob=self.cumulative_logprob,
            logprobs=list(logprobs) if logprobs is not None else None,
            finish_reason=self.finish_reason.value if self.finish_reason else None,
            stop_reason=self.stop_reason,
        )


def _logprob_dict(ids: list[int], lps: list[float], rank: int, tokenizer: Any,
                  decode_cache: dict[int, str]) -> dict[int, Logprob]:
    """Row of LogprobsLists -> {token id: Logprob}; the chosen token first, then the top-k."""
    texts: list[str | None] = [None] * len(ids)
    if tokenizer is not None:
        texts = list(decode_tokens(tokenizer, ids, decode_cache))
    entry: dict[int, Logprob] = {}
    for j, (token_id, logprob) in enumerate(zip(ids, lps)):
        if token_id not in entry:
            entry[token_id] = Logprob(logprob, rank if j == 0 else j, texts[j])
    return entry


@dataclass
class PoolingRequestState:
    """An embedding request: one output, when the engine core has pooled its prompt."""

    prompt: str | None
    prompt_token_ids: list[int]
    params: PoolingParams
    default_normalize: bool
    activation: str | None = None
    """A classify request's activation of the head's logits (None: an embedding)."""


@dataclass
class ProcessedOutputs:
    request_outputs: list[RequestOutput | PoolingRequestOutput]
    reqs_to_abort: list[str]
    """Child requests a stop string finished: the engine core must stop computing them."""


class OutputProcessor:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.states: dict[str, RequestState] = {}
        self.decode_cache: dict[int, str] = {}
        """Text of single token ids (for logprobs), shared by all requests."""
        self.pooling_states: dict[str, PoolingRequestState] = {}

    def add_pooling_request(self, request_id: str, state: PoolingRequestState) -> None:
        self.pooling_states[request_id] = state

    def add_request(self, request_id: str, parent: ParentRequest, index: int,
                    params: SamplingParams) -> None:
        self.states[request_id] = RequestState(
            request_id, parent, index, params, self.tokenizer, self.decode_cache
        )

    def has_unfinished_requests(self) -> bool:
        return bool(self.states) or bool(self.pooling_states)

    def abort_requests(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self.states.pop(request_id, None)
            self.pooling_states.pop(request_id, None)

    def process_outputs(self, outputs: list[EngineCoreOutput]) -> ProcessedOutputs:
        result = ProcessedOutputs([], [])
        for out in outputs:
            if out.pooling_output is not None:
                embedding = self._embedding_output(out)
                if embedding is not None:
                    result.request_outputs.append(embedding)
                continue
            state = self.states.get(out.request_id)
            if state is None:
                continue  # aborted meanwhile
            parent = state.parent
            parent.num_cached_tokens = max(parent.num_cached_tokens, out.num_cached_tokens)
            if out.new_prompt_logprobs is not None and state.index == 0:
                # Every sample computes the prompt; the first one's logprobs are kept.
                self._append_prompt_logprobs(parent, out.new_prompt_logprobs)
            if state.update(out):
                result.reqs_to_abort.append(out.request_id)
            request_output = self._make_request_output(state)
            if state.finished:
                del self.states[out.request_id]
            if request_output is not None:
                result.request_outputs.append(request_output)
        return result

    def _embedding_output(self, out: EngineCoreOutput) -> PoolingRequestOutput | None:
        state = self.pooling_states.pop(out.request_id, None)
        if state is None or out.pooling_output is None:
            return None  # aborted meanwhile
        if state.activation is not None:
            return ClassificationRequestOutput(
                request_id=out.request_id, prompt=state.prompt,
                prompt_token_ids=state.prompt_token_ids,
                outputs=ClassificationOutput(activate_logits(out.pooling_output,
                                                             state.activation)))
        vector = finish_embedding(out.pooling_output, state.params, state.default_normalize)
        return EmbeddingRequestOutput(
            request_id=out.request_id, prompt=state.prompt,
            prompt_token_ids=state.prompt_token_ids, outputs=EmbeddingOutput(vector),
            num_cached_tokens=out.num_cached_tokens,
        )

    def _append_prompt_logprobs(self, parent: ParentRequest, lists: LogprobsLists) -> None:
        if parent.prompt_logprobs is None:
            parent.prompt_logprobs = [None]
        # Entry p + 1 scores prompt token p + 1; skip positions delivered before a preemption.
        skip = len(parent.prompt_logprobs) - 1 - lists.start_position
        rows = zip(lists.token_ids, lists.logprobs, lists.ranks)
        for ids, lps, rank in list(rows)[max(skip, 0):]:
            parent.prompt_logprobs.append(
                _logprob_dict(ids, lps, rank, self.tokenizer, self.decode_cache)
            )

    def _make_request_output(self, state: RequestState) -> RequestOutput | None:
        parent = state.parent
        kind = parent.params.output_kind
        if state.finished:
            parent.num_finished += 1
        all_done = parent.num_finished == parent.params.n
        if kind == RequestOutputKind.FINAL_ONLY:
            if not state.finished:
                return None  # (its completion is built once, when it finishes: no per-step copy)
            parent.children[state.index] = state.completion(delta=False)
            if not all_done:
                return None
            completions = [parent.children[i] for i in sorted(parent.children)]
        elif kind == RequestOutputKind.DELTA:
            completions = [state.completion(delta=True)]
        else:
            parent.children[state.index] = state.completion(delta=False)
            completions = [parent.children[i] for i in sorted(parent.children)]
        return RequestOutput(
            request_id=parent.request_id,
            prompt=parent.prompt,
            prompt_token_ids=parent.prompt_token_ids,
            outputs=completions,
            finished=all_done,
            prompt_logprobs=parent.prompt_logprobs,
            num_cached_tokens=parent.num_cached_tokens,
        )
