"""Cross-attention memory of an encoder-decoder (BART, T5) in the scheduler's accounting.

A running request holds its encoder output's cross-attention K/V (worker/encoder_decoder.py):
a fixed size, set by its encoder prompt's length, from its first scheduling until it finishes,
is aborted or preempted. The worker sized that store from the KV cache budget
(worker/cross_attention_plan.py: num_tokens encoder tokens); the scheduler admits a request only
when its encoder tokens fit beside the running requests', and gives them back with its blocks.
"""

from __future__ import annotations


class CrossAttentionBudget:
    def __init__(self, num_tokens: int) -> None:
        if num_tokens < 1:
            raise ValueError(f"a cross-attention budget needs at least one token, got "
                             f"{num_tokens}")
        self.num_tokens = num_tokens
        self.held: dict[str, int] = {}
        """request id -> its encoder tokens, while it runs."""
        self.num_free = num_tokens

    def fits(self, num_tokens: int) -> bool:
        return num_tokens <= self.num_free

    def allocate(self, req_id: str, num_tokens: int) -> None:
        assert req_id not in self.held, f"{req_id!r} already holds cross-attention memory"
        if num_tokens > self.num_free:
            raise RuntimeError("cross-attention budget exceeded (check fits before admitting)")
        self.held[req_id] = num_tokens
        self.num_free -= num_tokens

    def free(self, req_id: str) -> None:
        """Give the request's tokens back (nothing if it holds none: never admitted)."""
        self.num_free += self.held.pop(req_id, 0)
