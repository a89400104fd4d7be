"""RequestIntake: the one owner of a user's request on its way to the engine core, for the
offline engine and the server's async engine alike.

    user request ──▶ process + validate prompt (once) ──▶ fan out n samples ──▶ core requests
                                                          (child ids, seeds)    │
    RequestOutput ◀── OutputProcessor fans the children back in ◀───────────────┘

It keeps the map from the user's request id to the engine-core request ids (one per sample), so
an abort or a finish reaches every child. Beam search will fan out through it too.
"""

from __future__ import annotations

import dataclasses
import time

from pagedllm.engine.input_processor import InputProcessor, PromptType, cache_salt_of
from pagedllm.engine.messages import EngineCoreRequest
from pagedllm.engine.output_processor import OutputProcessor, ParentRequest, PoolingRequestState
from pagedllm.lora.request import LoRARequest
from pagedllm.pooling_params import PoolingParams
from pagedllm.sampling_params import SamplingParams


@dataclasses.dataclass
class AcceptedRequest:
    prompt_token_ids: list[int]
    core_requests: list[EngineCoreRequest]
    """One per sample (n of them), in sample order; the caller sends them to the engine core."""


class RequestIntake:
    def __init__(self, input_processor: InputProcessor, output_processor: OutputProcessor):
        self.input_processor = input_processor
        self.output_processor = output_processor
        self._children: dict[str, list[str]] = {}
        """User request id -> its engine-core request ids, while it is unfinished."""

    def add(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams | PoolingParams,
        arrival_time: float | None = None,
        priority: int = 0,
        lora_request: LoRARequest | None = None,
    ) -> AcceptedRequest:
        """Validate and register a request; raises ValueError (naming the field) on bad input,
        before anything is registered."""
        if request_id in self._children:
            raise ValueError(f"request id {request_id!r} is already in use")
        processed = self.input_processor.process_prompt(prompt)
        cache_salt = cache_salt_of(prompt)
        self.input_processor.validate_priority(priority)
        self.input_processor.validate_placeholders(processed)
        self.input_processor.validate_lora(lora_request)
        arrival_time = arrival_time if arrival_time is not None else time.time()
        if isinstance(params, PoolingParams):
            self.input_processor.validate_pooling(processed, params)
            config = self.input_processor.model_config
            self.output_processor.add_pooling_request(request_id, PoolingRequestState(
                processed.prompt, processed.prompt_token_ids, params,
                config.pooler.normalize if config.pooler else False,
                config.classifier.activation if config.classifier else None,
            ))  # fmt: skip
            sampling = SamplingParams(max_tokens=1, detokenize=False)
            samples, pooling = [(request_id, sampling)], params
        else:
            self.input_processor.validate(processed, params)
            parent = ParentRequest(request_id, processed.prompt, processed.prompt_token_ids, params)
            samples, pooling = fan_out(request_id, params), None
            for index, (child_id, child_params) in enumerate(samples):
                self.output_processor.add_request(child_id, parent, index, child_params)
        self._children[request_id] = [child_id for child_id, _ in samples]
        core_requests = [
            EngineCoreRequest(child_id, processed.prompt_token_ids, child_params, arrival_time,
                              priority, pooling_params=pooling,
                              lora_request=lora_request, cache_salt=cache_salt,
                              token_type_ids=processed.token_type_ids,
                              mm_features=processed.mm_features,
                              encoder_prompt_token_ids=processed.encoder_prompt_token_ids,
                              )  # fmt: skip
            for child_id, child_params in samples
        ]
        return AcceptedRequest(processed.prompt_token_ids, core_requests)

    def abort(self, request_ids: list[str]) -> list[str]:
        """Forget the requests; their engine-core request ids, for the engine core to abort."""
        child_ids = [c for r in request_ids for c in self._children.pop(r, [])]
        self.output_processor.abort_requests(child_ids)
        return child_ids

    def parents_of(self, child_ids: list[str]) -> list[str]:
        """The unfinished user requests that own any of these engine-core requests."""
        wanted = set(child_ids)
        return [parent for parent, children in self._children.items()
                if not wanted.isdisjoint(children)]

    def finished(self, request_id: str) -> None:
        """The request's last output went out."""
        self._children.pop(request_id, None)

    def clear(self) -> None:
        self._children.clear()

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._children

    def __len__(self) -> int:
        return len(self._children)


def fan_out(request_id: str, params: SamplingParams) -> list[tuple[str, SamplingParams]]:
    """n samples -> n child requests with n == 1 (seeds offset so samples differ)."""
    if params.n == 1:
        return [(request_id, params)]
    children = []
    for i in range(params.n):
        # offset within int64, wrapping (seed 2**63 - 1 with n = 2 is a valid request)
        seed = None if params.seed is None else (params.seed + i + 2**63) % 2**64 - 2**63
        children.append((f"{i}_{request_id}", dataclasses.replace(params, n=1, seed=seed)))
    return children
