"""LLMEngine: the synchronous engine (add_request / step / abort_request), used by `LLM` and
wrapped by the server's async engine."""

from __future__ import annotations

from typing import Any

from pagedllm.config import EngineConfig
from pagedllm.engine.arg_utils import EngineArgs
from pagedllm.engine.core_client import EngineCoreClient, InprocClient
from pagedllm.engine.input_processor import InputProcessor, PromptType
from pagedllm.engine.output_processor import OutputProcessor
from pagedllm.engine.request_intake import RequestIntake
from pagedllm.lora.request import LoRARequest
from pagedllm.metrics.step_profile import StepProfiler
from pagedllm.outputs import EmbeddingRequestOutput, RequestOutput
from pagedllm.pooling_params import PoolingParams
from pagedllm.sampling_params import SamplingParams
from pagedllm.tokenizer.loader import load_tokenizer


class LLMEngine:
    def __init__(self, config: EngineConfig, core_client: EngineCoreClient | None = None) -> None:
        self.config = config
        self.tokenizer = load_tokenizer(config.model)
        self.input_processor = InputProcessor(config.model, self.tokenizer,
                                              config.structured_outputs, config.lora,
                                              scheduling_policy=config.scheduler.policy,
                                              multimodal=config.multimodal,
                                              scheduler=config.scheduler)
        self.output_processor = OutputProcessor(self.tokenizer)
        self.engine_core = core_client or InprocClient(config)
        self.step_profiler: StepProfiler = (
            getattr(self.engine_core, "step_profiler", None) or StepProfiler()
        )
        """The engine core's when it runs in this process, so one profile covers the step."""
        self.intake = RequestIntake(self.input_processor, self.output_processor)
        self.last_stats = None

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> LLMEngine:
        from pagedllm.engine.dp_client import DPLBClient, uses_dp_client

        if uses_dp_client(engine_args):
            client = DPLBClient(engine_args)  # the cores run in their own processes
            assert client.config is not None
            return cls(client.config, client)
        return cls(engine_args.create_engine_config())

    def shutdown(self) -> None:
        """Stop the engine-core process(es) of a data-parallel engine (nothing to do in process)."""
        self.engine_core.shutdown()

    def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams | PoolingParams,
        arrival_time: float | None = None,
        priority: int = 0,
        lora_request: LoRARequest | None = None,
    ) -> None:
        """Validate and queue a request (PoolingParams: an embedding request); raises ValueError
        (naming the field) on bad input, before anything is queued."""
        accepted = self.intake.add(request_id, prompt, params, arrival_time, priority,
                                   lora_request)
        for core_request in accepted.core_requests:
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
                self.intake.finished(request_output.request_id)
        return processed.request_outputs

    def abort_request(self, request_ids: str | list[str]) -> None:
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        self.engine_core.abort_requests(self.intake.abort(request_ids))

    def has_unfinished_requests(self) -> bool:
        return len(self.intake) > 0

    def remove_lora(self, lora_id: int) -> bool:
        """Unload an adapter (vLLM's name): the worker frees its CPU copy and slot, at once or
        when its last request ends. False when the worker does not hold it."""
        return self.engine_core.remove_lora(lora_id)  # type: ignore[attr-defined]

    def get_num_unfinished_requests(self) -> int:
        return len(self.intake)

    def get_tokenizer(self) -> Any:
        return self.tokenizer

