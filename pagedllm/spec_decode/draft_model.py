"""Draft-model speculative decoding (method "draft_model"): a smaller model with the target's
tokenizer drafts each request's next tokens, one at a time, in the worker process.

The draft model has its own paged KV cache, a small pool of blocks it hands out itself, and
knows per request how many of the request's tokens it holds (`num_cached`). Each step, for the
requests the Drafter lets draft, with k_r tokens each:

1. one batched forward over each request's tokens the draft cache lacks (the first time the
   whole prompt, then the tokens accepted since), whose last row gives draft 1;
2. k - 1 batched one-token forwards, each feeding the previous draft.

Greedy requests draft the draft model's argmax; random ones sample draft j from q_j, the draft
model's distribution after the request's own temperature, top-k, top-p and min-p (the closer q
is to the target's p, the more is accepted), and q_j goes with the drafts to the verification
(sample/rejection_sampler.py: accept min(1, p/q), resample max(p - q, 0)). Seeded requests draw
draft j with the noise the target will use at that position (sample/ops/seeded.py): the target
then accepts it iff its own draw picks the same token, which a good draft model's usually does.
The drafts fed in step 2 stay in the cache: the next step keeps those the target accepted and
recomputes the rest (their slots are simply overwritten), so a rejection needs no rollback of
its own.

Drafts only ever change how many tokens a step emits, never which: a stale or missing draft
cache costs acceptance, not correctness (tests/spec_decode/test_draft_model.py asserts both).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from pagedllm.attention.backend import AttentionBackend
from pagedllm.attention.selector import AttentionRequirements, select_attn_backend
from pagedllm.config import EngineConfig, ModelConfig
from pagedllm.config.speculative import SpeculativeConfig
from pagedllm.forward_context import set_forward_context
from pagedllm.logger import init_logger
from pagedllm.model_executor.layers.attention import attention_layers
from pagedllm.model_executor.model_loader import get_model
from pagedllm.model_executor.model_loader.gguf import release_gguf_readers
from pagedllm.sample.ops.seeded import draw_seed
from pagedllm.sample.ops.topk_topp import nucleus_candidates
from pagedllm.sample.sampler import exponential_race
from pagedllm.sampling_params import SamplingParams
from pagedllm.spec_decode.calibration import forward_seconds
from pagedllm.spec_decode.drafter import Drafter
from pagedllm.utils.math import cdiv
from pagedllm.utils.memory import format_bytes
from pagedllm.worker.execution_strategy import select_execution_strategy
from pagedllm.worker.kv_cache_alloc import (
    allocate_kv_caches,
    kv_cache_torch_dtype,
    plan_kv_cache,
)
from pagedllm.worker.step_inputs import attention_metadata

logger = init_logger(__name__)


@dataclass
class DraftCacheState:
    """One request's tokens in the draft model's cache."""

    block_ids: list[int] = field(default_factory=list)
    num_cached: int = 0
    """Leading tokens of the request whose K/V the draft cache holds for sure."""
    fed_drafts: list[int] = field(default_factory=list)
    """Drafts written after them (positions num_cached, ...): valid as far as accepted."""


@dataclass(frozen=True)
class DraftRequest:
    req_id: str
    token_ids: np.ndarray  # [n]: the request's tokens so far
    num_drafts: int
    temperature: float
    """0: greedy (argmax drafts); else drafts are samples of softmax(logits / temperature),
    truncated like the request's own sampling:"""
    top_k: int | None = None
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    """A seeded request's drafts take the target's noise at their positions."""

    @classmethod
    def of(cls, req_id: str, token_ids: np.ndarray, num_drafts: int,
           params: SamplingParams) -> DraftRequest:
        if params.is_greedy:
            return cls(req_id, token_ids, num_drafts, 0.0)
        return cls(req_id, token_ids, num_drafts, params.temperature, params.top_k,
                   params.top_p, params.min_p, params.seed)


