"""Beam search on top of the engine (vLLM's design): every step, each live beam is an ordinary
one-token request (prompt = the prompt + the beam's tokens, max_tokens=1, top-k logprobs), all
beams of a step are submitted together, and the beams' continuations are ranked here. Prefix
caching makes the beams of a prompt share its KV blocks instead of copying them: a beam's request
re-reads the blocks its parent's request filled.

`BeamSearch` is the search of one prompt as a plain state machine (no engine, no I/O): a driver
asks it for the step's `prompts()`, runs them however it runs requests (the offline `LLM`
batches every prompt's beams into one `generate`; the server gathers `AsyncLLM.generate` calls)
and hands the per-beam logprobs back to `advance()`, until `done`.

Which continuations survive is Hugging Face's rule (transformers >= 4.50, `early_stopping=
"never"`), so the result equals `generate(num_beams=W, num_return_sequences=W,
early_stopping="never", length_penalty=...)` token for token:

- the step's candidates are the K best (beam, token) pairs by cumulative logprob, K = W times
  max(2, 1 + number of EOS ids) (each beam's top K is asked for, so the global top K is among
  them);
- a candidate ending in EOS becomes a finished hypothesis only if it ranks among the W best
  candidates; the W best candidates that do not end in EOS are the next step's beams;
- at max_tokens the W best candidates all finish;
- a finished hypothesis scores cum_logprob / generated_len ** length_penalty, generated_len
  counting the EOS token and not the prompt; the W best finished hypotheses are the answer;
- the search stops early once no live beam can reach the W-th best finished score (an exact
  bound, so stopping changes nothing).

vLLM differs in three details (see `vllm/beam_search.py`): its length counts the prompt and not
the EOS, it keeps every EOS continuation of each beam's top 2W as finished (even one that ranked
below the W best of its step), and it always runs max_tokens steps.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from pagedllm.outputs import Logprob, RequestOutput

MAX_BEAM_WIDTH = 32
"""Widest beam the server accepts (`n` with use_beam_search): each step sends `n` requests that
each return 2n logprobs, so a wider beam is more likely a mistake than a wish."""


@dataclass
class BeamSearchParams:
    """vLLM's BeamSearchParams."""

    beam_width: int
    max_tokens: int
    """Most tokens a beam generates (counting its EOS)."""
    ignore_eos: bool = False
    """Treat EOS as an ordinary token: every beam runs max_tokens."""
    temperature: float = 0.0
    """Passed to the step requests as vLLM does. The candidates are ranked by the model's raw
    logprobs, so it does not change the result."""
    length_penalty: float = 1.0
    """Finished hypotheses score cum_logprob / generated_len ** length_penalty: > 0 favours
    longer ones, < 0 shorter ones, 0 ranks by cumulative logprob alone."""
    include_stop_str_in_output: bool = False
    """Keep the EOS token at the end of a finished sequence's tokens (and text)."""

    def __post_init__(self) -> None:
        if not isinstance(self.beam_width, int) or self.beam_width < 1:
            raise ValueError(f"beam_width must be an integer >= 1, got {self.beam_width}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")


@dataclass
class BeamSearchSequence:
    """One hypothesis. `tokens` holds the prompt and the generated tokens, as in vLLM."""

    tokens: list[int]
    num_prompt_tokens: int
    cum_logprob: float = 0.0
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    """Per generated token: the logprobs its step returned (the beam's top-k)."""
    text: str | None = None
    """Set on the returned sequences only."""
    finish_reason: str | None = None
    """"stop" (EOS) or "length"; None while the beam is live."""
    stop_reason: int | None = None
    """The EOS token id that finished it."""

    @property
    def token_ids(self) -> list[int]:
        """The generated tokens (an EOS is kept only with include_stop_str_in_output)."""
        return self.tokens[self.num_prompt_tokens:]

    @property
    def cumulative_logprob(self) -> float:
        return self.cum_logprob


@dataclass
class BeamSearchOutput:
    """The best beam_width sequences of one prompt, best first."""

    sequences: list[BeamSearchSequence]


@dataclass
class _Candidate:
    cum_logprob: float
    parent: BeamSearchSequence
    token_id: int
    logprobs: dict[int, Logprob]


StepLogprobs = dict[int, Logprob] | None
"""What one beam's step request returned: its top-k logprobs (None: the request produced
nothing, e.g. it was aborted)."""


def step_logprobs(output: RequestOutput) -> StepLogprobs:
    """The logprobs a finished one-token step request returned."""
    logprobs = output.outputs[0].logprobs if output.outputs else None
    return logprobs[0] if logprobs else None


def beam_score(cum_logprob: float, generated_len: int, length_penalty: float) -> float:
    """Hugging Face's length-normalized score (the length counts the EOS, not the prompt)."""
    return cum_logprob / (generated_len ** length_penalty)


