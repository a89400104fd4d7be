"""ModelRunner: executes one SchedulerOutput on the model and returns the sampled tokens.

It owns the model, the KV cache tensors and the InputBatch, its one record of each request
(tokens, block ids, sampling parameters, generator), kept in step with the scheduler through
SchedulerOutput's deltas. It never mutates scheduler state.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pagedllm.attention.backend import AttentionBackend
from pagedllm.config.speculative import SpeculativeConfig
from pagedllm.core.sched.output import LogprobsLists, ModelRunnerOutput, SchedulerOutput
from pagedllm.forward_context import set_forward_context
from pagedllm.lora.model_manager import LoRAModelManager
from pagedllm.metrics.step_profile import step_phase
from pagedllm.model_executor.layers.attention import attention_layers
from pagedllm.sample.metadata import SamplingMetadata
from pagedllm.sample.ops.argmax import argmax_rows
from pagedllm.sample.ops.grammar_bitmask import apply_token_bitmask
from pagedllm.sample.outputs import LogprobsTensors
from pagedllm.sample.rejection_sampler import RejectionSampler
from pagedllm.sample.sampler import Sampler, compute_prompt_logprobs
from pagedllm.spec_decode.calibration import forward_seconds
from pagedllm.spec_decode.draft_model import DraftModelDrafter
from pagedllm.spec_decode.drafter import Drafter
from pagedllm.worker.encoder_decoder import EncoderDecoderState
from pagedllm.worker.input_batch import InputBatch
from pagedllm.worker.mm_embeddings import MultiModalEmbeddings
from pagedllm.worker.row_arrays import positions_within
from pagedllm.worker.state_cache import StateCache
from pagedllm.worker.step_inputs import StepInputs, prepare_inputs

_IDLE_LORA_WAIT_SECONDS = 0.05
"""A step with nothing scheduled waits this long for an adapter's background load."""


