"""A hand-rolled paged runner for model tests: per-request contiguous blocks, torch_ref backend."""

from __future__ import annotations

import torch

from pagedllm.attention.backend import CommonAttentionMetadata
from pagedllm.attention.backends.torch_ref import TorchRefBackend
from pagedllm.forward_context import set_forward_context
from pagedllm.model_executor.layers.attention import attention_layers
from pagedllm.model_executor.layers.mla_attention import MLAAttention


class PagedRunner:
    """Binds a small KV cache to `model`; request i owns blocks [i*B, (i+1)*B)."""

    def __init__(self, model, num_reqs: int = 4, block_size: int = 4, blocks_per_req: int = 64):
        self.model = model
        self.block_size = block_size
        self.blocks_per_req = blocks_per_req
        self.computed: dict[int, int] = {}  # request index -> tokens already in its cache
        layers = attention_layers(model)
        num_blocks = num_reqs * blocks_per_req
        for layer in layers:
            shape = TorchRefBackend.get_kv_cache_shape(
                num_blocks, block_size, layer.num_kv_heads, layer.head_size
            )
            if isinstance(layer, MLAAttention):  # one latent per token, not K and V
                shape = (num_blocks, block_size, layer.head_size)
            layer.bind(TorchRefBackend, torch.zeros(shape))

    @torch.inference_mode()
    def step(self, chunks: dict[int, list[int]]) -> list[torch.Tensor]:
        """Run one step over {request index: new token ids}; returns each request's float32
        logits for its new tokens ([len(chunk), vocab])."""
        reqs = list(chunks)
        input_ids, positions, slots, query_start, seq_lens = [], [], [], [0], []
        for r in reqs:
            start, tokens = self.computed.get(r, 0), chunks[r]
            pos = list(range(start, start + len(tokens)))
            input_ids += tokens
            positions += pos
            slots += [(r * self.blocks_per_req + p // self.block_size) * self.block_size
                      + p % self.block_size for p in pos]  # fmt: skip
            query_start.append(query_start[-1] + len(tokens))
            seq_lens.append(start + len(tokens))
            self.computed[r] = start + len(tokens)
        block_table = torch.tensor(
            [[r * self.blocks_per_req + b for b in range(self.blocks_per_req)] for r in reqs],
            dtype=torch.int32,
        )
        md = CommonAttentionMetadata(
            num_actual_tokens=len(input_ids),
            query_start_loc=torch.tensor(query_start, dtype=torch.int32),
            query_start_loc_cpu=query_start,
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            seq_lens_cpu=seq_lens,
            block_table=block_table,
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            max_query_len=max(len(c) for c in chunks.values()),
            max_seq_len=max(seq_lens),
            block_size=self.block_size,
        )
        with set_forward_context(md):
            hidden = self.model(torch.tensor(input_ids), torch.tensor(positions))
        logits = self.model.compute_logits(hidden)
        return [logits[query_start[i] : query_start[i + 1]] for i in range(len(reqs))]
