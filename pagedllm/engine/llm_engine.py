"""LLMEngine: the synchronous engine (add_request / step / abort_request), used by `LLM` and
wrapped by the server's async engine."""

from __future__ import annotations

import dataclasses
from typing import Any

from pagedllm.config import EngineConfig
from pagedllm.engine.arg_utils import EngineArgs
from pagedllm.engine.core_client import EngineCoreClient, InprocClient
from pagedllm.engine.input_processor import InputProcessor, ProcessedPrompt, PromptType
from pagedllm.engine.messages import EngineCoreRequest
from pagedllm.engine.output_processor import OutputProcessor, ParentRequest, PoolingRequestState
from pagedllm.metrics.step_profile import StepProfiler
from pagedllm.outputs import EmbeddingRequestOutput, RequestOutput
from pagedllm.pooling_params import PoolingParams
from pagedllm.sampling_params import SamplingParams
from pagedllm.tokenizer.loader import load_tokenizer


class LLMEngine:
    def __init__(self, config: EngineConfig, core_client: EngineCoreClient | None = None) -> None:
        self.config = config
        self.tokenizer = load_tokenizer(config.model)
        self.input_processor = InputProcessor(config.model, self.tokenizer)
        self.output_processor = OutputProcessor(self.tokenizer)
        self.engine_core = core_client or InprocClient(config)
        self.step_profiler: StepProfiler = (
            getattr(self.engine_core, "step_profiler", None) or StepProfiler()
        )
        """The engine core's when it runs in this process, so one profile covers the step."""
        self._children: dict[str, list[str]] = {}
        self.last_stats = None

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> LLMEngine:
        return cls(engine_args.create_engine_config())

    def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams | PoolingParams,
        arrival_time: float | None = None,
        priority: int = 0,
    ) -> None:
        """Validate and queue a request (PoolingParams: an embedding request); raises ValueError
        (naming the field) on bad input, before anything is queued."""
        if request_id in self._children:
            raise ValueError(f"request id {request_id!r} is already in use")
        processed = self.input_processor.process_prompt(prompt)
        if isinstance(params, PoolingParams):
            core_request = add_pooling_request(self.input_processor, self.output_processor,
                                               request_id, processed, params, arrival_time,
                                               priority)
            self._children[request_id] = [request_id]
            self.engine_core.add_request(core_request)
            return
        parent = ParentRequest(request_id, processed.prompt, processed.prompt_token_ids, params)
        children = [
            (child_id, self.input_processor.make_request(
                child_id, processed, child_params, arrival_time, priority))
            for child_id, child_params in _fan_out(request_id, params)
        ]
        self._children[request_id] = [child_id for child_id, _ in children]
        for index, (child_id, core_request) in enumerate(children):
            self.output_processor.add_request(
                child_id, parent, index, core_request.sampling_params
            )
            self.engine_core.add_request(core_request)

    def step(self) -> list[RequestOutput | EmbeddingRequestOutput]:
        with self.step_profiler.step():
            outputs = self.engine_core.get_output()
            self.last_stats = outputs.scheduler_stats
            with self.step_profiler.phase("output"):
                processed = self.output_processor.process_outputs(outputs.outputs)
            if processed.reqs_to_abort:
                self.engine_core.finish_requests_stopped(processed.reqs_to_abort)
        for request_output in processed.request_outputs:
            if request_output.finished:
                self._children.pop(request_output.request_id, None)
        return processed.request_outputs

    def abort_request(self, request_ids: str | list[str]) -> None:
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        child_ids = [c for r in request_ids for c in self._children.pop(r, [])]
        self.output_processor.abort_requests(child_ids)
        self.engine_core.abort_requests(child_ids)

    def has_unfinished_requests(self) -> bool:
        return bool(self._children)

    def get_num_unfinished_requests(self) -> int:
        return len(self._children)

    def get_tokenizer(self) -> Any:
        return self.tokenizer


def _fan_out(request_id: str, params: SamplingParams) -> list[tuple[str, SamplingParams]]:
    """n samples -> n child requests with n == 1 (seeds offset so samples differ)."""
    if params.n == 1:
        return [(request_id, params)]
    children = []
    for i in range(params.n):
        seed = None if params.seed is None else params.seed + i
        children.append((f"{i}_{request_id}", dataclasses.replace(params, n=1, seed=seed)))
    return children


def add_pooling_request(
    input_processor: InputProcessor,
    output_processor: OutputProcessor,
    request_id: str,
    processed: ProcessedPrompt,
    params: PoolingParams,
    arrival_time: float | None,
    priority: int,
) -> EngineCoreRequest:
    """Validate an embedding request and register it with the output processor; the caller
    sends the returned request to the engine core."""
    core_request = input_processor.make_pooling_request(
        request_id, processed, params, arrival_time, priority
    )
    pooler = input_processor.model_config.pooler
    assert pooler is not None
    output_processor.add_pooling_request(request_id, PoolingRequestState(
        processed.prompt, processed.prompt_token_ids, params, pooler.normalize,
    ))
    return core_request
