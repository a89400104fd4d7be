"""InputBatch: the model runner's one record of the requests it holds, as dense per-row arrays
kept across steps.

A request takes a row when it joins (first scheduling, or resumed after a preemption, when the
scheduler resends its tokens) and gives it back when it leaves; the last row moves into the hole,
so rows 0..num_reqs-1 are always the held requests. Between join and leave only deltas arrive:
new block ids, the scheduler's num_computed_tokens, and the tokens the runner itself sampled. No
step does work proportional to a request's history.

    token_ids   row r | prompt ........ | output ... | (free up to max_model_len)
                      0        num_prompt_tokens    num_tokens
    num_computed_tokens[r] <= num_tokens[r]: tokens whose K/V are in the cache

Speculative decoding: a step's drafts are written past num_tokens (set_drafts), where the
step's input ids are read from; they are not counted in num_tokens, and the accepted ones are
appended like sampled tokens (append_token_lists), overwriting them.
"""

from __future__ import annotations

import numpy as np
import torch

from pagedllm.core.sched.output import NewRequestData
from pagedllm.sample.metadata import SamplingMetadata
from pagedllm.utils.math import cdiv
from pagedllm.worker.block_table import BlockTable
from pagedllm.worker.row_arrays import grown
from pagedllm.worker.sampling_state import SamplingState


