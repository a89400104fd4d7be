"""PoolingRunner: whole prompts of an encoder-only model -> one pooled vector each (an embedding,
or a classifier's logits), in ONE forward pass over the packed batch (bidirectional attention
within each prompt, no KV cache)."""

from __future__ import annotations

import torch
from torch import nn

from pagedllm.core.sched.output import ModelRunnerOutput, PoolingSchedulerOutput
from pagedllm.forward_context import set_forward_context
from pagedllm.model_executor.layers.encoder_attention import EncoderAttentionMetadata


class PoolingRunner:
    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model = model
        self.device = device

    def execute_model(self, batch: PoolingSchedulerOutput) -> ModelRunnerOutput:
        """The raw pooled hidden state of each prompt (float32) as pooler_output."""
        req_ids = list(batch.prompts)
        if hasattr(self.model, "embed_prompt"):  # a dual encoder (CLIP, SigLIP): per prompt
            return ModelRunnerOutput(req_ids=req_ids, sampled_token_ids={}, pooler_output={
                r: self._embed_prompt(batch.prompts[r], batch.mm_features.get(r))
                for r in req_ids})
        token_types = None
        if batch.token_type_ids:  # a text pair for a cross-encoder; the other prompts: segment 0
            token_types = [batch.token_type_ids.get(r) or [0] * len(batch.prompts[r])
                           for r in req_ids]
        pooled = self._embed(list(batch.prompts.values()), token_types)
        return ModelRunnerOutput(req_ids=req_ids, sampled_token_ids={},
                                 pooler_output=dict(zip(req_ids, pooled)))

    @torch.inference_mode()
    def _embed_prompt(self, token_ids: list[int], features: list | None) -> list[float]:
        return self.model.embed_prompt(token_ids, features).float().tolist()

    @torch.inference_mode()
    def _embed(self, prompts: list[list[int]],
               token_types: list[list[int]] | None = None) -> list[list[float]]:
        seq_lens = [len(p) for p in prompts]
        input_ids = torch.tensor([t for p in prompts for t in p], dtype=torch.long,
                                 device=self.device)  # [T]
        positions = torch.cat([torch.arange(n, device=self.device) for n in seq_lens])  # [T]
        metadata = EncoderAttentionMetadata.build(seq_lens, self.device)
        kwargs = {}
        if token_types is not None:
            kwargs["token_type_ids"] = torch.tensor([t for p in token_types for t in p],
                                                    dtype=torch.long, device=self.device)  # [T]
        with set_forward_context(metadata):
            hidden = self.model(input_ids, positions, **kwargs)  # [T, hidden]
        return self.model.pooler(hidden, metadata.query_start_loc).tolist()
