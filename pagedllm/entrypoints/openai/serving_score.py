"""/score, /rerank and /pooling, as vLLM serves them:

- a cross-encoder (a one-label sequence classifier) reads each (query, document) pair as one
  prompt with segment ids (score_utils.cross_encoder_prompt) through /classify's path; the score
  is the sigmoid of its logit;
- an embedding model (a bi-encoder) embeds each distinct text once through /v1/embeddings' path;
  a pair's score is the cosine similarity of its two embeddings.

/pooling returns the pooler's output per input (an embedding, or a classifier's label scores).
A generation model answers 400."""

from __future__ import annotations

from pagedllm.entrypoints.openai.errors import BadRequestError
from pagedllm.entrypoints.openai.protocol import EmbeddingRequest, UsageInfo, random_id
from pagedllm.entrypoints.openai.protocol_score import (
    ClassificationRequest,
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
from pagedllm.entrypoints.openai.serving_classification import OpenAIServingClassification
from pagedllm.entrypoints.openai.serving_embedding import OpenAIServingEmbedding
from pagedllm.entrypoints.score_utils import check_cross_encoder, cosine, cross_encoder_prompt


class OpenAIServingScore:
    def __init__(self, embedding: OpenAIServingEmbedding,
                 classification: OpenAIServingClassification) -> None:
        self.embedding = embedding
        self.classification = classification
        self.config = embedding.engine.model_config
        self.task = self.config.task

    async def _scores(self, model: str | None, queries: list[str], documents: list[str],
                      truncate: int | None) -> tuple[list[float], int]:
        """Each (query, document) pair's score; the prompt tokens read."""
        if not documents:
            raise BadRequestError("nothing to score: no documents", param="documents")
        if len(queries) == 1:
            queries = queries * len(documents)
        if self.task == "classify":
            return await self._cross_encoder_scores(queries, documents, truncate)
        if self.task != "embed":
            raise BadRequestError(
                "scoring needs a cross-encoder (a one-label sequence classifier) or an "
                "embedding model (a bi-encoder such as all-MiniLM-L6-v2)", param="model")
        texts = list(dict.fromkeys([*queries, *documents]))  # each distinct text embedded once
        out = await self.embedding.create_embedding(EmbeddingRequest(
            model=model, input=texts, encoding_format="float", truncate_prompt_tokens=truncate))
        vectors = {text: data.embedding for text, data in zip(texts, out.data)}
        scores = [cosine(vectors[q], vectors[d])  # type: ignore[arg-type]
                  for q, d in zip(queries, documents)]
        return scores, out.usage.prompt_tokens

    async def _cross_encoder_scores(self, queries: list[str], documents: list[str],
                                    truncate: int | None) -> tuple[list[float], int]:
        try:
            check_cross_encoder(self.config)
        except ValueError as e:
            raise BadRequestError(str(e), param="model") from e
        tokenizer = self.classification.tokenizer
        try:
            prompts = [cross_encoder_prompt(tokenizer, self.config, q, d, truncate)
                       for q, d in zip(queries, documents)]
        except ValueError as e:
            raise BadRequestError(str(e), param="truncate_prompt_tokens") from e
        outputs = await self.classification.classify(prompts, random_id("score"))
        tokens = sum(len(p["prompt_token_ids"]) for p in prompts)
        return [o.outputs.probs[0] for o in outputs], tokens

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
        """/pooling: the pooled output of each input, in vLLM's shape (a classifier's: its
        label scores)."""
        if self.task == "classify":
            out_classes = await self.classification.create_classify(ClassificationRequest(
                model=request.model, input=request.input,
                truncate_prompt_tokens=request.truncate_prompt_tokens))
            return PoolingResponse(model=out_classes.model, usage=out_classes.usage, data=[
                PoolingData(index=d.index, data=d.probs) for d in out_classes.data])
        if self.task != "embed":
            raise BadRequestError("/pooling needs a pooling model (embeddings or a classifier)",
                                  param="model")
        out = await self.embedding.create_embedding(request)
        return PoolingResponse(model=out.model, usage=out.usage, data=[
            PoolingData(index=d.index, data=d.embedding) for d in out.data])
