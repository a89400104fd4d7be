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

import operator
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
    any_drafts: bool = False
    """num_drafts.any(), as a flag (the runner asks every step)."""
    logits_all_rows: bool = False
    """logits_indices is every hidden row in order (a decode step where every request samples):
    the LM head takes the hidden states as they are, no gathered copy."""


def prepare_inputs(
    batch: InputBatch, scheduler_output: SchedulerOutput, req_ids: list[str], device: torch.device
) -> StepInputs:
    num_sched = scheduler_output.num_scheduled_tokens
    rows = batch.rows(req_ids)  # [R]
    starts = batch.num_computed_tokens[rows]  # [R]
    count_list = [num_sched[r] for r in req_ids]
    num_reqs = len(req_ids)
    if min(count_list) == 1 and sum(count_list) == num_reqs:
        # a decode step (every request computes one token; a draft would add more): the general
        # packing below reduces to these (the same arrays, a few numpy calls fewer per step)
        counts = np.ones(num_reqs, dtype=np.int64)
        query_start = np.arange(num_reqs + 1)
        row_of_token = query_start[:-1]
        positions = starts
    else:
        counts = np.array(count_list, dtype=np.int64)
        query_start = np.zeros(num_reqs + 1, dtype=np.int64)
        np.cumsum(counts, out=query_start[1:])
        # positions: for each request, start..end-1
        positions = np.repeat(starts - query_start[:-1], counts) + np.arange(int(query_start[-1]))
        row_of_token = np.repeat(np.arange(num_reqs), counts)  # [T] index into rows
    seq_lens = starts + counts
    input_ids = batch.token_ids[rows[row_of_token], positions].astype(np.int64)
    block_table = batch.block_table.view(rows)
    slots = slot_mapping(block_table, row_of_token, positions, batch.block_size)
    samples = np.flatnonzero(seq_lens >= batch.num_tokens[rows])  # [S] index into rows
    ends = query_start[1:][samples]  # [S]: one past each sampling request's last token
    spec = scheduler_output.scheduled_spec_decode_tokens
    if spec:
        num_drafts = np.fromiter((len(spec.get(req_ids[i], ())) for i in samples.tolist()),
                                 dtype=np.int64, count=len(samples))
        num_rows = num_drafts + 1  # logits rows: the last token and each draft
        logits_indices = np.repeat(ends - num_rows, num_rows) + positions_within(num_rows)
    else:  # (the same arrays when no request has drafts)
        num_drafts = np.zeros(len(samples), dtype=np.int64)
        logits_indices = ends - 1
    attn = attention_metadata(query_start, seq_lens, block_table, slots, batch.block_size,
                              device)
    return StepInputs(
        req_ids=req_ids,
        rows=rows,
        num_scheduled=counts,
        input_ids=_tensor(input_ids, device),
        positions=_tensor(positions, device),
        attn=attn,
        logits_indices=_tensor(logits_indices, device),
        sampling_req_ids=[req_ids[i] for i in samples.tolist()],
        sampling_rows=rows[samples],
        prompt_logprobs=_prompt_logprobs_targets(batch, req_ids, rows, starts, query_start),
        num_drafts=num_drafts,
        any_drafts=bool(spec) and bool(num_drafts.any()),
        # (the rows are increasing and below the token count: as many as tokens means all)
        logits_all_rows=len(logits_indices) == len(positions),
    )


def attention_metadata(query_start: np.ndarray, seq_lens: np.ndarray, block_table: np.ndarray,
                       slots: np.ndarray, block_size: int,
                       device: torch.device) -> CommonAttentionMetadata:
    """The step's layout from numpy arrays: query_start [B + 1], seq_lens [B], block_table
    [B, W] int32, slots [T] int64 (every runner of the model builds it this way)."""
    query_start_cpu, seq_lens_cpu = query_start.tolist(), seq_lens.tolist()
    # (the maxima of lists: a step has few requests, and numpy's reductions cost more on them)
    return CommonAttentionMetadata(
        num_actual_tokens=query_start_cpu[-1],
        query_start_loc=_tensor(query_start.astype(np.int32), device),
        query_start_loc_cpu=query_start_cpu,
        seq_lens=_tensor(seq_lens.astype(np.int32), device),
        seq_lens_cpu=seq_lens_cpu,
        block_table=_tensor(block_table, device),
        slot_mapping=_tensor(slots.astype(np.int64), device),
        max_query_len=max(map(operator.sub, query_start_cpu[1:], query_start_cpu)),
        max_seq_len=max(seq_lens_cpu),
        block_size=block_size,
    )


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """The array as a tensor on `device` (sharing its memory on the CPU, where .to is a no-op
    that still costs its call)."""
    tensor = torch.from_numpy(array)
    return tensor if getattr(device, "type", device) == "cpu" else tensor.to(device)


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
