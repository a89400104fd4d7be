"""The runner's encoder-decoder step: each request's encoder run once, at its first scheduled
step, and its cross-attention K/V kept until it leaves the batch.

Where the cross-attention K/V live: a per-request store here, not paged blocks. They are written
once, read whole by every decode step, never shared between requests (no prefix caching for
encoder-decoders: the decoder's K/V depend on the encoder input) and never grow, so paging buys
nothing; their size is fixed by the encoder prompt (bounded by max_model_len or the encoder's
position table). The memory is in the scheduler's accounting all the same: the worker carved
the store's budget out of the KV cache budget (worker/cross_attention_plan.py) and the scheduler
admits a request only when its encoder tokens fit (core/cross_attention_budget.py). A finished
request's entry goes with it; so does a preempted one's (preemption sends it in
finished_req_ids), and the encoder runs again when it is rescheduled, as its decoder K/V are
recomputed too.
"""

from __future__ import annotations

import torch
from torch import nn

from pagedllm.forward_context import set_forward_context
from pagedllm.model_executor.layers.cross_attention import CrossAttentionBatch, CrossKV
from pagedllm.model_executor.layers.encoder_attention import EncoderAttentionMetadata


class EncoderDecoderState:
    def __init__(self, model: nn.Module, device: torch.device,
                 num_tokens_budget: int | None = None) -> None:
        self.model = model
        self.device = device
        self.num_tokens_budget = num_tokens_budget
        """The scheduler's cross-attention budget in encoder tokens (None: unchecked)."""
        self.num_tokens = 0
        """Encoder tokens whose K/V are held now."""
        self.peak_tokens = 0
        """The most held at once (tests check it stays within the budget)."""
        self._encoder_ids: dict[str, list[int]] = {}
        self._cross_kv: dict[str, CrossKV] = {}
        """request id -> its cross-attention K/V per decoder layer, while it runs."""
        self._num_held: dict[str, int] = {}
        """request id -> its encoder tokens (the rows of each of its K/V tensors)."""
        self.num_encoder_runs = 0
        """Encoder inputs encoded so far (tests check: once per request and scheduling)."""

    @property
    def num_cached(self) -> int:
        """Requests whose cross-attention K/V are held (0 once every request left)."""
        return len(self._cross_kv)

    def add_request(self, req_id: str, encoder_ids: list[int] | None) -> None:
        # (the input processor gives every request of an encoder-decoder its encoder prompt)
        assert encoder_ids, f"request {req_id} has no encoder prompt"
        self._drop(req_id)  # (a resumed request: finished_req_ids dropped it already)
        self._encoder_ids[req_id] = encoder_ids

    def remove_request(self, req_id: str) -> None:
        self._encoder_ids.pop(req_id, None)
        self._drop(req_id)

    def _drop(self, req_id: str) -> None:
        if self._cross_kv.pop(req_id, None) is not None:
            self.num_tokens -= self._num_held.pop(req_id)

    def step_batch(self, req_ids: list[str], query_start_loc: list[int]) -> CrossAttentionBatch:
        """The scheduled requests' cross K/V (encoding, in one packed pass, those that have
        none yet). Call outside the decoder's forward context: the encoder sets its own."""
        new = [r for r in req_ids if r not in self._cross_kv]
        if new:
            self._encode(new)
        return CrossAttentionBatch(query_start_loc, [self._cross_kv[r] for r in req_ids])

    def _encode(self, req_ids: list[str]) -> None:
        prompts = [self._encoder_ids[r] for r in req_ids]
        lens = [len(p) for p in prompts]
        ids = torch.tensor([t for p in prompts for t in p], dtype=torch.long, device=self.device)
        positions = torch.cat([torch.arange(n, device=self.device) for n in lens])
        with set_forward_context(EncoderAttentionMetadata.build(lens, self.device)):
            hidden = self.model.encode(ids, positions)  # [sum(lens), hidden]
        for req_id, rows in zip(req_ids, hidden.split(lens)):
            self._cross_kv[req_id] = self.model.cross_kv(rows)
            self._num_held[req_id] = len(rows)
            self.num_tokens += len(rows)
        self.num_encoder_runs += len(req_ids)
        self.peak_tokens = max(self.peak_tokens, self.num_tokens)
        if self.num_tokens_budget is not None and self.num_tokens > self.num_tokens_budget:
            raise RuntimeError(f"cross-attention K/V of {self.num_tokens} encoder tokens held, "
                               f"more than the budget of {self.num_tokens_budget}: the "
                               f"scheduler's accounting is off")

    def held_bytes(self) -> int:
        """Bytes of the K/V held now (tests compare them with the planned bytes per token)."""
        return sum(t.numel() * t.element_size() for kv in self._cross_kv.values()
                   for pair in kv for t in pair)
