"""/v1/embeddings: inputs (text, token ids, or lists of either) -> engine.encode -> floats or
base64, with OpenAI's usage counts. Every input error is a 400 raised before any work starts."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from typing import Any

from pagedllm.entrypoints.openai.errors import BadRequestError
from pagedllm.entrypoints.openai.protocol import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    UsageInfo,
    random_id,
)
from pagedllm.entrypoints.openai.serving_engine import OpenAIServing, http_errors
from pagedllm.entrypoints.openai.utils import merge_async_iterators
from pagedllm.multimodal.dual_encoder import is_dual_encoder, split_embedding_message
from pagedllm.multimodal.media import load_image_url
from pagedllm.outputs import EmbeddingRequestOutput
from pagedllm.pooling_params import PoolingParams


class OpenAIServingEmbedding(OpenAIServing):
    async def create_embedding(self, request: EmbeddingRequest) -> EmbeddingResponse:
        model_name = self.models.check_model(request.model)
        params = _pooling_params(request)
        engine_prompts: list[Any]
        if request.messages is not None:
            engine_prompts, prompts = self._message_prompt(request)
        else:
            prompts = [self.truncate_prompt(self.tokenize(p, request.add_special_tokens),
                                            request.truncate_prompt_tokens)
                       for p in _inputs(request)]
            engine_prompts = [{"prompt_token_ids": ids} for ids in prompts]
        for token_ids in prompts:
            self._validate(token_ids, params)
        request_id = random_id("embd")
        merged = merge_async_iterators(*(
            self._encode(prompt, params, f"{request_id}-{i}")
            for i, prompt in enumerate(engine_prompts)
        ))
        results: dict[int, EmbeddingRequestOutput] = {}
        async for index, output in merged:
            results[index] = output
        data = [
            EmbeddingData(index=i, embedding=_format(results[i].outputs.embedding,
                                                     request.encoding_format))
            for i in range(len(prompts))
        ]
        num_tokens = sum(len(ids) for ids in prompts)
        return EmbeddingResponse(id=request_id, model=model_name, data=data,
                                 usage=UsageInfo(prompt_tokens=num_tokens,
                                                 total_tokens=num_tokens))

    def _validate(self, token_ids: list[int], params: PoolingParams) -> None:
        from pagedllm.engine.input_processor import ProcessedPrompt

        if len(token_ids) > self.max_model_len:
            raise BadRequestError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {len(token_ids)} tokens in the input for embedding generation. "
                f"Please reduce the length of the input.", param="input",
                code="context_length_exceeded")
        try:
            self.engine.input_processor.validate_pooling(ProcessedPrompt(None, token_ids), params)
        except ValueError as e:
            dimensions = params.dimensions is not None and "dimension" in str(e)
            raise BadRequestError(str(e), param="dimensions" if dimensions else None) from e

    def _message_prompt(self, request: EmbeddingRequest) -> tuple[list[Any], list[list[int]]]:
        """vLLM's chat-style request for a dual encoder (CLIP, SigLIP): the messages' text, or
        their one image (checked, decoded and processed here, so a bad image is a 400 before
        any work; the engine takes the processed prompt as it is, never processing it again)."""
        if not is_dual_encoder(self.engine.model_config.hf_config):
            raise BadRequestError("messages are served for CLIP/SigLIP embedding models; send "
                                  "input", param="messages")
        try:
            text, urls = split_embedding_message(request.messages or [])
            if not urls:
                ids = self.truncate_prompt(self.tokenize(text, request.add_special_tokens),
                                           request.truncate_prompt_tokens)
                return [{"prompt_token_ids": ids}], [ids]
            config = self.engine.config.multimodal
            images = [load_image_url(url, config) for url in urls]
            prompt = {"prompt": text, "multi_modal_data": {"image": images}}
            processed = self.engine.input_processor.process_prompt(prompt)
        except ValueError as e:
            raise BadRequestError(str(e), param="messages", code="invalid_image") from e
        return [processed], [processed.prompt_token_ids]

    def _encode(self, prompt: Any, params: PoolingParams,
                request_id: str) -> AsyncIterator[EmbeddingRequestOutput]:
        return http_errors(self.engine.encode(prompt, params, request_id))


def _inputs(request: EmbeddingRequest) -> list[str | list[int]]:
    value = request.input
    if isinstance(value, str) or (value and isinstance(value[0], int)):
        value = [value]  # type: ignore[list-item]
    if not value:
        raise BadRequestError("input must not be empty", param="input")
    return list(value)  # type: ignore[arg-type]


def _pooling_params(request: EmbeddingRequest) -> PoolingParams:
    try:
        return PoolingParams(dimensions=request.dimensions)
    except ValueError as e:
        raise BadRequestError(str(e), param="dimensions") from e


def _format(embedding: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return embedding
    # OpenAI's base64 format: the little-endian float32 bytes of the vector.
    return base64.b64encode(struct.pack(f"<{len(embedding)}f", *embedding)).decode("ascii")
