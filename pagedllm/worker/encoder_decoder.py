"""The runner's encoder-decoder step: each request's encoder run once, at its first scheduled
step, and its cross-attention K/V kept until it leaves the batch.

Where the cross-attention K/V live: a per-request store here, not paged blocks. They are written
once, read whole by every decode step, never shared between requests (no prefix caching for
encoder-decoders: the decoder's K/V depend on the encoder input) and never grow, so paging buys
nothing but the scheduler's accounting; their size is fixed by the encoder prompt (bounded by
max_model_len or the encoder's position table). A finished request's entry goes with it; so does
a preempted one's (preemption sends it in finished_req_ids), and the encoder runs again when it
is rescheduled, as its decoder K/V are recomputed too.
"""

from __future__ import annotations

import torch
from torch import nn

from pagedllm.forward_context import set_forward_context
from pagedllm.model_executor.layers.cross_attention import CrossAttentionBatch, CrossKV
from pagedllm.model_executor.layers.encoder_attention import EncoderAttentionMetadata


class EncoderDecoderState:
    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model = model
        self.device = device
        self._encoder_ids: dict[str, list[int]] = {}
        self._cross_kv: dict[str, CrossKV] = {}
        """request id -> its cross-attention K/V per decoder layer, while it runs."""
        self.num_encoder_runs = 0
        """Encoder inputs encoded so far (tests check: once per request and scheduling)."""

    @property
    def num_cached(self) -> int:
        """Requests whose cross-attention K/V are held (0 once every request left)."""
        return len(self._cross_kv)

    def add_request(self, req_id: str, encoder_ids: list[int] | None) -> None:
        # (the input processor gives every request of an encoder-decoder its encoder prompt)
        assert encoder_ids, f"request {req_id} has no encoder prompt"
        self._encoder_ids[req_id] = encoder_ids
        self._cross_kv.pop(req_id, None)

    def remove_request(self, req_id: str) -> None:
        self._encoder_ids.pop(req_id, None)
        self._cross_kv.pop(req_id, None)

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
        self.num_encoder_runs += len(req_ids)