class InputBatch:
    def __init__(
        self,
        max_num_reqs: int,
        max_model_len: int,
        block_size: int,
        vocab_size: int,
        device: torch.device,
        eos_token_ids: tuple[int, ...] = (),
    ) -> None:
        """max_num_reqs and max_model_len size the arrays up front; a row or a sequence beyond
        them grows the arrays (doubling), so they are sizes, not limits."""
        self.block_size = block_size
        self.req_ids: list[str] = []
        """Row -> request id; len(req_ids) is the number of rows held."""
        self.row_of: dict[str, int] = {}
        n = max_num_reqs
        self.token_ids = np.zeros((n, max_model_len), dtype=np.int32)  # [rows, max_model_len]
        self.num_tokens = np.zeros(n, dtype=np.int64)
        self.num_prompt_tokens = np.zeros(n, dtype=np.int64)
        self.num_computed_tokens = np.zeros(n, dtype=np.int64)
        self.wants_prompt_logprobs = np.zeros(n, dtype=bool)
        self.block_table = BlockTable(n, cdiv(max_model_len, block_size))
        self.sampling = SamplingState(n, vocab_size, device, eos_token_ids)

    _ARRAYS = ("num_tokens", "num_prompt_tokens", "num_computed_tokens", "wants_prompt_logprobs")

    @property
    def num_reqs(self) -> int:
        return len(self.req_ids)

    def add_request(self, new: NewRequestData) -> int:
        """Give the request the next free row; return it."""
        assert new.req_id not in self.row_of, new.req_id
        row = self.num_reqs
        if row == len(self.num_tokens):
            self._grow_rows(2 * row)
        self.req_ids.append(new.req_id)
        self.row_of[new.req_id] = row
        num_prompt, num_output = len(new.prompt_token_ids), len(new.output_token_ids)
        self._reserve_tokens(num_prompt + num_output)
        self.token_ids[row, :num_prompt] = new.prompt_token_ids
        self.token_ids[row, num_prompt : num_prompt + num_output] = new.output_token_ids
        self.num_prompt_tokens[row] = num_prompt
        self.num_tokens[row] = num_prompt + num_output
        self.num_computed_tokens[row] = new.num_computed_tokens
        self.wants_prompt_logprobs[row] = new.sampling_params.prompt_logprobs is not None
        self.block_table.add_row(row, new.block_ids)
        params = new.sampling_params
        self.sampling.add_row(row, params, new.prompt_token_ids, new.output_token_ids)
        return row

    def remove_request(self, req_id: str) -> None:
        """Free the request's row; the last row moves into it to keep the rows dense."""
        row = self.row_of.pop(req_id)
        self.sampling.remove_row(row)
        last = self.num_reqs - 1
        last_id = self.req_ids.pop()
        if row != last:
            self._move_row(last, row)
            self.req_ids[row] = last_id
            self.row_of[last_id] = row

    def update_request(self, req_id: str, new_block_ids: list[int], num_computed: int) -> None:
        row = self.row_of[req_id]
        self.block_table.append(row, new_block_ids)
        self.num_computed_tokens[row] = num_computed

    def set_tokens(self, req_id: str, start: int, token_ids: list[int]) -> None:
        """The request's tokens from `start` (pipeline stages that do not sample learn the
        sampled tokens this way)."""
        row = self.row_of[req_id]
        end = start + len(token_ids)
        self._reserve_tokens(end)
        self.token_ids[row, start:end] = token_ids
        self.num_tokens[row] = max(int(self.num_tokens[row]), end)

    def append_sampled(self, rows: np.ndarray, token_ids: torch.Tensor) -> None:
        """rows [S] each gain one token, token_ids [S] long."""
        if len(rows) == 0:
            return
        ends = self.num_tokens[rows]
        self._reserve_tokens(max(ends.tolist()) + 1)
        self.token_ids[rows, ends] = token_ids.cpu().numpy()
        self.num_tokens[rows] = ends + 1  # (rows are distinct)
        self.sampling.add_sampled(rows, token_ids)

    def sampling_metadata(self, rows: np.ndarray) -> SamplingMetadata:
        """The SamplingMetadata of a step sampling rows [S] (batch row i is persistent row
        rows[i]), before this step's tokens are appended."""
        num_tokens = self.num_tokens[rows]
        num_output = num_tokens - self.num_prompt_tokens[rows]
        return self.sampling.metadata(rows, num_output, self.token_ids, num_tokens)

    def set_drafts(self, req_id: str, drafts: list[int]) -> None:
        """The draft tokens this step verifies, after the request's last token."""
        row = self.row_of[req_id]
        end = int(self.num_tokens[row])
        self._reserve_tokens(end + len(drafts))
        self.token_ids[row, end : end + len(drafts)] = drafts

    def append_token_lists(self, rows: np.ndarray, token_lists: list[list[int]]) -> None:
        """rows [S] each gain their list of tokens (accepted drafts + one sampled)."""
        if len(rows) == 0:
            return
        self._reserve_tokens(int(self.num_tokens[rows].max()) + max(map(len, token_lists)))
        for row, tokens in zip(rows.tolist(), token_lists):
            end = int(self.num_tokens[row])
            self.token_ids[row, end : end + len(tokens)] = tokens
            self.num_tokens[row] = end + len(tokens)
        flat_rows = np.repeat(rows, [len(t) for t in token_lists])
        flat = torch.tensor([t for tokens in token_lists for t in tokens], dtype=torch.long)
        self.sampling.add_sampled(flat_rows, flat)

    def rows(self, req_ids: list[str]) -> np.ndarray:
        """[len(req_ids)] int64 rows of the requests."""
        row_of = self.row_of
        return np.array([row_of[r] for r in req_ids], dtype=np.int64)

    def token_ids_of(self, req_id: str) -> list[int]:
        row = self.row_of[req_id]
        return self.token_ids[row, : self.num_tokens[row]].tolist()

    def _move_row(self, src: int, dst: int) -> None:
        self.token_ids[dst, : self.num_tokens[src]] = self.token_ids[src, : self.num_tokens[src]]
        for name in self._ARRAYS:
            values = getattr(self, name)
            values[dst] = values[src]
        self.block_table.move_row(src, dst)
        self.sampling.move_row(src, dst)

    def _grow_rows(self, num_rows: int) -> None:
        self.token_ids = grown(self.token_ids, 0, num_rows)
        for name in self._ARRAYS:
            setattr(self, name, grown(getattr(self, name), 0, num_rows))
        self.block_table.grow_rows(num_rows)
        self.sampling.grow_rows(num_rows)

    def _reserve_tokens(self, length: int) -> None:
        self.token_ids = grown(self.token_ids, 1, length)
