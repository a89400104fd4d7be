"""/score and /rerank (vLLM's, plus Jina's and Cohere's rerank routes) on a real `pagedllm serve
all-MiniLM-L6-v2` (a bi-encoder): scores are the cosine similarities of /v1/embeddings' vectors,
reranking orders by them with top_n and document objects; bad requests, and scoring on a
generation model, are 400s."""

from __future__ import annotations

import math

import httpx
import pytest

pytestmark = pytest.mark.timeout(300)

MODEL = "all-MiniLM-L6-v2"
QUERY = "Where do pandas live?"
DOCUMENTS = ["Giant pandas live in the mountain forests of central China.",
             "The stock market fell sharply on Tuesday.",
             "Pandas eat bamboo in the forests where they live."]


@pytest.fixture(scope="module")
def embed_server(shared_minilm_server):
    return shared_minilm_server


@pytest.fixture(scope="module")
def http(embed_server):
    with httpx.Client(base_url=embed_server.url, timeout=60) as c:
        yield c


def cosines(http, query, documents) -> list[float]:
    data = http.post("/v1/embeddings", json={"model": MODEL, "input": [query, *documents],
                                             "encoding_format": "float"}).json()["data"]
    q = data[0]["embedding"]

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(
            sum(x * x for x in a) * sum(y * y for y in b))

    return [cos(q, d["embedding"]) for d in data[1:]]


def test_score_is_the_cosine_of_the_embeddings(http):
    expected = cosines(http, QUERY, DOCUMENTS)
    for path in ("/score", "/v1/score"):
        body = http.post(path, json={"model": MODEL, "text_1": QUERY,
                                     "text_2": DOCUMENTS}).json()
        assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1, 2]
        assert all(abs(d["score"] - e) < 1e-5 for d, e in zip(body["data"], expected)), body
        assert body["usage"]["prompt_tokens"] > 0
    # pairwise (one query per document), and vLLM's newer field names
    pairs = http.post("/score", json={"model": MODEL, "queries": [QUERY, "stocks"],
                                      "documents": DOCUMENTS[:2]}).json()["data"]
    assert abs(pairs[0]["score"] - expected[0]) < 1e-5
    assert abs(pairs[1]["score"] - cosines(http, "stocks", DOCUMENTS[1:2])[0]) < 1e-5
    # the scores mean something: the panda sentences beat the stock market one
    assert min(expected[0], expected[2]) > expected[1]


def test_rerank_orders_by_score(http):
    expected = cosines(http, QUERY, DOCUMENTS)
    order = sorted(range(3), key=lambda i: -expected[i])
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        body = http.post(path, json={"model": MODEL, "query": QUERY,
                                     "documents": DOCUMENTS}).json()
        assert [r["index"] for r in body["results"]] == order
        assert [r["document"]["text"] for r in body["results"]] == [DOCUMENTS[i] for i in order]
        assert all(abs(r["relevance_score"] - expected[r["index"]]) < 1e-5
                   for r in body["results"])
        assert body["usage"]["total_tokens"] > 0
    # Cohere's shape: document objects, top_n, no documents back
    top = http.post("/v2/rerank", json={
        "model": MODEL, "query": QUERY, "documents": [{"text": d} for d in DOCUMENTS],
        "top_n": 1, "return_documents": False}).json()["results"]
    assert len(top) == 1 and top[0]["index"] == order[0] and top[0]["document"] is None


def test_pooling_returns_the_embeddings(http):
    texts = ["Hello world", DOCUMENTS[0]]
    pooled = http.post("/pooling", json={"model": MODEL, "input": texts}).json()
    embedded = http.post("/v1/embeddings", json={"model": MODEL, "input": texts,
                                                 "encoding_format": "float"}).json()
    assert [d["object"] for d in pooled["data"]] == ["pooling", "pooling"]
    # the same bits: a text's embedding does not depend on what the engine packed beside it
    assert [d["data"] for d in pooled["data"]] == [d["embedding"] for d in embedded["data"]]
    assert pooled["usage"] == embedded["usage"]


@pytest.mark.parametrize(("path", "body", "needle"), [
    ("/score", {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, "text_1"),
    ("/score", {"text_1": [], "text_2": ["c"]}, "text_1"),
    ("/score", {"text_1": "a"}, "text_2"),
    ("/rerank", {"query": "a", "documents": []}, "documents"),
    ("/rerank", {"query": "a", "documents": [{"title": "x"}]}, "documents[0]"),
    ("/rerank", {"query": "a", "documents": ["b"], "top_n": -1}, "top_n"),
    ("/rerank", {"documents": ["b"]}, "query"),
    ("/rerank", {"query": "a", "documents": ["b"], "truncate_prompt_tokens": 0},
     "truncate_prompt_tokens"),
])
def test_bad_requests_are_400(http, path, body, needle):
    response = http.post(path, json={"model": MODEL, **body})
    assert response.status_code == 400 and needle in response.json()["error"]["message"], (
        response.text)


@pytest.fixture(scope="module")
def generation_server(shared_tiny_server):
    return shared_tiny_server


def test_a_generation_model_cannot_score(generation_server):
    response = httpx.post(f"{generation_server.url}/rerank",
                          json={"model": "tiny", "query": "a", "documents": ["b"]})
    assert response.status_code == 400 and "embedding model" in response.json()["error"]["message"]
    pooling = httpx.post(f"{generation_server.url}/pooling", json={"model": "tiny", "input": "a"})
    assert pooling.status_code == 400 and "pooling" in pooling.json()["error"]["message"]
