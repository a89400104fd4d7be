"""Turns one SchedulerOutput plus the InputBatch's rows into the step's model inputs, with
vectorised numpy over the scheduled rows only.

Tokens are packed request after request, in the scheduler's order (no padding):

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
from pagedllm.worker.block_table import slot_mapping
from pagedllm.worker.input_batch import InputBatch
from pagedllm.worker.row_arrays import positions_within


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
    rows: np.ndarray  # [R] int64: their InputBatch rows
    num_scheduled: np.ndarray  # [R] int64: tokens computed this step per request
    input_ids: torch.Tensor  # [T] long
    positions: torch.Tensor  # [T] long
    attn: CommonAttentionMetadata
    logits_indices: torch.Tensor  # [S] long: hidden rows whose next token is sampled
    sampling_req_ids: list[str]
    """Requests sampling this step, in the order of logits_indices."""
    sampling_rows: np.ndarray  # [S] int64: their InputBatch rows
    prompt_logprobs: list[PromptLogprobsTarget]
    num_drafts: np.ndarray  # [S] int64: drafts each sampling request verifies (0: none)
    """A request with k drafts has k + 1 consecutive logits_indices (its last k + 1 tokens)."""


def prepare_inputs(
    batch: InputBatch, scheduler_output: SchedulerOutput, req_ids: list[str], device: torch.device
) -> StepInputs:
    num_sched = scheduler_output.num_scheduled_tokens
    rows = batch.rows(req_ids)  # [R]
    counts = np.fromiter((num_sched[r] for r in req_ids), dtype=np.int64, count=len(req_ids))
    starts = batch.num_computed_tokens[rows]  # [R]
    query_start = np.zeros(len(req_ids) + 1, dtype=np.int64)
    np.cumsum(counts, out=query_start[1:])
    seq_lens = starts + counts
    num_tokens = int(query_start[-1])

    # positions: for each request, start..end-1
    positions = np.repeat(starts - query_start[:-1], counts) + np.arange(num_tokens)
    row_of_token = np.repeat(np.arange(len(req_ids)), counts)  # [T] index into rows
    input_ids = batch.token_ids[rows[row_of_token], positions].astype(np.int64)
    block_table = batch.block_table.view(rows)
    slots = slot_mapping(block_table, row_of_token, positions, batch.block_size)
    samples = np.flatnonzero(seq_lens >= batch.num_tokens[rows])  # [S] index into rows
    spec = scheduler_output.scheduled_spec_decode_tokens
    num_drafts = np.fromiter((len(spec.get(req_ids[i], ())) for i in samples.tolist()),
                             dtype=np.int64, count=len(samples))
    ends = query_start[1:][samples]  # [S]: one past each sampling request's last token
    num_rows = num_drafts + 1  # logits rows: the last token and each draft
    logits_indices = np.repeat(ends - num_rows, num_rows) + positions_within(num_rows)
    attn = attention_metadata(query_start, seq_lens, block_table, slots, batch.block_size,
                              device)
    return StepInputs(
        req_ids=req_ids,
        rows=rows,
        num_scheduled=counts,
        input_ids=torch.from_numpy(input_ids).to(device),
        positions=torch.from_numpy(positions).to(device),
        attn=attn,
        logits_indices=torch.from_numpy(logits_indices).to(device),
        sampling_req_ids=[req_ids[i] for i in samples.tolist()],
        sampling_rows=rows[samples],
        prompt_logprobs=_prompt_logprobs_targets(batch, req_ids, rows, starts, query_start),
        num_drafts=num_drafts,
    )


def attention_metadata(query_start: np.ndarray, seq_lens: np.ndarray, block_table: np.ndarray,
                       slots: np.ndarray, block_size: int,
                       device: torch.device) -> CommonAttentionMetadata:
    """The step's layout from numpy arrays: query_start [B + 1], seq_lens [B], block_table
    [B, W] int32, slots [T] int64 (every runner of the model builds it this way)."""
    counts = np.diff(query_start)
    return CommonAttentionMetadata(
        num_actual_tokens=int(query_start[-1]),
        query_start_loc=torch.from_numpy(query_start.astype(np.int32)).to(device),
        query_start_loc_cpu=query_start.tolist(),
        seq_lens=torch.from_numpy(seq_lens.astype(np.int32)).to(device),
        seq_lens_cpu=seq_lens.tolist(),
        block_table=torch.from_numpy(block_table).to(device),
        slot_mapping=torch.from_numpy(slots.astype(np.int64)).to(device),
        max_query_len=int(counts.max()),
        max_seq_len=int(seq_lens.max()),
        block_size=block_size,
    )


def _prompt_logprobs_targets(
    batch: InputBatch,
    req_ids: list[str],
    rows: np.ndarray,
    starts: np.ndarray,
    query_start: np.ndarray,
) -> list[PromptLogprobsTarget]:
    targets = []
    for i in np.flatnonzero(batch.wants_prompt_logprobs[rows]).tolist():
        row, start = int(rows[i]), int(starts[i])
        # Position p predicts token p + 1; only prompt tokens are scored.
        end = start + int(query_start[i + 1] - query_start[i])
        last = min(end, int(batch.num_prompt_tokens[row]) - 1)
        if last <= start:
            continue
        first = int(query_start[i])
        targets.append(
            PromptLogprobsTarget(
                req_id=req_ids[i],
                start_position=start,
                hidden_rows=list(range(first, first + last - start)),
                next_token_ids=batch.token_ids[row, start + 1 : last + 1].tolist(),
            )
        )
    return targets
