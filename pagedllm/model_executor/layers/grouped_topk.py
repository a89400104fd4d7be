"""DeepSeek's expert routing: top-k restricted to the best expert groups (float32 throughout, as
transformers computes it). Each returns (weights [T, k] float32, expert ids [T, k] long) for
FusedMoE.forward_routed."""

from __future__ import annotations

import torch


def _group_mask(group_scores: torch.Tensor, topk_group: int, num_experts: int) -> torch.Tensor:
    """[T, n_group] group scores -> [T, E] bool: the experts of each token's topk_group best
    groups."""
    num_group = group_scores.shape[-1]
    best = torch.topk(group_scores, k=topk_group, dim=-1, sorted=False)[1]
    mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best, True)
    return mask.unsqueeze(-1).expand(-1, num_group, num_experts // num_group).reshape(-1,
                                                                                    num_experts)


def deepseek_v2_topk(
    router_logits: torch.Tensor,  # [T, E] float32
    top_k: int,
    topk_method: str,
    n_group: int | None,
    topk_group: int | None,
    renormalize: bool,
    routed_scaling_factor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax scores; "greedy": top-k of all experts; "group_limited_greedy": groups ranked by
    their best expert, the others' scores zeroed before the top-k."""
    scores = router_logits.float().softmax(dim=-1)
    num_experts = scores.shape[-1]
    if topk_method == "group_limited_greedy":
        assert n_group and topk_group, "group_limited_greedy needs n_group and topk_group"
        group_scores = scores.view(-1, n_group, num_experts // n_group).max(dim=-1).values
        scores = scores.masked_fill(~_group_mask(group_scores, topk_group, num_experts), 0.0)
    elif topk_method != "greedy":
        raise ValueError(f"DeepSeek-V2 topk_method {topk_method!r} is not supported "
                         f"('greedy', 'group_limited_greedy')")  # fmt: skip
    weights, ids = torch.topk(scores, k=top_k, dim=-1, sorted=False)
    if renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * routed_scaling_factor, ids


def deepseek_v3_topk(
    router_logits: torch.Tensor,  # [T, E] float32
    correction_bias: torch.Tensor,  # [E]
    top_k: int,
    n_group: int,
    topk_group: int,
    renormalize: bool,
    routed_scaling_factor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid scores; the choice (not the weights) adds e_score_correction_bias; groups ranked
    by the sum of their two best biased scores ("noaux_tc")."""
    scores = router_logits.float().sigmoid()
    num_experts = scores.shape[-1]
    for_choice = scores + correction_bias.float()
    group_scores = for_choice.view(-1, n_group, num_experts // n_group).topk(2, dim=-1)[0].sum(-1)
    for_choice = for_choice.masked_fill(~_group_mask(group_scores, topk_group, num_experts),
                                        float("-inf"))  # fmt: skip
    ids = torch.topk(for_choice, k=top_k, dim=-1, sorted=False)[1]
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * routed_scaling_factor, ids
