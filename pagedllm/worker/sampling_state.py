"""SamplingState: the sampling parameters of every row of the persistent batch, as per-row
arrays written once when a request joins. Each step's SamplingMetadata is gathered from the
rows that sample, with no Python object rebuilt per request (the reference build from
SamplingRows in sample/metadata.py gives the same tensors; tests/worker checks it).
"""

from __future__ import annotations

import numpy as np
import torch

from pagedllm.sample.metadata import (
    SamplingMetadata,
    allowed_ids,
    check_token_ids,
    clamped_top_k,
    min_tokens_stop_ids,
    uses_penalty,
)
from pagedllm.sample.ops.logit_bias import SparseRowTokens
from pagedllm.sample.ops.penalties import PenaltyTensors
from pagedllm.sample.ops.seeded import draw_seed
from pagedllm.sample.ops.token_masks import bad_words_banned, bad_words_context
from pagedllm.sampling_params import SamplingParams
from pagedllm.worker.penalty_counts import PenaltyCounts
from pagedllm.worker.row_arrays import grown


class SamplingState:
    def __init__(
        self,
        max_num_reqs: int,
        vocab_size: int,
        device: torch.device,
        eos_token_ids: tuple[int, ...] = (),
    ) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self.eos_token_ids = eos_token_ids
        n = max_num_reqs
        # Per-row arrays, all [max_num_reqs]; a row's entries are meaningful while it is held.
        self.temperature = np.ones(n, dtype=np.float32)  # 1.0 on greedy rows
        self.is_greedy = np.zeros(n, dtype=bool)
        self.top_k = np.zeros(n, dtype=np.int64)  # in [1, V]; V where off
        self.top_p = np.ones(n, dtype=np.float32)
        self.min_p = np.zeros(n, dtype=np.float32)
        self.presence = np.zeros(n, dtype=np.float32)
        self.frequency = np.zeros(n, dtype=np.float32)
        self.repetition = np.ones(n, dtype=np.float32)
        self.uses_penalty = np.zeros(n, dtype=bool)
        self.penalty_slot = np.zeros(n, dtype=np.int64)  # valid where uses_penalty
        self.min_tokens = np.zeros(n, dtype=np.int64)
        self.has_seed = np.zeros(n, dtype=bool)  # a seeded random request
        self.has_logit_bias = np.zeros(n, dtype=bool)
        self.has_allowed = np.zeros(n, dtype=bool)
        self.has_bad_words = np.zeros(n, dtype=bool)
        self.bad_words_context = np.zeros(n, dtype=np.int64)
        """How many of its latest output tokens a row's bad words look at (longest word - 1)."""
        self.plain_greedy = np.zeros(n, dtype=bool)
        """Greedy, and nothing acts on its logits before the argmax (no penalty, logit bias,
        allowed ids, bad words or min_tokens) and no logprobs: the sampler's token for the row is
        the argmax of its logits as they come (all_plain_greedy)."""
        self.num_not_plain_greedy = 0
        """Held rows that are not plain_greedy (0: every step's rows are)."""
        # Per-row Python objects (not tensors by nature): [max_num_reqs] lists.
        self.params: list[SamplingParams | None] = [None] * n
        self.logit_bias: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n
        """(tokens [N] long, values [N] float32) on device."""
        self.min_tokens_stops: list[torch.Tensor | None] = [None] * n
        """Sorted stop ids (EOS unless ignore_eos, stop_token_ids) blocked below min_tokens."""
        self.allowed: list[torch.Tensor | None] = [None] * n
        """Sorted unique allowed_token_ids [N] long on device."""
        self.penalties = PenaltyCounts(vocab_size, device)

    _ARRAYS = (
        "temperature", "is_greedy", "top_k", "top_p", "min_p", "presence", "frequency",
        "repetition", "uses_penalty", "penalty_slot", "min_tokens", "has_seed",
        "has_logit_bias", "has_allowed", "has_bad_words", "bad_words_context", "plain_greedy",
    )  # fmt: skip
    _LISTS = ("params", "logit_bias", "min_tokens_stops", "allowed")

    def add_row(
        self, row: int, params: SamplingParams, prompt: list[int], output: list[int]
    ) -> None:
        """Set row's parameters for a request joining with these prompt and output tokens."""
        greedy = params.is_greedy
        self.params[row] = params
        self.is_greedy[row] = greedy
        self.temperature[row] = 1.0 if greedy else params.temperature
        self.top_k[row] = clamped_top_k(params, self.vocab_size)
        self.top_p[row], self.min_p[row] = params.top_p, params.min_p
        self.presence[row] = params.presence_penalty
        self.frequency[row] = params.frequency_penalty
        self.repetition[row] = params.repetition_penalty
        self.uses_penalty[row] = uses_penalty(params)
        if self.uses_penalty[row]:
            self.penalty_slot[row] = self.penalties.acquire(prompt, output)
        self.min_tokens[row] = params.min_tokens
        self.has_seed[row] = params.seed is not None and not greedy
        self.logit_bias[row] = self._logit_bias(params)
        self.has_logit_bias[row] = self.logit_bias[row] is not None
        self.min_tokens_stops[row] = self._min_tokens_stops(params)
        self.allowed[row] = self._allowed(params)
        self.has_allowed[row] = self.allowed[row] is not None
        bad_words = params._bad_words_token_ids
        self.has_bad_words[row] = bool(bad_words)
        self.bad_words_context[row] = bad_words_context(bad_words or [])
        self.plain_greedy[row] = greedy and not (
            self.uses_penalty[row] or self.has_logit_bias[row] or self.has_allowed[row]
            or self.has_bad_words[row] or params.min_tokens > 0 or params.logprobs is not None
        )  # fmt: skip
        self.num_not_plain_greedy += not self.plain_greedy[row]

    def remove_row(self, row: int) -> None:
        self.num_not_plain_greedy -= not self.plain_greedy[row]
        if self.uses_penalty[row]:
            self.penalties.release(int(self.penalty_slot[row]))
        self.uses_penalty[row] = False
        for name in self._LISTS:
            getattr(self, name)[row] = None

    def move_row(self, src: int, dst: int) -> None:
        for name in self._ARRAYS + self._LISTS:
            values = getattr(self, name)
            values[dst] = values[src]

    def grow_rows(self, num_rows: int) -> None:
        for name in self._ARRAYS:
            setattr(self, name, grown(getattr(self, name), 0, num_rows))
        for name in self._LISTS:
            values = getattr(self, name)
            values.extend([None] * (num_rows - len(values)))

    def all_plain_greedy(self, rows: np.ndarray) -> bool:
        """Every row of `rows` is plain_greedy: the step's tokens are the argmax of the logits,
        and the SamplingMetadata (~40 us a step to gather) is not needed."""
        # (a count first: when every held row is plain, no numpy call at all)
        return self.num_not_plain_greedy == 0 or bool(self.plain_greedy[rows].all())

    def add_sampled(self, rows: np.ndarray, token_ids: torch.Tensor) -> None:
        """Count the tokens just sampled by rows [S] (token_ids: [S] long) for the penalties."""
        if not self.penalties.num_held:  # (no row holds a slot: none is penalized)
            return
        penalized = self.uses_penalty[rows]
        if penalized.any():
            slots = torch.from_numpy(self.penalty_slot[rows][penalized]).to(self.device)
            picked = torch.from_numpy(np.flatnonzero(penalized)).to(token_ids.device)
            self.penalties.add_tokens(slots, token_ids[picked].to(self.device))

    def metadata(
        self,
        rows: np.ndarray,
        num_output_tokens: np.ndarray,
        token_ids: np.ndarray | None = None,
        num_tokens: np.ndarray | None = None,
    ) -> SamplingMetadata:
        """The step's SamplingMetadata; batch row i of it is persistent row rows[i].
        num_output_tokens: [S] tokens each row has generated so far (for min_tokens).
        token_ids: the batch's token array [rows, max_len] and num_tokens [S] the tokens each row
        holds (the position of the token it samples), for bad_words and seeded rows (needed
        only when a row has them: InputBatch.sampling_metadata passes them)."""
        greedy = self.is_greedy[rows]
        num_logprobs = [self.params[r].logprobs for r in rows.tolist()]  # type: ignore[union-attr]
        requested = [n for n in num_logprobs if n is not None]
        return SamplingMetadata(
            temperature=self._tensor(self.temperature[rows]),
            is_greedy=self._tensor(greedy),
            all_greedy=bool(greedy.all()),
            all_random=len(rows) > 0 and not bool(greedy.any()),
            top_k=self._unless_all(self.top_k[rows], self.vocab_size),
            top_p=self._unless_all(self.top_p[rows], 1.0),
            min_p=self._unless_all(self.min_p[rows], 0.0),
            seeds=self._seeds(rows, num_tokens),
            penalties=self._penalty_tensors(rows),
            allowed_token_ids=self._sparse(rows, self.has_allowed[rows], self._allowed_of),
            bad_words_banned=self._bad_words_banned(rows, num_output_tokens, token_ids, num_tokens),
            logit_bias=self._sparse(rows, self.has_logit_bias[rows], self._bias_of),
            min_tokens_blocked=self._sparse(
                rows, num_output_tokens < self.min_tokens[rows], self._stops_of
            ),
            num_logprobs=num_logprobs,
            max_num_logprobs=max(requested) if requested else None,
        )

    def _tensor(self, values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(values).to(self.device)

    def _unless_all(self, values: np.ndarray, off: float) -> torch.Tensor | None:
        """None when every row has the transform off."""
        return None if bool((values == off).all()) else self._tensor(values)

    def _seeds(self, rows: np.ndarray, num_tokens: np.ndarray | None) -> dict[int, int]:
        """The draw seed of each seeded random row; its position is the index of the token it
        samples, i.e. the tokens the row holds (num_tokens)."""
        seeded = np.flatnonzero(self.has_seed[rows])
        if len(seeded) == 0:
            return {}
        assert num_tokens is not None, "seeded rows need their positions"
        return {int(i): draw_seed(self.params[rows[i]].seed, int(num_tokens[i]))  # type: ignore
                for i in seeded}

    def _penalty_tensors(self, rows: np.ndarray) -> PenaltyTensors | None:
        active = self.uses_penalty[rows]
        if not active.any():
            return None
        slots = self._tensor(self.penalty_slot[rows][active])
        prompt_mask = self._gather(self.penalties.prompt_mask, slots, active)
        output_counts = self._gather(self.penalties.output_counts, slots, active)
        return PenaltyTensors(
            presence=self._tensor(self.presence[rows]),
            frequency=self._tensor(self.frequency[rows]),
            repetition=self._tensor(self.repetition[rows]),
            prompt_mask=prompt_mask,
            output_counts=output_counts,
        )

    def _gather(self, table: torch.Tensor, slots: torch.Tensor, active: np.ndarray) -> torch.Tensor:
        """[len(active), V]: table's slot rows for the active batch rows, zeros for the others
        (a row without a penalty: the sampler then leaves its logits as they are)."""
        if active.all():
            return table.index_select(0, slots)
        out = table.new_zeros(len(active), table.shape[1])
        return out.index_copy_(
            0, torch.from_numpy(np.flatnonzero(active)).to(self.device), table[slots]
        )

    def _bias_of(self, row: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        bias = self.logit_bias[row]
        assert bias is not None
        return bias

    def _allowed_of(self, row: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        allowed = self.allowed[row]
        assert allowed is not None
        return allowed, None

    def _bad_words_banned(
        self,
        rows: np.ndarray,
        num_output: np.ndarray,
        token_ids: np.ndarray | None,
        num_tokens: np.ndarray | None,
    ) -> SparseRowTokens | None:
        """Each row with bad words looks at its last bad_words_context output tokens only (no
        work proportional to its history)."""
        selected = np.flatnonzero(self.has_bad_words[rows])
        if len(selected) == 0:
            return None
        assert token_ids is not None and num_tokens is not None, "bad_words need the tokens"
        batch_rows: list[int] = []
        banned: list[int] = []
        for i in selected.tolist():
            row, end = int(rows[i]), int(num_tokens[i])
            start = end - min(int(self.bad_words_context[row]), int(num_output[i]))
            params = self.params[row]
            assert params is not None and params._bad_words_token_ids
            tokens = bad_words_banned(
                params._bad_words_token_ids, token_ids[row, start:end].tolist()
            )
            batch_rows += [i] * len(tokens)
            banned += tokens
        if not banned:
            return None
        return SparseRowTokens(
            rows=torch.tensor(batch_rows, dtype=torch.long, device=self.device),
            tokens=torch.tensor(banned, dtype=torch.long, device=self.device),
        )

    def _stops_of(self, row: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        stops = self.min_tokens_stops[row]
        assert stops is not None
        return stops, None

    def _sparse(self, rows: np.ndarray, selected: np.ndarray, entries) -> SparseRowTokens | None:
        """Concatenate the (tokens, values) entries of the selected batch rows."""
        parts = [(int(i), *entries(int(rows[i]))) for i in np.flatnonzero(selected)]
        parts = [p for p in parts if p[1].numel() > 0]
        if not parts:
            return None
        batch_rows = torch.cat([torch.full_like(tokens, i) for i, tokens, _ in parts])
        values = [v for _, _, v in parts]
        return SparseRowTokens(
            rows=batch_rows,
            tokens=torch.cat([t for _, t, _ in parts]),
            values=None if values[0] is None else torch.cat(values),
        )

    def _logit_bias(self, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not params.logit_bias:
            return None
        tokens = list(params.logit_bias)
        check_token_ids(tokens, self.vocab_size)
        values = list(params.logit_bias.values())
        return (
            torch.tensor(tokens, dtype=torch.long, device=self.device),
            torch.tensor(values, dtype=torch.float32, device=self.device),
        )

    def _allowed(self, params: SamplingParams) -> torch.Tensor | None:
        if not params.allowed_token_ids:
            return None
        ids = allowed_ids(params)
        check_token_ids(ids, self.vocab_size, "allowed_token_ids")
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def _min_tokens_stops(self, params: SamplingParams) -> torch.Tensor | None:
        if params.min_tokens <= 0:
            return None
        kept = min_tokens_stop_ids(params, self.eos_token_ids, self.vocab_size)
        return torch.tensor(kept, dtype=torch.long, device=self.device)
