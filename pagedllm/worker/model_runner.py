"""ModelRunner: executes one SchedulerOutput on the model and returns the sampled tokens.

It owns the model, the KV cache tensors and a per-request state (tokens, block ids, generator)
that it keeps in step with the scheduler through SchedulerOutput's deltas. It never mutates
scheduler state.
"""

from __future__ import annotations

import torch
from torch import nn

from pagedllm.attention.backend import AttentionBackend
from pagedllm.core.sched.output import LogprobsLists, ModelRunnerOutput, SchedulerOutput
from pagedllm.forward_context import set_forward_context
from pagedllm.metrics.step_profile import step_phase
from pagedllm.model_executor.layers.attention import attention_layers
from pagedllm.sample.metadata import SamplingMetadata, SamplingRow
from pagedllm.sample.sampler import Sampler, compute_prompt_logprobs
from pagedllm.worker.execution_strategy import select_execution_strategy
from pagedllm.worker.input_batch import StepInputs, prepare_inputs
from pagedllm.worker.request_state import CachedRequestState, make_generator


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
        enforce_eager: bool = False,
    ) -> None:
        self.model = model
        self.backend = backend
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self.device = device
        self.pool_last_token = pool_last_token
        """Task "embed": a request whose prompt is computed returns its last token's hidden
        state (ModelRunnerOutput.pooler_output) instead of sampling."""
        self.requests: dict[str, CachedRequestState] = {}
        self.sampler = Sampler()
        self.metadata_builder = backend.get_builder_cls()()
        layers = attention_layers(model)
        assert len(layers) == len(kv_caches), (len(layers), len(kv_caches))
        for layer, cache in zip(layers, kv_caches):
            layer.bind(backend, cache)
        # NOTE: here until the Worker (worker/worker.py) owns the KV-cache binding and calls it
        self.execution = select_execution_strategy(model, enforce_eager)
        """How the decoder layers run: fused CPU stack or eager (then with the reason)."""

    @torch.inference_mode()
    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        with step_phase("prepare_inputs"):
            req_ids = self._update_states(scheduler_output)
            if not req_ids:
                return ModelRunnerOutput(req_ids=[], sampled_token_ids={})
            inputs = prepare_inputs(
                self.requests, scheduler_output, req_ids, self.block_size, self.device
            )
            attn_metadata = self.metadata_builder.build(inputs.attn)
        with step_phase("forward"), set_forward_context(attn_metadata):
            hidden = self.model(inputs.input_ids, inputs.positions)
            # the LM head is part of the model's work, not the sampler's
            logits = None
            if not self.pool_last_token and inputs.sampling_req_ids:
                logits = self.model.compute_logits(hidden[inputs.logits_indices])
        with step_phase("sample"):
            if self.pool_last_token:
                output = self._pool_last_token(hidden, inputs)
            else:
                output = self._sample(logits, inputs)
                self._compute_prompt_logprobs(hidden, inputs, output)
        self._advance(scheduler_output, inputs, output)
        return output

    def _update_states(self, so: SchedulerOutput) -> list[str]:
        """Apply the scheduler's deltas; return the scheduled request ids in packing order."""
        for req_id in so.finished_req_ids:
            self.requests.pop(req_id, None)
        for new in so.scheduled_new_reqs:
            self.requests[new.req_id] = CachedRequestState(
                req_id=new.req_id,
                prompt_token_ids=list(new.prompt_token_ids),
                sampling_params=new.sampling_params,
                block_ids=list(new.block_ids),
                num_computed_tokens=new.num_computed_tokens,
                generator=make_generator(new.sampling_params, self.device),
                output_token_ids=list(new.output_token_ids),
            )
        cached = so.scheduled_cached_reqs
        for req_id, new_blocks, num_computed in zip(
            cached.req_ids, cached.new_block_ids, cached.num_computed_tokens
        ):
            state = self.requests[req_id]
            state.block_ids.extend(new_blocks)
            state.num_computed_tokens = num_computed
        return [r.req_id for r in so.scheduled_new_reqs] + list(cached.req_ids)

    def _sample(self, logits: torch.Tensor | None, inputs: StepInputs) -> ModelRunnerOutput:
        output = ModelRunnerOutput(
            req_ids=inputs.req_ids, sampled_token_ids={r: [] for r in inputs.req_ids}
        )
        if logits is None:
            return output
        rows = [self._sampling_row(self.requests[r]) for r in inputs.sampling_req_ids]
        metadata = SamplingMetadata.build(rows, self.vocab_size, self.device, self.eos_token_ids)
        sampled = self.sampler.forward(logits, metadata)
        token_ids = sampled.sampled_token_ids.tolist()
        for i, req_id in enumerate(inputs.sampling_req_ids):
            output.sampled_token_ids[req_id] = [token_ids[i]]
        if sampled.logprobs is not None:
            self._collect_logprobs(sampled.logprobs, inputs.sampling_req_ids, output)
        return output

    def _pool_last_token(self, hidden: torch.Tensor, inputs: StepInputs) -> ModelRunnerOutput:
        output = ModelRunnerOutput(
            req_ids=inputs.req_ids, sampled_token_ids={r: [] for r in inputs.req_ids}
        )
        if inputs.sampling_req_ids:
            # The rows whose next token would be sampled are the prompts' last tokens.
            rows = hidden[inputs.logits_indices].float().tolist()  # [S, hidden]
            output.pooler_output = dict(zip(inputs.sampling_req_ids, rows))
        return output

    def _collect_logprobs(self, tensors, req_ids: list[str], output: ModelRunnerOutput) -> None:
        token_ids, logprobs = tensors.token_ids.tolist(), tensors.logprobs.tolist()
        ranks = tensors.ranks.tolist()
        for i, req_id in enumerate(req_ids):
            num = self.requests[req_id].sampling_params.logprobs
            if num is None:
                continue
            output.logprobs[req_id] = LogprobsLists(
                token_ids=[token_ids[i][: num + 1]],
                logprobs=[logprobs[i][: num + 1]],
                ranks=[ranks[i]],
            )

    def _sampling_row(self, state: CachedRequestState) -> SamplingRow:
        return SamplingRow(
            params=state.sampling_params,
            prompt_token_ids=state.prompt_token_ids,
            output_token_ids=state.output_token_ids,
            generator=state.generator,
        )

    def _compute_prompt_logprobs(
        self, hidden: torch.Tensor, inputs: StepInputs, output: ModelRunnerOutput
    ) -> None:
        for target in inputs.prompt_logprobs:
            params = self.requests[target.req_id].sampling_params
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

    def _advance(self, so: SchedulerOutput, inputs: StepInputs, output: ModelRunnerOutput) -> None:
        for req_id in inputs.req_ids:
            state = self.requests[req_id]
            state.num_computed_tokens += so.num_scheduled_tokens[req_id]
            for token_id in output.sampled_token_ids[req_id]:
                state.append_output(token_id)

