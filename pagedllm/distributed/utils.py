"""Integer arithmetic of splitting a model over ranks (no torch.distributed needed)."""

from __future__ import annotations


def divide(numerator: int, denominator: int) -> int:
    if numerator % denominator:
        raise ValueError(f"{numerator} is not divisible by tp_size={denominator}")
    return numerator // denominator


def kv_heads_per_rank(num_kv_heads: int, tp_size: int) -> int:
    """KV heads one rank holds: an equal share, or one head shared by tp / num_kv_heads ranks
    when there are fewer KV heads than ranks (each rank then keeps a copy of its group's head)."""
    if num_kv_heads >= tp_size:
        return divide(num_kv_heads, tp_size)
    if tp_size % num_kv_heads:
        raise ValueError(f"{num_kv_heads} KV heads cannot be shared by tp_size={tp_size}")
    return 1


def head_range(num_heads: int, tp_size: int, tp_rank: int) -> tuple[int, int]:
    """[start, end) of the heads rank `tp_rank` holds: its equal share, or its group's one head
    when there are fewer heads than ranks (QKVParallelLinear's split of q and of k/v)."""
    per_rank = kv_heads_per_rank(num_heads, tp_size)
    if num_heads >= tp_size:
        return tp_rank * per_rank, (tp_rank + 1) * per_rank
    head = tp_rank // (tp_size // num_heads)
    return head, head + 1
