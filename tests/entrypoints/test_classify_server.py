"""/classify, and /score, /rerank and /pooling on a cross-encoder, through a real `pagedllm serve`
of a tiny random BertForSequenceClassification (one label): the scores equal transformers'
sigmoid of the pair's logit; bad requests and the wrong model kind are 400s."""

from __future__ import annotations

import httpx
import pytest
import torch

from tests.entrypoints.conftest import serve_module
from tests.models.test_classifiers import (
    CROSS_ENCODER,
    DOCUMENTS,
    QUERY,
    hf_logits,
    make_classifier,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory) -> str:
    return make_classifier(tmp_path_factory, "serve_ce", "BertConfig", CROSS_ENCODER)


@pytest.fixture(scope="module")
def http(cross_encoder, tmp_path_factory):
    for remote in serve_module(cross_encoder, tmp_path_factory, "classify",
                               "--served-model-name", "ce"):
        with httpx.Client(base_url=remote.url, timeout=60) as client:
            yield client


def test_score_and_rerank_are_the_cross_encoder_s(http, cross_encoder):
    expected = hf_logits(cross_encoder, [QUERY] * len(DOCUMENTS), DOCUMENTS)[:, 0].sigmoid()
    body = http.post("/v1/score", json={"model": "ce", "text_1": QUERY,
                                        "text_2": DOCUMENTS}).json()
    scores = torch.tensor([d["score"] for d in body["data"]])
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-4)
    assert body["usage"]["prompt_tokens"] > 0
    ranked = http.post("/rerank", json={"model": "ce", "query": QUERY, "documents": DOCUMENTS,
                                        "top_n": 2}).json()["results"]
    order = sorted(range(len(DOCUMENTS)), key=lambda i: -float(expected[i]))[:2]
    assert [r["index"] for r in ranked] == order
    assert ranked[0]["relevance_score"] == pytest.approx(float(expected[order[0]]), abs=1e-5)


def test_classify_gives_labels_and_scores(http, cross_encoder):
    texts = ["Hello world", QUERY]
    body = http.post("/classify", json={"model": "ce", "input": texts}).json()
    expected = hf_logits(cross_encoder, texts)[:, 0].sigmoid()
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["num_classes"] == 1 and d["label"] == "LABEL_0" for d in body["data"])
    torch.testing.assert_close(torch.tensor([d["probs"][0] for d in body["data"]]), expected,
                               atol=1e-5, rtol=1e-4)
    pooled = http.post("/pooling", json={"model": "ce", "input": texts}).json()
    # (the same scores; the encoder's batch, and so its last bits, may differ between the calls)
    torch.testing.assert_close(torch.tensor([d["data"] for d in pooled["data"]]),
                               torch.tensor([d["probs"] for d in body["data"]]),
                               atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("path", "body", "needle"), [
    ("/classify", {"input": []}, "input"),
    ("/classify", {"input": "word " * 200}, "maximum"),
    ("/score", {"text_1": QUERY, "text_2": ["a"], "truncate_prompt_tokens": 100000},
     "truncate_prompt_tokens"),
    ("/v1/embeddings", {"input": "a"}, "classify"),
    ("/v1/completions", {"prompt": "a"}, "classif"),
])
def test_bad_requests_are_400(http, path, body, needle):
    response = http.post(path, json={"model": "ce", **body})
    assert response.status_code == 400 and needle in response.json()["error"]["message"], (
        response.text)
    assert http.post("/classify", json={"model": "ce", "input": "still serving"}).status_code == 200
