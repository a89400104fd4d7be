"""/classify on a sequence-classification model, and the engine calls /score and /rerank make on
a cross-encoder: prompts -> engine.encode(task "classify") -> each label's activated score.
Every input error is a 400 raised before any work starts."""

from __future__ import annotations

from typing import Any

from pagedllm.entrypoints.openai.errors import BadRequestError
from pagedllm.entrypoints.openai.protocol import UsageInfo, random_id
from pagedllm.entrypoints.openai.protocol_score import (
    ClassificationData,
    ClassificationRequest,
    ClassificationResponse,
)
from pagedllm.entrypoints.openai.serving_engine import OpenAIServing, http_errors
from pagedllm.entrypoints.openai.utils import merge_async_iterators
from pagedllm.outputs import ClassificationRequestOutput
from pagedllm.pooling_params import PoolingParams

_CLASSIFY = PoolingParams(task="classify")


class OpenAIServingClassification(OpenAIServing):
    async def create_classify(self, request: ClassificationRequest) -> ClassificationResponse:
        model_name = self.models.check_model(request.model)
        self._check_task()
        inputs = request.input
        if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
            inputs = [inputs]  # type: ignore[list-item]
        if not inputs:
            raise BadRequestError("input must not be empty", param="input")
        prompts = [{"prompt_token_ids": self.truncate_prompt(
            self.tokenize(p, request.add_special_tokens), request.truncate_prompt_tokens)}
            for p in inputs]  # type: ignore[union-attr]
        outputs = await self.classify(prompts, random_id("classify"))
        labels = self.engine.model_config.classifier.labels  # type: ignore[union-attr]
        data = [ClassificationData(index=i, probs=o.outputs.probs,
                                   num_classes=o.outputs.num_classes,
                                   label=labels[max(range(len(labels)),
                                                    key=o.outputs.probs.__getitem__)])
                for i, o in enumerate(outputs)]
        tokens = sum(len(p["prompt_token_ids"]) for p in prompts)
        return ClassificationResponse(model=model_name, data=data,
                                      usage=UsageInfo(prompt_tokens=tokens, total_tokens=tokens))

    async def classify(self, prompts: list[dict[str, Any]],
                       request_id: str) -> list[ClassificationRequestOutput]:
        """Each token prompt (with segment ids for a pair) classified; outputs in input order.
        All prompts are checked before the first is queued."""
        self._check_task()
        for i, prompt in enumerate(prompts):
            try:
                processed = self.engine.input_processor.process_prompt(prompt)
                self.engine.input_processor.validate_pooling(processed, _CLASSIFY)
            except ValueError as e:
                raise BadRequestError(f"input {i}: {e}", param="input",
                                      code="context_length_exceeded"
                                      if "maximum model length" in str(e) else None) from e
        merged = merge_async_iterators(*(
            http_errors(self.engine.encode(prompt, _CLASSIFY, f"{request_id}-{i}"))
            for i, prompt in enumerate(prompts)))
        results: dict[int, ClassificationRequestOutput] = {}
        async for index, output in merged:
            results[index] = output
        return [results[i] for i in range(len(prompts))]

    def _check_task(self) -> None:
        if self.engine.model_config.task != "classify":
            raise BadRequestError(
                f"{self.engine.model_config.model} is not a classification model (task "
                f"{self.engine.model_config.task!r}): /classify needs a *ForSequenceClassification "
                f"model", param="model")