class BeamSearch:
    """The beam search of one prompt."""

    def __init__(self, prompt_token_ids: list[int], params: BeamSearchParams,
                 eos_token_ids: Sequence[int], max_model_len: int | None = None) -> None:
        self.params = params
        self.max_tokens = params.max_tokens
        """max_tokens, cut to what the context leaves after the prompt."""
        if max_model_len is not None:
            self.max_tokens = max(1, min(self.max_tokens, max_model_len - len(prompt_token_ids)))
        self.eos_token_ids = frozenset(() if params.ignore_eos else eos_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.beams = [BeamSearchSequence(list(prompt_token_ids), self.num_prompt_tokens)]
        self.finished: list[tuple[float, BeamSearchSequence]] = []
        """(score, hypothesis), best first, at most beam_width."""
        self.num_steps = 0
        self.done = False

    @property
    def num_candidates(self) -> int:
        """How many continuations a step keeps, and so the logprobs each beam asks for: enough
        that W survive even if every beam's best continuation is an EOS (Hugging Face's K)."""
        return max(2, 1 + len(self.eos_token_ids)) * self.params.beam_width

    def prompts(self) -> list[list[int]]:
        """The step's requests: one token prompt per live beam."""
        assert not self.done
        return [beam.tokens for beam in self.beams]

    def advance(self, step_logprobs: Sequence[StepLogprobs]) -> None:
        """Take the step's results (one per prompt, in order) and choose the next beams."""
        assert len(step_logprobs) == len(self.beams)
        self.num_steps += 1
        candidates = self._top_candidates(step_logprobs)
        width = self.params.beam_width
        last = self.num_steps >= self.max_tokens
        for candidate in candidates[:width]:
            is_eos = candidate.token_id in self.eos_token_ids
            if is_eos or last:
                self._add_finished(candidate, "stop" if is_eos else "length")
        if last:
            self.beams = []
        else:
            self.beams = [self._extend(c) for c in candidates
                          if c.token_id not in self.eos_token_ids][:width]
        self.done = not self.beams or not self._can_improve()

    def best(self) -> list[BeamSearchSequence]:
        """The answer, best first (after `done`)."""
        return [seq for _, seq in self.finished]

    # ---- internals ------------------------------------------------------------------------------

    def _top_candidates(self, step_logprobs: Sequence[StepLogprobs]) -> list[_Candidate]:
        candidates = [
            _Candidate(beam.cum_logprob + lp.logprob, beam, token_id, entry)
            for beam, entry in zip(self.beams, step_logprobs) if entry is not None
            for token_id, lp in entry.items()
        ]
        # Stable sort: equal scores keep beam order, then the order the engine listed them.
        candidates.sort(key=lambda c: -c.cum_logprob)
        return candidates[:self.num_candidates]

    def _extend(self, candidate: _Candidate, keep_token: bool = True) -> BeamSearchSequence:
        parent = candidate.parent
        tokens = parent.tokens + [candidate.token_id] if keep_token else list(parent.tokens)
        return BeamSearchSequence(tokens, self.num_prompt_tokens, candidate.cum_logprob,
                                  parent.logprobs + [candidate.logprobs])

    def _add_finished(self, candidate: _Candidate, reason: str) -> None:
        is_eos = reason == "stop"
        keep = not is_eos or self.params.include_stop_str_in_output
        seq = self._extend(candidate, keep_token=keep)
        seq.finish_reason = reason
        seq.stop_reason = candidate.token_id if is_eos else None
        generated_len = len(candidate.parent.tokens) + 1 - self.num_prompt_tokens
        score = beam_score(candidate.cum_logprob, generated_len, self.params.length_penalty)
        self.finished.append((score, seq))
        # Stable: a hypothesis found earlier stays ahead of an equal later one.
        self.finished.sort(key=lambda item: -item[0])
        del self.finished[self.params.beam_width:]

    def _can_improve(self) -> bool:
        """Whether a live beam can still beat the W-th finished score. Logprobs are <= 0, so a
        beam's cumulative logprob only falls; its best score is at the longest length when the
        penalty favours length, else at the shortest length it could finish with."""
        if len(self.finished) < self.params.beam_width:
            return True
        best_cum = max(beam.cum_logprob for beam in self.beams)
        penalty = self.params.length_penalty
        generated = len(self.beams[0].tokens) - self.num_prompt_tokens
        length = self.max_tokens if penalty > 0 else generated + 1
        return beam_score(best_cum, length, penalty) > self.finished[-1][0]


def run_beam_search(
    searches: Sequence[BeamSearch],
    run_step: Callable[[list[list[int]], int], list[StepLogprobs]],
    on_step: Callable[[], None] | None = None,
) -> None:
    """Drive searches to the end, every search's beams in one call per step: `run_step(prompts,
    num_logprobs)` runs one one-token request per prompt and returns each one's logprobs."""
    while live := [s for s in searches if not s.done]:
        prompts = [p for s in live for p in s.prompts()]
        num_logprobs = max(s.num_candidates for s in live)
        results = run_step(prompts, num_logprobs)
        start = 0
        for search in live:
            count = len(search.beams)
            search.advance(results[start:start + count])
            start += count
        if on_step is not None:
            on_step()


async def run_beam_search_async(
    search: BeamSearch,
    run_step: Callable[[list[list[int]], int], Awaitable[list[StepLogprobs]]],
) -> None:
    """`run_beam_search` for one search whose steps are awaited (the server)."""
    while not search.done:
        search.advance(await run_step(search.prompts(), search.num_candidates))
