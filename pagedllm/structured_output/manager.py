"""StructuredOutputManager: the engine core's side of structured outputs.

- Compiles each request's constraint on a thread pool, off the step loop, through a bounded
  LRU cache keyed by the constraint (n > 1 children and repeated schemas compile once). A
  request is not scheduled until its grammar is ready; other requests run meanwhile.
- Each step, writes the allowed-token bitmask of every constrained request that samples (the
  runner masks those logit rows only), and advances the matchers with the sampled tokens.
- Speculative decoding: a constrained request's drafts are cut to the prefix its grammar
  allows when the scheduler takes them (draft_prefix); a step verifying k drafts gets k + 1
  bitmask rows, the grammar's state before each draft (the matcher walks the drafts and rolls
  back), so every verify row samples under the same mask one-token decoding would use.
- Reasoning models (a reasoning parser is configured): the thinking is unconstrained; the
  grammar starts with the first token after the end of the thinking, and a thinking token budget
  forces the end-of-thinking token once spent.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

import numpy as np

from pagedllm.config.structured_outputs import StructuredOutputsConfig
from pagedllm.structured_output.backend import (
    ConstraintKey,
    StructuredOutputBackend,
    allocate_bitmask,
    constraint_key,
    set_only_token,
)
from pagedllm.structured_output.request import StructuredOutputRequest

if TYPE_CHECKING:
    from pagedllm.config.model import ModelConfig
    from pagedllm.reasoning import ReasoningParser
    from pagedllm.request import Request

logger = logging.getLogger(__name__)


class StructuredOutputManager:
    def __init__(self, config: StructuredOutputsConfig, model_config: ModelConfig) -> None:
        self.config = config
        self.model_config = model_config
        self.vocab_size = model_config.vocab_size
        self._pool = ThreadPoolExecutor(max_workers=max(1, config.num_compile_threads),
                                        thread_name_prefix="grammar-compile")
        self._cache: OrderedDict[ConstraintKey, Future] = OrderedDict()
        self._lock = threading.Lock()
        self._backend: StructuredOutputBackend | None = None
        self._reasoner: ReasoningParser | None = None
        self._reasoner_loaded = False

    # ---- lazily built: most engines never see a constrained request ---------------------------

    def _tokenizer(self) -> Any:
        from pagedllm.tokenizer.loader import load_tokenizer

        return load_tokenizer(self.model_config)

    def _get_backend(self) -> StructuredOutputBackend:
        with self._lock:
            if self._backend is None:
                from pagedllm.structured_output.xgrammar_backend import XgrammarBackend

                self._backend = XgrammarBackend(
                    self._tokenizer(), self.vocab_size, self.model_config.eos_token_ids,
                    num_threads=max(1, self.config.num_compile_threads))
            return self._backend

    @property
    def reasoner(self) -> ReasoningParser | None:
        if not self._reasoner_loaded:
            name = self.config.reasoning_parser
            if name is not None and not self.config.enable_in_reasoning:
                from pagedllm.reasoning import REASONING_PARSERS

                self._reasoner = REASONING_PARSERS.get(name)(self._tokenizer())
            self._reasoner_loaded = True
        return self._reasoner

    # ---- requests -----------------------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        """Attach a StructuredOutputRequest to a request that needs one, and start compiling."""
        params = request.sampling_params
        budget = params.thinking_token_budget
        if params.structured_outputs is None and budget is None:
            return
        reasoner = self.reasoner
        key = None
        if params.structured_outputs is not None:
            key = constraint_key(params.structured_outputs, self.config.disable_any_whitespace)
        state = StructuredOutputRequest(
            key=key,
            compiled=self._compiled(key) if key is not None else None,
            reasoning_ended=reasoner is None
            or _thinking_over(reasoner, request.prompt_token_ids[:]),
            thinking_token_budget=budget if reasoner is not None else None,
        )
        request.structured_output = state

    def _compiled(self, key: ConstraintKey) -> Future:
        with self._lock:
            future = self._cache.get(key)
            if future is not None:
                self._cache.move_to_end(key)
                return future
            future = self._pool.submit(self._compile, key)
            self._cache[key] = future
            while len(self._cache) > self.config.max_cached_grammars:
                self._cache.popitem(last=False)
            return future

    def _compile(self, key: ConstraintKey) -> Any:
        return self._get_backend().compile(key)

    def grammar_ready(self, request: Request) -> bool:
        """True when the request may be scheduled: its matcher exists (made here, once the
        grammar compiled) or it needs none. A failed compilation sets state.failed."""
        state = request.structured_output
        if state is None or state.grammar is not None:
            return True
        if not state.is_ready:
            return False
        if state.compiled is not None:
            try:
                state.grammar = self._get_backend().new_grammar(state.compiled.result())
            except Exception as e:  # validated in the API process; a failure here is a bug
                logger.exception("grammar compilation failed for %s", request.request_id)
                state.failed = f"the structured outputs constraint failed to compile: {e}"
                return True
            # NOTE: a request resumed with output (never the case today: the matcher lives
            # as long as the request) would replay it here.
        return True

    def wait_for_grammars(self, requests: Sequence[Request], timeout: float) -> None:
        """Block until one of these requests' grammars is compiled (or timeout): the step loop
        calls it when nothing else can run, instead of spinning."""
        pending = [r.structured_output.compiled for r in requests
                   if r.structured_output is not None and r.structured_output.compiled
                   is not None and not r.structured_output.compiled.done()]
        if pending:
            wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)

    def grammar_bitmask(self, requests: Sequence[Request],
                        drafts: dict[str, list[int]] | None = None,
                        ) -> tuple[list[str], np.ndarray | None]:
        """The bitmask rows of the requests that sample this step and are constrained now (in
        their thinking past a spent budget, or past the thinking with a grammar): one per
        request, or 1 + k for a request verifying k drafts (draft_prefix made them fit)."""
        constrained = [r for r in requests if self._constrains_next_token(r)]
        if not constrained:
            return [], None
        drafts = drafts or {}
        num_rows = [1 + len(drafts.get(r.request_id, ())) for r in constrained]
        bitmask = allocate_bitmask(sum(num_rows), self.vocab_size)
        reasoner = self.reasoner
        row = 0
        for request, rows in zip(constrained, num_rows):
            state = request.structured_output
            assert state is not None
            if not state.reasoning_ended:
                assert reasoner is not None and reasoner.end_token_id is not None
                assert rows == 1, "a forced end of thinking is never drafted past"
                set_only_token(bitmask, row, reasoner.end_token_id)
            else:
                assert state.grammar is not None
                state.grammar.fill_bitmasks_along(bitmask, row,
                                                  drafts.get(request.request_id, []))
            row += rows
        return [r.request_id for r in constrained], bitmask

    def draft_prefix(self, request: Request, drafts: list[int]) -> list[int]:
        """The leading drafts a constrained request may verify: those its grammar allows, and
        in the thinking none past the end-of-thinking token or the budget (so no verify row of
        the thinking is constrained)."""
        state = request.structured_output
        if state is None or state.failed or not drafts:
            return drafts
        if not state.reasoning_ended:
            reasoner = self.reasoner
            if reasoner is None or reasoner.end_token_id is None:
                return []  # text markers: where the thinking ends is only known afterwards
            end = reasoner.end_token_id
            cut = drafts.index(end) if end in drafts else len(drafts)
            if state.thinking_token_budget is not None:
                # the bonus row too must come before the budget forces the end token
                room = state.thinking_token_budget - state.num_reasoning_tokens - 1
                cut = min(cut, max(0, room))
            return drafts[:cut]
        if state.grammar is None:
            return drafts
        return drafts[: state.grammar.count_acceptable(drafts)]

    def _constrains_next_token(self, request: Request) -> bool:
        state = request.structured_output
        if state is None or state.failed:
            return False
        if not state.reasoning_ended:
            budget = state.thinking_token_budget
            reasoner = self.reasoner
            return (budget is not None and state.num_reasoning_tokens >= budget
                    and reasoner is not None and reasoner.end_token_id is not None)
        return state.grammar is not None and not state.grammar.is_terminated()

    def accept_tokens(self, request: Request, new_token_ids: Sequence[int]) -> bool:
        """Advance the request's matcher by its new tokens (those after the thinking). False
        when the grammar rejects one (state.failed says which)."""
        state = request.structured_output
        if state is None or not new_token_ids:
            return True
        tokens = list(new_token_ids)
        if not state.reasoning_ended:
            reasoner = self.reasoner
            assert reasoner is not None
            end = _end_of_thinking(reasoner, request, tokens)
            if end is None:
                state.num_reasoning_tokens += len(tokens)
                return True
            state.reasoning_ended = True
            tokens = tokens[end:]
        if state.grammar is None or not tokens or state.grammar.is_terminated():
            return True
        if state.grammar.accept_tokens(tokens):
            return True
        state.failed = f"token(s) {tokens} rejected by the grammar"
        logger.error("request %s: %s", request.request_id, state.failed,
                     extra={"request_id": request.request_id})
        return False

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _thinking_over(reasoner: ReasoningParser, prompt_token_ids: list[int]) -> bool:
    """The prompt already closes this turn's thinking (e.g. enable_thinking=False templates
    write an empty <think></think>): only an end marker after the last start marker counts."""
    start = reasoner.start_token_id
    if start is not None and start in prompt_token_ids:
        last = len(prompt_token_ids) - 1 - prompt_token_ids[::-1].index(start)
        prompt_token_ids = prompt_token_ids[last:]
    elif start is not None:
        return False
    return reasoner.is_reasoning_end(prompt_token_ids)


def _end_of_thinking(reasoner: ReasoningParser, request: Request,
                     new_tokens: list[int]) -> int | None:
    """Index in new_tokens just past the end of the thinking, or None if it goes on."""
    end_id = reasoner.end_token_id
    if end_id is not None:
        return new_tokens.index(end_id) + 1 if end_id in new_tokens else None
    # Text markers (no single end token): the parser decides on the whole output.
    return len(new_tokens) if reasoner.is_reasoning_end(request.output_token_ids[:]) else None
