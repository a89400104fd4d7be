"""prepare_inputs against a per-token reference: over random batches of decodes, prefill chunks
and draft-verifying requests (and steps of decodes only, which take prepare_inputs' shortcut),
every array of the step (input ids, positions, slots, the attention layout, the logits rows,
who samples) equals one built token by token in plain Python."""

from __future__ import annotations

import random

import numpy as np
import torch

from pagedllm.core.sched.output import CachedRequestData, SchedulerOutput
from pagedllm.sampling_params import SamplingParams
from pagedllm.worker.input_batch import InputBatch
from pagedllm.worker.step_inputs import prepare_inputs
from tests.worker.test_input_batch import EOS, VOCAB, RefRequest, join

BLOCK = 4


def _reference(batch: InputBatch, so: SchedulerOutput, req_ids: list[str]) -> dict:
    ref: dict[str, list] = {k: [] for k in ("input_ids", "positions", "slots", "query_start",
                                            "seq_lens", "logits", "sampling", "drafts")}
    ref["query_start"].append(0)
    for req_id in req_ids:
        row, n = batch.row_of[req_id], so.num_scheduled_tokens[req_id]
        start = int(batch.num_computed_tokens[row])
        first = ref["query_start"][-1]
        for p in range(start, start + n):
            ref["positions"].append(p)
            ref["input_ids"].append(int(batch.token_ids[row, p]))
            ref["slots"].append(int(batch.block_table.table[row, p // BLOCK]) * BLOCK + p % BLOCK)
        ref["query_start"].append(first + n)
        ref["seq_lens"].append(start + n)
        if start + n >= batch.num_tokens[row]:  # reaches its last token (+ its drafts)
            k = len(so.scheduled_spec_decode_tokens.get(req_id, []))
            ref["sampling"].append(req_id)
            ref["drafts"].append(k)
            ref["logits"] += list(range(first + n - k - 1, first + n))
    return ref


def _check(batch: InputBatch, so: SchedulerOutput, req_ids: list[str]) -> None:
    got = prepare_inputs(batch, so, req_ids, torch.device("cpu"))
    ref = _reference(batch, so, req_ids)
    longs = {"input_ids": got.input_ids, "positions": got.positions,
             "slots": got.attn.slot_mapping, "logits": got.logits_indices}  # fmt: skip
    for name, tensor in longs.items():
        assert tensor.dtype == torch.long and tensor.tolist() == ref[name], name
    attn = got.attn
    assert attn.query_start_loc.dtype == attn.seq_lens.dtype == torch.int32
    assert attn.query_start_loc.tolist() == attn.query_start_loc_cpu == ref["query_start"]
    assert attn.seq_lens.tolist() == attn.seq_lens_cpu == ref["seq_lens"]
    assert attn.num_actual_tokens == ref["query_start"][-1]
    assert attn.max_query_len == max(so.num_scheduled_tokens[r] for r in req_ids)
    assert attn.max_seq_len == max(ref["seq_lens"])
    rows = [batch.row_of[r] for r in req_ids]
    width = max(int(batch.block_table.num_blocks[r]) for r in rows)
    assert attn.block_table.dtype == torch.int32
    assert torch.equal(attn.block_table, torch.from_numpy(batch.block_table.table[rows, :width]))
    assert got.req_ids == req_ids and got.rows.tolist() == rows
    assert got.num_scheduled.dtype == np.int64
    assert got.num_scheduled.tolist() == [so.num_scheduled_tokens[r] for r in req_ids]
    assert got.sampling_req_ids == ref["sampling"]
    assert got.sampling_rows.tolist() == [batch.row_of[r] for r in ref["sampling"]]
    assert got.num_drafts.dtype == np.int64 and got.num_drafts.tolist() == ref["drafts"]
    assert got.any_drafts == any(ref["drafts"])
    assert got.logits_all_rows == (ref["logits"] == list(range(len(ref["positions"]))))


def test_prepare_inputs_matches_per_token_reference():
    rng = random.Random(5)
    decode_steps = mixed_steps = 0
    for trial in range(60):
        batch = InputBatch(2, 8, BLOCK, VOCAB, torch.device("cpu"), EOS)
        decode_only = trial % 2 == 0
        req_ids = [f"t{trial}r{i}" for i in range(rng.randint(1, 6))]
        num_sched, spec = {}, {}
        for req_id in req_ids:
            prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 20))]
            output = [rng.randrange(VOCAB) for _ in range(rng.randint(0, 5))]
            total = len(prompt) + len(output)
            if decode_only or rng.random() < 0.4:  # a decode: its last token
                computed, n = total - 1, 1
            elif rng.random() < 0.5:  # a prefill chunk, the last or not
                computed = rng.randrange(0, total)
                n = rng.randint(1, total - computed)
            else:  # verifies k drafts after its last token
                computed, k = total - 1, rng.randint(1, 3)
                spec[req_id] = [rng.randrange(VOCAB) for _ in range(k)]
                n = 1 + k
            blocks = [rng.randrange(1, 99) for _ in range(-(-(computed + n) // BLOCK))]
            join(batch, req_id, RefRequest(SamplingParams(temperature=0.0), prompt, output,
                                           blocks, computed))  # fmt: skip
            if req_id in spec:
                batch.set_drafts(req_id, spec[req_id])
            num_sched[req_id] = n
        rng.shuffle(req_ids)
        so = SchedulerOutput([], CachedRequestData(), num_sched, sum(num_sched.values()),
                             scheduled_spec_decode_tokens=spec)  # fmt: skip
        _check(batch, so, req_ids)
        decode_steps += decode_only
        mixed_steps += bool(spec) and any(n > 1 for r, n in num_sched.items() if r not in spec)
    assert decode_steps == 30 and mixed_steps > 5