@dataclass
class Draft:
    token_ids: list[int]
    probs: torch.Tensor | None
    """[len(token_ids), V] float32: the distribution each draft was sampled from (None:
    greedy argmax drafts, verified as one-hot)."""


class DraftModelProposer:
    """The draft model, its KV cache and block pool, and each request's place in it."""

    def __init__(self, model: nn.Module, backend: type[AttentionBackend], num_blocks: int,
                 block_size: int, max_model_len: int, device: torch.device) -> None:
        self.model = model
        self.metadata_builder = backend.get_builder_cls()()
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.device = device
        self.free_blocks = list(range(num_blocks - 1, -1, -1))  # popped from the end: 0 first
        self.states: dict[str, DraftCacheState] = {}

    def add_request(self, req_id: str) -> None:
        self.remove_request(req_id)
        self.states[req_id] = DraftCacheState()

    def remove_request(self, req_id: str) -> None:
        state = self.states.pop(req_id, None)
        if state is not None:
            self.free_blocks.extend(reversed(state.block_ids))

    def propose(self, requests: list[DraftRequest]) -> dict[str, Draft]:
        """Drafts of the requests whose tokens fit in the draft cache (the others skip)."""
        ready = []
        for request in requests:
            num_drafts = self._sync(request)
            if num_drafts:
                ready.append(replace(request, num_drafts=num_drafts))
        if not ready:
            return {}
        states = [self.states[r.req_id] for r in ready]
        # 1. the tokens each request's draft cache lacks; the last row of each gives draft 1
        starts = np.array([s.num_cached for s in states], dtype=np.int64)
        ends = np.array([len(r.token_ids) for r in ready], dtype=np.int64)
        input_ids = np.concatenate([r.token_ids[s:e] for r, s, e in zip(ready, starts, ends)])
        logits = self._forward(states, input_ids, starts, ends - starts)
        drafted: list[list[int]] = [[] for _ in ready]
        probs: list[list[torch.Tensor]] = [[] for _ in ready]
        active = list(range(len(ready)))
        for j in range(max(r.num_drafts for r in ready)):
            tokens = self._choose(logits, [ready[i] for i in active],
                                  [probs[i] for i in active], j)
            for i, token in zip(active, tokens):
                drafted[i].append(token)
            active = [i for i in active if ready[i].num_drafts > j + 1]
            if not active:
                break
            # 2. feed draft j + 1 of the requests that want more (position n + j)
            feed = np.array([drafted[i][-1] for i in active], dtype=np.int64)
            logits = self._forward([states[i] for i in active], feed, ends[active] + j,
                                   np.ones(len(active), dtype=np.int64))
        out = {}
        for i, (request, state) in enumerate(zip(ready, states)):
            state.num_cached = len(request.token_ids)
            state.fed_drafts = drafted[i][:-1]
            out[request.req_id] = Draft(drafted[i], torch.stack(probs[i]) if probs[i] else None)
        return out

    def _sync(self, request: DraftRequest) -> int:
        """Bring the request's cache state up to its tokens (keep the fed drafts it accepted)
        and give it the blocks this step needs; the drafts it makes (0: the pool has too few
        blocks, or the request is at max_model_len)."""
        state = self.states[request.req_id]
        tokens = request.token_ids
        n = len(tokens)
        accepted = 0
        for draft, token in zip(state.fed_drafts, tokens[state.num_cached:].tolist()):
            if draft != token:
                break
            accepted += 1
        # at least the last token is fed: its row gives the first draft
        state.num_cached = min(state.num_cached + accepted, n - 1)
        state.fed_drafts = []
        num_drafts = min(request.num_drafts, self.max_model_len - n)
        if num_drafts < 1:
            return 0
        needed = cdiv(n + num_drafts - 1, self.block_size) - len(state.block_ids)
        if needed > len(self.free_blocks):
            return 0
        for _ in range(needed):
            state.block_ids.append(self.free_blocks.pop())
        return num_drafts

    def _forward(self, states: list[DraftCacheState], input_ids: np.ndarray, starts: np.ndarray,
                 counts: np.ndarray) -> torch.Tensor:
        """Run counts[i] tokens of request i from position starts[i]; the logits [B, V] of
        each request's last token."""
        query_start = np.zeros(len(states) + 1, dtype=np.int64)
        np.cumsum(counts, out=query_start[1:])
        num_tokens = int(query_start[-1])
        positions = np.repeat(starts - query_start[:-1], counts) + np.arange(num_tokens)
        seq_lens = starts + counts
        width = max(len(s.block_ids) for s in states)
        block_table = np.zeros((len(states), width), dtype=np.int32)
        for i, state in enumerate(states):
            block_table[i, : len(state.block_ids)] = state.block_ids
        row_of_token = np.repeat(np.arange(len(states)), counts)
        slots = (block_table[row_of_token, positions // self.block_size].astype(np.int64)
                 * self.block_size + positions % self.block_size)
        device = self.device
        common = attention_metadata(query_start, seq_lens, block_table, slots, self.block_size,
                                    device)
        last = torch.from_numpy(query_start[1:] - 1).to(device)
        with set_forward_context(self.metadata_builder.build(common)):
            hidden = self.model(torch.from_numpy(input_ids).to(device),
                                torch.from_numpy(positions).to(device))
            return self.model.compute_logits(hidden[last]).float()

    def _choose(self, logits: torch.Tensor, requests: list[DraftRequest],
                probs: list[list[torch.Tensor]], position: int) -> list[int]:
        """Each row's draft (the draft for token `position` of its request's tokens + drafts, 0
        being the first draft): the argmax (greedy requests) or a sample of the request's q,
        which is appended to its probs."""
        tokens = logits.argmax(dim=1)
        random = [i for i, r in enumerate(requests) if r.temperature > 0]
        if not random:
            return tokens.tolist()
        device, vocab = logits.device, logits.shape[1]
        chosen = [requests[i] for i in random]
        rows = torch.tensor(random, device=device)
        temperature = torch.tensor([r.temperature for r in chosen], device=device)
        cands = nucleus_candidates(
            logits[rows] / temperature.unsqueeze(1),
            _unless_all([min(r.top_k or vocab, vocab) for r in chosen], vocab, device),
            _unless_all([r.top_p for r in chosen], 1.0, device),
            _unless_all([r.min_p for r in chosen], 0.0, device))
        # q over the vocabulary (scatter_add: dropped candidates, weight 0, may repeat ids)
        q = torch.zeros(len(random), vocab, device=device).scatter_add_(
            1, cands.token_ids, cands.weights / cands.weights.sum(dim=1, keepdim=True))
        seeds = {j: draw_seed(r.seed, len(r.token_ids) + position)
                 for j, r in enumerate(chosen) if r.seed is not None}
        picked = exponential_race(cands.weights.clone(), cands.num_kept, seeds, cands.token_ids,
                                  vocab)
        tokens[rows] = cands.token_ids.gather(1, picked.unsqueeze(1)).squeeze(1)
        for i, row in zip(random, q):
            probs[i].append(row)
        return tokens.tolist()


def _unless_all(values: list, off: float, device: torch.device) -> torch.Tensor | None:
    """The per-row parameter tensor, or None when every row has the transform off."""
    if all(v == off for v in values):
        return None
    return torch.tensor(values, device=device)


class DraftModelDrafter(Drafter):
    """The Drafter's rules (who drafts, how many) with a draft model proposing the tokens."""

    def __init__(self, config: SpeculativeConfig, proposer: DraftModelProposer) -> None:
        super().__init__(config)  # no model-free proposer for this method
        self.model_proposer = proposer
        self.params: dict[str, SamplingParams] = {}
        self.drafts: dict[str, Draft] = {}
        """The last proposal per request, read back when its drafts are verified."""

    def add_request(self, req_id: str, params: SamplingParams) -> None:
        super().add_request(req_id, params)
        if req_id in self.states:
            self.params[req_id] = params
            self.model_proposer.add_request(req_id)

    def remove_request(self, req_id: str) -> None:
        super().remove_request(req_id)
        self.params.pop(req_id, None)
        self.drafts.pop(req_id, None)
        self.model_proposer.remove_request(req_id)

    def propose(self, req_ids: list[str], token_ids: np.ndarray, rows: np.ndarray,
                num_tokens: np.ndarray, batch_size: int) -> dict[str, list[int]]:
        self.drafts = {}
        requests = [DraftRequest.of(req_id, token_ids[row, :length], k, self.params[req_id])
                    for req_id, row, length, k in self.draft_lengths(req_ids, rows, num_tokens,
                                                                    batch_size)]
        self.drafts = self.model_proposer.propose(requests)
        return {req_id: draft.token_ids for req_id, draft in self.drafts.items()}

    def measure_draft_seconds(self) -> float:
        """The draft model's one-token forward (before any request runs)."""
        proposer = self.model_proposer
        return forward_seconds(proposer.model, proposer.metadata_builder, proposer.block_size,
                               proposer.device, 1)

    def draft_probs(self, req_ids: list[str], drafts: list[list[int]], vocab_size: int,
                    device: torch.device) -> torch.Tensor:
        """[sum(len(d) + 1), V]: the q of each verified draft, request after request, a zero
        row for each bonus row. A draft without its distribution (greedy, or not what was
        proposed) gets a one-hot q, which verification treats exactly as a one-hot draft."""
        out = torch.zeros(sum(len(d) + 1 for d in drafts), vocab_size, device=device)
        row = 0
        for req_id, tokens in zip(req_ids, drafts):
            proposal = self.drafts.get(req_id)
            if (proposal is not None and proposal.probs is not None
                    and proposal.token_ids[: len(tokens)] == list(tokens)):
                out[row : row + len(tokens)] = proposal.probs[: len(tokens)]
            else:
                out[torch.arange(row, row + len(tokens)), torch.tensor(tokens)] = 1.0
            row += len(tokens) + 1
        return out


def build_draft_model_drafter(config: EngineConfig, device: torch.device,
                              target_num_tokens: int) -> DraftModelDrafter:
    """Load the draft model with our loader, give it a KV cache of its own and bind it.

    The cache holds at most as many tokens as the target's, and no more than max_model_len for
    each request that may draft at once (fewer than disable_by_batch_size)."""
    spec = config.speculative
    assert spec is not None and spec.draft_model_config is not None
    draft_config: ModelConfig = spec.draft_model_config
    model = get_model(draft_config, device)
    release_gguf_readers()
    layers = attention_layers(model)
    needs = AttentionRequirements(
        device.type, getattr(torch, draft_config.dtype),
        kv_cache_torch_dtype(draft_config, config.cache),
        frozenset(layer.head_size for layer in layers),
    )  # fmt: skip
    backend = select_attn_backend(config.device.attention_backend, needs).backend
    block_size = config.cache.block_size
    drafting = config.scheduler.max_num_seqs
    if spec.disable_by_batch_size is not None:
        drafting = min(drafting, max(1, spec.disable_by_batch_size - 1))
    num_tokens = min(target_num_tokens, drafting * config.model.max_model_len)
    num_blocks = max(cdiv(num_tokens, block_size), cdiv(config.model.max_model_len, block_size))
    layout = plan_kv_cache(
        draft_config, replace(config.cache, num_gpu_blocks_override=num_blocks), device)
    kv_caches = allocate_kv_caches(layout, draft_config, config.cache, backend, device,
                                   len(layers))
    for layer, cache in zip(layers, kv_caches):
        layer.bind(backend, cache)
    logger.info("draft model %s: KV cache of %d blocks x %d tokens, %s (%s backend)",
                draft_config.model, num_blocks, block_size, format_bytes(layout.total_bytes),
                backend.name)
    select_execution_strategy(model, draft_config.enforce_eager)
    proposer = DraftModelProposer(model, backend, num_blocks, block_size,
                                  config.model.max_model_len, device)
    return DraftModelDrafter(spec, proposer)