class ModelRunner:
    def __init__(
        self,
        model: nn.Module,
        kv_caches: list[torch.Tensor],
        backend: type[AttentionBackend],
        block_size: int,
        vocab_size: int,
        eos_token_ids: tuple[int, ...],
        device: torch.device,
        pool_last_token: bool = False,
        max_num_seqs: int = 128,
        max_model_len: int = 2048,
        speculative_config: SpeculativeConfig | None = None,
        drafter: Drafter | None = None,
        lora_manager: LoRAModelManager | None = None,
        state_cache: StateCache | None = None,
        encoder_cache_size: int | None = None,
        num_cross_attention_tokens: int | None = None,
    ) -> None:
        """max_num_seqs and max_model_len size the InputBatch up front (it grows past them).
        drafter: the proposer built by the worker (a draft model's); None: one from
        speculative_config."""
        self.model = model
        self.backend = backend
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self.device = device
        self.pool_last_token = pool_last_token
        """Task "embed": a request whose prompt is computed returns its last token's hidden
        state (ModelRunnerOutput.pooler_output) instead of sampling."""
        self.input_batch = InputBatch(
            max_num_seqs, max_model_len, block_size, vocab_size, device, eos_token_ids
        )
        self.sampler = Sampler()
        self.rejection_sampler = RejectionSampler(self.sampler)
        if drafter is None and speculative_config is not None:
            drafter = Drafter(speculative_config)
        self.drafter = drafter
        """Speculative decoding: proposes each step's drafts for the next (None: off)."""
        self.lora = lora_manager
        """Multi-LoRA: the requests' adapters and the layers' slots (None: off)."""
        self.mm = (MultiModalEmbeddings(model, device, encoder_cache_size)
                   if getattr(model, "supports_multimodal", False) else None)
        """Vision-language models: each image's encoder output, per image hash (the
        scheduler's encoder cache accounting decides which are held)."""
        self.encdec = (EncoderDecoderState(model, device, num_cross_attention_tokens)
                       if getattr(model, "is_encoder_decoder", False) else None)
        """Encoder-decoders: each running request's cross-attention K/V."""
        self.state_cache = state_cache
        """Models with Mamba layers: each running request's state slot (None: no states)."""
        self.metadata_builder = backend.get_builder_cls()()
        from pagedllm.distributed import get_pp_group

        self.is_last_stage = get_pp_group().is_last_rank
        """Pipeline parallelism: only the last stage samples; an earlier stage runs its layers
        (sending the hidden states on) and answers nothing (always True without PP)."""
        self.is_first_stage = get_pp_group().is_first_rank
        """(Only the first stage embeds: a VLM's later stages never run its vision tower.)"""
        layers = attention_layers(model)
        assert len(layers) == len(kv_caches), (len(layers), len(kv_caches))
        for layer, cache in zip(layers, kv_caches):
            layer.bind(backend, cache)

    @torch.inference_mode()
    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        output = self._execute(scheduler_output)
        if self.lora is not None:
            report = self.lora.report()
            output.lora_loaded, output.lora_failed = report.loaded, report.failed
            output.num_lora_slot_evictions = report.num_slot_evictions
        return output

    def _execute(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        with step_phase("prepare_inputs"):
            req_ids = self._update_states(scheduler_output)
            if self.lora is not None:
                self.lora.update(scheduler_output.lora_loads, scheduler_output.lora_drops)
            if not req_ids:
                if self.lora is not None:
                    # nothing to run (requests may wait for an adapter): do not spin
                    self.lora.wait_for_loads(_IDLE_LORA_WAIT_SECONDS)
                return ModelRunnerOutput(req_ids=[], sampled_token_ids={})
            inputs = prepare_inputs(self.input_batch, scheduler_output, req_ids, self.device)
            attn_metadata = self.metadata_builder.build(inputs.attn)
            lora_mapping = None
            if self.lora is not None:
                lora_mapping = self.lora.step_mapping(inputs.req_ids, inputs.num_scheduled)
            cross = None
            if self.encdec is not None:  # (the encoder runs in its own forward context)
                cross = self.encdec.step_batch(inputs.req_ids, inputs.attn.query_start_loc_cpu)
            if self.state_cache is not None:
                self.state_cache.prepare(inputs.req_ids,
                                         self.input_batch.num_computed_tokens[inputs.rows],
                                         inputs.num_scheduled)
        with step_phase("forward"), set_forward_context(attn_metadata, lora_mapping):
            if cross is not None:
                hidden = self.model(inputs.input_ids, inputs.positions, cross=cross)
            elif self.mm is not None:
                starts = self.input_batch.num_computed_tokens[inputs.rows]
                embeds = None  # (a later pipeline stage receives hidden states instead)
                if self.is_first_stage:
                    embeds = self.mm.input_embeds(inputs.input_ids, inputs.req_ids, starts,
                                                  inputs.num_scheduled)
                positions = self.mm.positions(inputs.positions, inputs.req_ids, starts,
                                              inputs.num_scheduled)  # M-RoPE: [3, T]
                hidden = self.model(inputs.input_ids, positions, inputs_embeds=embeds)
            else:
                hidden = self.model(inputs.input_ids, inputs.positions)
            if not self.is_last_stage:
                self.input_batch.num_computed_tokens[inputs.rows] += inputs.num_scheduled
                return ModelRunnerOutput(req_ids=inputs.req_ids, sampled_token_ids={})
            # the LM head is part of the model's work, not the sampler's
            logits = None
            if not self.pool_last_token and inputs.sampling_req_ids:
                every_row = inputs.logits_all_rows and hidden.shape[0] == len(inputs.logits_indices)
                sampled_rows = hidden if every_row else hidden[inputs.logits_indices]
                logits = self.model.compute_logits(sampled_rows)
        output = ModelRunnerOutput(
            req_ids=inputs.req_ids, sampled_token_ids={r: [] for r in inputs.req_ids}
        )
        with step_phase("sample"):
            if self.pool_last_token:
                self._pool_last_token(hidden, inputs, output)
            elif logits is not None:
                if scheduler_output.grammar_bitmask is not None:
                    self._apply_grammar_bitmask(logits, inputs, scheduler_output)
                self._sample(logits, inputs, output)
            if not self.pool_last_token:
                self._compute_prompt_logprobs(hidden, inputs, output)
        # NOTE: after the sampled tokens joined; the scheduler resends it next step anyway.
        self.input_batch.num_computed_tokens[inputs.rows] += inputs.num_scheduled
        return output

    def measure_forward_seconds(self, num_rows: int) -> float:
        """One sequence's forward with num_rows query rows (spec_decode/calibration.py); call
        before any request runs."""
        return forward_seconds(self.model, self.metadata_builder, self.block_size, self.device,
                               num_rows)

    def _update_states(self, so: SchedulerOutput) -> list[str]:
        """Apply the scheduler's deltas; return the scheduled request ids in packing order."""
        batch = self.input_batch
        if self.mm is not None and so.free_encoder_mm_hashes:
            self.mm.free_encoder_outputs(so.free_encoder_mm_hashes)
        for req_id in so.finished_req_ids:
            if req_id in batch.row_of:
                batch.remove_request(req_id)
            if self.drafter is not None:
                self.drafter.remove_request(req_id)
            if self.lora is not None:
                self.lora.remove_request(req_id)
            if self.mm is not None:
                self.mm.remove_request(req_id)
            if self.encdec is not None:
                self.encdec.remove_request(req_id)
            if self.state_cache is not None:
                self.state_cache.remove_request(req_id)
        for new in so.scheduled_new_reqs:
            batch.add_request(new)
            if self.state_cache is not None:
                self.state_cache.add_request(new.req_id, new.state_slot)
            if self.mm is not None:
                self.mm.add_request(new.req_id, new.mm_features)
            if self.encdec is not None:
                self.encdec.add_request(new.req_id, new.encoder_prompt_token_ids)
            if self.lora is not None:
                self.lora.add_request(new.req_id, new.lora_request)
            if self.drafter is not None:
                self.drafter.add_request(new.req_id, new.sampling_params)
        cached = so.scheduled_cached_reqs
        for req_id, new_blocks, num_computed in zip(
            cached.req_ids, cached.new_block_ids, cached.num_computed_tokens
        ):
            batch.update_request(req_id, new_blocks, num_computed)
        for req_id, start, tokens in zip(cached.req_ids, cached.num_computed_tokens,
                                         cached.new_token_ids):
            batch.set_tokens(req_id, start, tokens)  # (a stage that does not sample)
        for req_id, drafts in so.scheduled_spec_decode_tokens.items():
            batch.set_drafts(req_id, drafts)
        return [r.req_id for r in so.scheduled_new_reqs] + list(cached.req_ids)

    def _sample(self, logits: torch.Tensor, inputs: StepInputs, out: ModelRunnerOutput) -> None:
        """Sample each sampling request's next token (verifying its drafts, if it has any),
        append the tokens to the batch and to `out`, and propose the next drafts."""
        if inputs.any_drafts:
            self._sample_with_drafts(logits, inputs, out)
        else:
            rows = inputs.sampling_rows
            sampled = self._sample_one_each(logits, rows, inputs.sampling_req_ids, out)
            self.input_batch.append_sampled(rows, sampled)
            for req_id, token in zip(inputs.sampling_req_ids, sampled.tolist()):
                out.sampled_token_ids[req_id] = [token]
        if self.drafter is not None:
            rows = inputs.sampling_rows
            out.spec_token_ids = self.drafter.propose(
                inputs.sampling_req_ids, self.input_batch.token_ids, rows,
                self.input_batch.num_tokens[rows], self.input_batch.num_reqs)

    def _sample_one_each(self, logits: torch.Tensor, rows: np.ndarray, req_ids: list[str],
                         out: ModelRunnerOutput) -> torch.Tensor:
        """One token per logits row (batch rows `rows`), logprobs into `out`; [S] long."""
        if self.input_batch.sampling.all_plain_greedy(rows):
            # the sampler would apply nothing before its argmax and return no logprobs: the same
            # tokens without gathering the metadata or entering the sampler
            return argmax_rows(logits.float())
        metadata = self.input_batch.sampling_metadata(rows)
        sampled = self.sampler.forward(logits, metadata)
        if sampled.logprobs is not None:
            self._collect_logprobs(sampled.logprobs, req_ids, metadata.num_logprobs, out)
        return sampled.sampled_token_ids

    def _sample_with_drafts(self, logits: torch.Tensor, inputs: StepInputs,
                            out: ModelRunnerOutput) -> None:
        """Requests without drafts sample their one logits row; the others verify theirs."""
        batch = self.input_batch
        req_ids, num_drafts = inputs.sampling_req_ids, inputs.num_drafts
        first = _first_logits_rows(num_drafts)
        token_lists: list[list[int]] = [[] for _ in req_ids]
        plain = np.flatnonzero(num_drafts == 0)
        if len(plain):
            sampled = self._sample_one_each(logits[torch.from_numpy(first[plain])],
                                            inputs.sampling_rows[plain],
                                            [req_ids[i] for i in plain], out)
            for i, token in zip(plain.tolist(), sampled.tolist()):
                token_lists[i] = [token]
        spec = np.flatnonzero(num_drafts > 0)
        counts = num_drafts[spec] + 1
        rows = inputs.sampling_rows[spec]
        index = np.repeat(first[spec], counts) + positions_within(counts)
        drafts = [batch.token_ids[row, end : end + k].tolist() for row, end, k in
                  zip(rows.tolist(), batch.num_tokens[rows].tolist(), num_drafts[spec].tolist())]
        metadata = self._verify_metadata(rows, counts, drafts)
        draft_probs = None
        if isinstance(self.drafter, DraftModelDrafter) and not metadata.all_greedy:
            draft_probs = self.drafter.draft_probs([req_ids[i] for i in spec.tolist()], drafts,
                                                   logits.shape[1], logits.device)
        verified = self.rejection_sampler.forward(
            logits[torch.from_numpy(index)], metadata, drafts, draft_probs)
        for j, i in enumerate(spec.tolist()):
            token_lists[i] = verified.token_ids[j]
            out.num_draft_tokens[req_ids[i]] = len(drafts[j])
            if verified.logprobs[j] is not None:
                out.logprobs[req_ids[i]] = verified.logprobs[j]  # type: ignore[assignment]
            if self.drafter is not None:
                self.drafter.observe(req_ids[i], len(drafts[j]), len(token_lists[i]) - 1)
        batch.append_token_lists(inputs.sampling_rows, token_lists)
        for req_id, tokens in zip(req_ids, token_lists):
            out.sampled_token_ids[req_id] = tokens

    def _verify_metadata(self, rows: np.ndarray, counts: np.ndarray,
                         drafts: list[list[int]]) -> SamplingMetadata:
        """The sampling metadata of the verify rows (counts[i] rows for request rows[i]): row j
        of a request sees its drafts before j as generated, as if they had been sampled one by
        one, so min_tokens, bad_words and the penalties count them."""
        batch = self.input_batch
        repeated = np.repeat(rows, counts)
        offsets = positions_within(counts)
        # the drafts sit in the token array past each row's tokens (set_drafts), so row j's
        # history is the row's tokens plus its first j drafts (bad_words reads it there)
        num_tokens = batch.num_tokens[repeated] + offsets
        num_output = num_tokens - batch.num_prompt_tokens[repeated]
        metadata = batch.sampling.metadata(repeated, num_output, batch.token_ids, num_tokens)
        if metadata.penalties is not None:
            # (a gathered copy: the persistent counts gain only accepted tokens, later)
            output_counts = metadata.penalties.output_counts
            penalized = batch.sampling.uses_penalty[rows].tolist()
            first = 0
            for draft, counted in zip(drafts, penalized):
                for j in range(1, len(draft) + 1 if counted else 1):
                    ids = torch.tensor(draft[:j], dtype=torch.long, device=output_counts.device)
                    output_counts[first + j].index_add_(
                        0, ids, torch.ones_like(ids, dtype=output_counts.dtype))
                first += len(draft) + 1
        return metadata

    def _apply_grammar_bitmask(self, logits: torch.Tensor, inputs: StepInputs,
                               so: SchedulerOutput) -> None:
        """Constrained rows keep only their grammar's tokens (before the sampler, so logprobs
        and every transform see the constrained distribution, as in vLLM). A request verifying
        k drafts has k + 1 consecutive rows in both the logits and the bitmask."""
        first = _first_logits_rows(inputs.num_drafts).tolist()
        where = {req_id: (first[i], int(inputs.num_drafts[i]) + 1)
                 for i, req_id in enumerate(inputs.sampling_req_ids)}
        bitmask = np.empty((len(logits), so.grammar_bitmask.shape[1]), dtype=np.int32)
        rows: list[int] = []
        source = 0
        for req_id in so.structured_output_request_ids:
            start, count = where[req_id]
            bitmask[start : start + count] = so.grammar_bitmask[source : source + count]
            rows.extend(range(start, start + count))
            source += count
        apply_token_bitmask(logits, torch.from_numpy(bitmask), rows)

    def _pool_last_token(
        self, hidden: torch.Tensor, inputs: StepInputs, out: ModelRunnerOutput
    ) -> None:
        if inputs.sampling_req_ids:
            # The rows whose next token would be sampled are the prompts' last tokens.
            rows = hidden[inputs.logits_indices].float().tolist()  # [S, hidden]
            out.pooler_output = dict(zip(inputs.sampling_req_ids, rows))

    def _collect_logprobs(
        self,
        tensors: LogprobsTensors,
        req_ids: list[str],
        num_logprobs: list[int | None],
        out: ModelRunnerOutput,
    ) -> None:
        for req_id, lists in zip(req_ids, tensors.to_lists(num_logprobs)):
            if lists is not None:
                out.logprobs[req_id] = lists

    def _compute_prompt_logprobs(
        self, hidden: torch.Tensor, inputs: StepInputs, output: ModelRunnerOutput
    ) -> None:
        for target in inputs.prompt_logprobs:
            params = self.input_batch.sampling.params[self.input_batch.row_of[target.req_id]]
            assert params is not None
            rows = torch.tensor(target.hidden_rows, dtype=torch.long, device=hidden.device)
            logits = self.model.compute_logits(hidden[rows])
            next_ids = torch.tensor(target.next_token_ids, dtype=torch.long, device=hidden.device)
            tensors = compute_prompt_logprobs(logits, next_ids, params.prompt_logprobs or 0)
            output.prompt_logprobs[target.req_id] = LogprobsLists(
                token_ids=tensors.token_ids.tolist(),
                logprobs=tensors.logprobs.tolist(),
                ranks=tensors.ranks.tolist(),
                start_position=target.start_position,
            )


def _first_logits_rows(num_drafts: np.ndarray) -> np.ndarray:
    """[S]: each sampling request's first logits row (a request with k drafts has k + 1)."""
    return np.cumsum(num_drafts + 1) - (num_drafts + 1)
