"""Turns one SchedulerOutput plus the runner's request states into the step's model inputs.

Tokens are packed request after request (no padding):

    input_ids   | r0 chunk (prefill, 5 tokens) | r1 (decode) | r2 (decode) |
    positions   |  7  8  9 10 11               | 40          | 3           |
    query_start | 0                            | 5           | 6           | 7
    seq_lens    | 12                           | 41          | 4           |

A request samples this step only if its chunk reaches its last known token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pagedllm.attention.backend import CommonAttentionMetadata
from pagedllm.core.sched.output import SchedulerOutput
from pagedllm.worker.request_state import CachedRequestState


@dataclass
class PromptLogprobsTarget:
    """Prompt positions of one request computed this step whose next token is a prompt token."""

    req_id: str
    start_position: int
    hidden_rows: list[int]
    next_token_ids: list[int]


@dataclass
class StepInputs:
    req_ids: list[str]
    """Scheduled requests, in packing order."""
    input_ids: torch.Tensor  # [T] long
    positions: torch.Tensor  # [T] long
    attn: CommonAttentionMetadata
    logits_indices: torch.Tensor  # [S] long: hidden rows whose next token is sampled
    sampling_req_ids: list[str]
    """Requests sampling this step, in the order of logits_indices."""
    prompt_logprobs: list[PromptLogprobsTarget]


def prepare_inputs(
    states: dict[str, CachedRequestState],
    scheduler_output: SchedulerOutput,
    req_ids: list[str],
    block_size: int,
    device: torch.device,
) -> StepInputs:
    num_sched = scheduler_output.num_scheduled_tokens
    counts = np.array([num_sched[r] for r in req_ids], dtype=np.int64)
    starts = np.array([states[r].num_computed_tokens for r in req_ids], dtype=np.int64)
    query_start = np.zeros(len(req_ids) + 1, dtype=np.int64)
    np.cumsum(counts, out=query_start[1:])
    seq_lens = starts + counts

    token_chunks, sampling_req_ids, logits_rows, prompt_targets = [], [], [], []
    for i, req_id in enumerate(req_ids):
        state = states[req_id]
        start, end = int(starts[i]), int(seq_lens[i])
        token_chunks.append(state.all_token_ids[start:end])
        if end >= state.num_tokens:
            sampling_req_ids.append(req_id)
            logits_rows.append(int(query_start[i + 1]) - 1)
        if state.sampling_params.prompt_logprobs is not None:
            target = _prompt_logprobs_target(state, start, end, int(query_start[i]))
            if target is not None:
                prompt_targets.append(target)

    # positions: for each request, start..end-1
    positions = np.repeat(starts - query_start[:-1], counts) + np.arange(query_start[-1])
    block_table = _block_table(states, req_ids)
    slot_mapping = _slot_mapping(block_table, positions, counts, block_size)
    input_ids = np.fromiter(
        (t for chunk in token_chunks for t in chunk), dtype=np.int64, count=int(query_start[-1])
    )
    attn = CommonAttentionMetadata(
        num_actual_tokens=int(query_start[-1]),
        query_start_loc=torch.from_numpy(query_start.astype(np.int32)).to(device),
        query_start_loc_cpu=query_start.tolist(),
        seq_lens=torch.from_numpy(seq_lens.astype(np.int32)).to(device),
        seq_lens_cpu=seq_lens.tolist(),
        block_table=torch.from_numpy(block_table).to(device),
        slot_mapping=torch.from_numpy(slot_mapping).to(device),
        max_query_len=int(counts.max()),
        max_seq_len=int(seq_lens.max()),
        block_size=block_size,
    )
    return StepInputs(
        req_ids=req_ids,
        input_ids=torch.from_numpy(input_ids).to(device),
        positions=torch.from_numpy(positions).to(device),
        attn=attn,
        logits_indices=torch.tensor(logits_rows, dtype=torch.long, device=device),
        sampling_req_ids=sampling_req_ids,
        prompt_logprobs=prompt_targets,
    )


def _block_table(states: dict[str, CachedRequestState], req_ids: list[str]) -> np.ndarray:
    width = max(len(states[r].block_ids) for r in req_ids)
    table = np.zeros((len(req_ids), width), dtype=np.int32)
    for i, req_id in enumerate(req_ids):
        blocks = states[req_id].block_ids
        table[i, : len(blocks)] = blocks
    return table


def _slot_mapping(
    block_table: np.ndarray, positions: np.ndarray, counts: np.ndarray, block_size: int
) -> np.ndarray:
    row_of_token = np.repeat(np.arange(len(counts)), counts)
    block_ids = block_table[row_of_token, positions // block_size].astype(np.int64)
    return block_ids * block_size + positions % block_size


def _prompt_logprobs_target(
    state: CachedRequestState, start: int, end: int, first_row: int
) -> PromptLogprobsTarget | None:
    # Position p predicts token p + 1; only prompt tokens are scored.
    last = min(end, state.num_prompt_tokens - 1)
    if last <= start:
        return None
    return PromptLogprobsTarget(
        req_id=state.req_id,
        start_position=start,
        hidden_rows=list(range(first_row, first_row + last - start)),
        next_token_ids=state.prompt_token_ids[start + 1 : last + 1],
    )
