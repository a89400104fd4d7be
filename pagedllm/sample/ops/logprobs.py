"""Logprobs of chosen tokens, their ranks and the top-k alternatives.

NOTE: like vLLM v1's default (logprobs_mode="raw_logprobs"), the sampler reports logprobs of
the raw model logits, before logit bias, min_tokens, penalties, temperature and top-k/p: they
describe the model, not the sampling transforms (so a greedy and a T=0.7 request see the same
numbers, and a token masked by top-k still has a finite logprob).
"""

from __future__ import annotations

import torch

from pagedllm.sample.outputs import LogprobsTensors


def compute_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """[B, V] float32 log-softmax (a new tensor; logits are left untouched)."""
    return logits.float().log_softmax(dim=-1)


def gather_logprobs(
    logprobs: torch.Tensor, num_logprobs: int, token_ids: torch.Tensor
) -> LogprobsTensors:
    """Column 0 = token_ids' logprobs, columns 1..num_logprobs = the top ones; ranks of
    token_ids = 1 + the number of tokens with a strictly greater logprob.

    logprobs: [B, V]; token_ids: [B] long.
    """
    token_ids = token_ids.long().unsqueeze(1)  # [B, 1]
    chosen = logprobs.gather(-1, token_ids)  # [B, 1]
    ranks = (logprobs > chosen).sum(dim=-1) + 1  # [B]
    if num_logprobs == 0:
        return LogprobsTensors(token_ids, chosen, ranks)
    top_logprobs, top_ids = logprobs.topk(num_logprobs, dim=-1)  # [B, k]
    return LogprobsTensors(
        token_ids=torch.cat([token_ids, top_ids], dim=1),
        logprobs=torch.cat([chosen, top_logprobs], dim=1),
        ranks=ranks,
    )


def compute_prompt_logprobs(
    logits: torch.Tensor, next_token_ids: torch.Tensor, num_logprobs: int
) -> LogprobsTensors:
    """Prompt logprobs: logits [N, V] at N prompt positions, next_token_ids [N] the prompt
    token that actually follows each position (the "chosen" token), top num_logprobs."""
    return gather_logprobs(compute_logprobs(logits), num_logprobs, next_token_ids)
