"""/v1/embeddings with an image (CLIP): the server decodes and processes the image once, to refuse
a bad one with a 400 before any work, and hands the engine that processed prompt (an in-process
object, nothing pickled) instead of the image to process again. The serving layer runs here
over the offline engine, so the image processor's calls can be counted."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from pagedllm import LLM
from tests.multimodal.conftest import data_url, random_image


class _OfflineEngine:
    """What OpenAIServingEmbedding reads of AsyncLLM, over an offline engine."""

    def __init__(self, llm: LLM) -> None:
        self.llm_engine = llm.llm_engine
        self.input_processor = llm.llm_engine.input_processor
        self.model_config = llm.llm_engine.config.model
        self.config = llm.llm_engine.config
        self.tokenizer = llm.llm_engine.tokenizer
        self.prompts: list[object] = []

    async def encode(self, prompt, params, request_id):
        self.prompts.append(prompt)
        self.llm_engine.add_request(request_id, prompt, params)
        while True:
            for output in self.llm_engine.step():
                if output.finished:
                    yield output
                    return


def test_image_embedding_processes_the_image_once(tiny_clip_dir, monkeypatch):
    from pagedllm.engine.input_processor import ProcessedPrompt
    from pagedllm.entrypoints.openai import serving_embedding
    from pagedllm.entrypoints.openai.errors import BadRequestError
    from pagedllm.entrypoints.openai.protocol import EmbeddingRequest
    from pagedllm.multimodal import dual_encoder

    llm = LLM(tiny_clip_dir)
    image = random_image(70)
    (reference,) = llm.embed([{"prompt": "", "multi_modal_data": {"image": image}}],
                             use_tqdm=False)
    calls = {"decode": 0, "process": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(serving_embedding, "load_image_url",
                        counted("decode", serving_embedding.load_image_url))
    monkeypatch.setattr(dual_encoder, "image_prompt", counted("process", dual_encoder.image_prompt))
    engine = _OfflineEngine(llm)
    serving = serving_embedding.OpenAIServingEmbedding(
        engine, SimpleNamespace(check_model=lambda name: name))  # type: ignore[arg-type]
    message = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(image)}}]}]
    response = asyncio.run(serving.create_embedding(
        EmbeddingRequest(model="clip", messages=message)))
    assert calls == {"decode": 1, "process": 1}
    assert isinstance(engine.prompts[0], ProcessedPrompt)
    assert response.data[0].embedding == pytest.approx(reference.outputs.embedding, abs=1e-6)
    assert response.usage.prompt_tokens == 1
    with pytest.raises(BadRequestError, match="base64"):
        asyncio.run(serving.create_embedding(EmbeddingRequest(model="clip", messages=[
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,%%"}}]}])))
