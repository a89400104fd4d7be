"""/score, /rerank and /pooling on an embedding model (a bi-encoder): each text is embedded once
through /v1/embeddings' path, and a pair's score is the cosine similarity of its two embeddings
(what vLLM computes for embedding models); /pooling returns the pooled vectors themselves.
Cross-encoders and classification heads are not served yet: a generation model answers 400."""

from __future__ import annotations

import math

from pagedllm.entrypoints.openai.errors import BadRequestError
from pagedllm.entrypoints.openai.protocol import EmbeddingRequest, UsageInfo
from pagedllm.entrypoints.openai.protocol_score import (
    PoolingData,
    PoolingResponse,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    ScoreData,
    ScoreRequest,
    ScoreResponse,
)
from pagedllm.entrypoints.openai.serving_embedding import OpenAIServingEmbedding


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


class OpenAIServingScore:
    def __init__(self, embedding: OpenAIServingEmbedding) -> None:
        self.embedding = embedding
        self.task = embedding.engine.model_config.task

    async def _scores(self, model: str | None, queries: list[str], documents: list[str],
                      truncate: int | None) -> tuple[list[float], int]:
        """Cosine similarity of each (query, document) pair; the prompt tokens embedded."""
        if self.task != "embed":
            raise BadRequestError(
                "scoring needs an embedding model (a bi-encoder such as all-MiniLM-L6-v2); "
                "cross-encoder and classification models are not supported yet",
                param="model")
        if not documents:
            raise BadRequestError("nothing to score: no documents", param="documents")
        texts = list(dict.fromkeys([*queries, *documents]))  # each distinct text embedded once
        out = await self.embedding.create_embedding(EmbeddingRequest(
            model=model, input=texts, encoding_format="float", truncate_prompt_tokens=truncate))
        vectors = {text: data.embedding for text, data in zip(texts, out.data)}
        if len(queries) == 1:
            queries = queries * len(documents)
        scores = [cosine(vectors[q], vectors[d])  # type: ignore[arg-type]
                  for q, d in zip(queries, documents)]
        return scores, out.usage.prompt_tokens

    async def score(self, request: ScoreRequest) -> ScoreResponse:
        model_name = self.embedding.models.check_model(request.model)
        queries = [request.text_1] if isinstance(request.text_1, str) else request.text_1
        documents = [request.text_2] if isinstance(request.text_2, str) else request.text_2
        if not queries:
            raise BadRequestError("text_1 must not be empty", param="text_1")
        if len(queries) != 1 and len(queries) != len(documents):
            raise BadRequestError(
                f"text_1 holds {len(queries)} texts and text_2 {len(documents)}: give one text_1 "
                "(scored against every text_2) or one per text_2", param="text_1")
        scores, tokens = await self._scores(request.model, queries, documents,
                                            request.truncate_prompt_tokens)
        return ScoreResponse(model=model_name,
                             data=[ScoreData(index=i, score=s) for i, s in enumerate(scores)],
                             usage=UsageInfo(prompt_tokens=tokens, total_tokens=tokens))

    async def rerank(self, request: RerankRequest) -> RerankResponse:
        model_name = self.embedding.models.check_model(request.model)
        documents = []
        for i, document in enumerate(request.documents):
            text = document if isinstance(document, str) else document.get("text")
            if not isinstance(text, str):
                raise BadRequestError(f"documents[{i}] must be a string or an object with a "
                                      "`text` string", param=f"documents[{i}]")
            documents.append(text)
        scores, tokens = await self._scores(request.model, [request.query], documents,
                                            request.truncate_prompt_tokens)
        order = sorted(range(len(documents)), key=lambda i: -scores[i])
        if request.top_n:
            order = order[:request.top_n]
        results = [RerankResult(index=i, relevance_score=scores[i],
                                document=RerankDocument(text=documents[i])
                                if request.return_documents else None)
                   for i in order]
        return RerankResponse(model=model_name, results=results,
                              usage=RerankUsage(total_tokens=tokens, prompt_tokens=tokens))

    async def pooling(self, request: EmbeddingRequest) -> PoolingResponse:
        """/pooling: the pooled output of each input, in vLLM's shape."""
        if self.task != "embed":
            raise BadRequestError("/pooling needs a pooling (embedding) model; classification "
                                  "models are not supported yet", param="model")
        out = await self.embedding.create_embedding(request)
        return PoolingResponse(model=out.model, usage=out.usage, data=[
            PoolingData(index=d.index, data=d.embedding) for d in out.data])
