"""What the sampler returns: sampled token ids and, when requested, logprobs tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pagedllm.core.sched.output import LogprobsLists


@dataclass
class LogprobsTensors:
    """Logprobs of B positions; column 0 is the chosen token, columns 1..k the top-k.

    For sampling, row i is batch row i (one request); for prompt logprobs, row i is a prompt
    position of one request and the chosen token is the actual next prompt token.
    """

    token_ids: torch.Tensor  # [B, k + 1] long
    logprobs: torch.Tensor  # [B, k + 1] float32
    ranks: torch.Tensor  # [B] long: 1 + number of tokens strictly more likely than the chosen

    def to_lists(self, num_logprobs: Sequence[int | None]) -> list[LogprobsLists | None]:
        """One single-position LogprobsLists per batch row, trimmed to that row's own top-k;
        None for rows that did not ask for logprobs."""
        token_ids, logprobs = self.token_ids.tolist(), self.logprobs.tolist()
        ranks = self.ranks.tolist()
        assert len(num_logprobs) == len(ranks), (len(num_logprobs), len(ranks))
        lists: list[LogprobsLists | None] = []
        for i, num in enumerate(num_logprobs):
            if num is None:
                lists.append(None)
                continue
            lists.append(
                LogprobsLists([token_ids[i][: num + 1]], [logprobs[i][: num + 1]], [ranks[i]])
            )
        return lists

    def to_positions_lists(self, start_position: int = 0) -> LogprobsLists:
        """All rows as consecutive positions of one request (prompt logprobs)."""
        return LogprobsLists(
            token_ids=self.token_ids.tolist(),
            logprobs=self.logprobs.tolist(),
            ranks=self.ranks.tolist(),
            start_position=start_position,
        )


@dataclass
class SamplerOutput:
    sampled_token_ids: torch.Tensor  # [B] long
    logprobs: LogprobsTensors | None
    """Set when any row asked for logprobs; k = the largest request in the batch."""
