"""lm-eval's `local-completions` against a real `pagedllm serve` (tiny random Llama) with its
default tokenizer backend: it finds /tokenizer_info and /tokenize and tokenizes remotely (no local
copy of the tokenizer), scores a local multiple-choice jsonl task by loglikelihood (echo +
logprobs) and runs a generate_until one; the loglikelihoods it logs equal the ones computed here
from /v1/completions with the model's own tokenizer. Skipped where lm-eval is not installed
(`pip install "lm-eval[api]"`)."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import subprocess
import sys

import httpx
import pytest
from transformers import AutoTokenizer

pytestmark = [pytest.mark.timeout(600),
              pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None
                                 or importlib.util.find_spec("tenacity") is None,
                                 reason='lm-eval is not installed (pip install "lm-eval[api]")')]

DOCS = [
    {"question": "The quick brown fox jumps over the", "choices": [" lazy dog", " moon"],
     "answer": 0},
    {"question": "The capital of France is", "choices": [" Paris", " a fox", " 42"], "answer": 0},
    {"question": "Once upon a time, there lived an old", "choices": [" fisherman", " sea"],
     "answer": 0},
]
MC_TASK = """task: pagedllm_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
"""
GEN_TASK = """task: pagedllm_local_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{choices[answer]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="module")
def server(shared_tiny_server):
    return shared_tiny_server


def test_local_completions_with_the_remote_tokenizer(server, tiny_llama_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mc.yaml").write_text(MC_TASK.format(data=data))
    (tasks / "gen.yaml").write_text(GEN_TASK.format(data=data))
    out = tmp_path / "out"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "OPENAI_API_KEY": "EMPTY"}
    result = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args",
         f"model=tiny,base_url={server.url}/v1/completions,num_concurrent=1,max_retries=1",
         "--tasks", "pagedllm_local_mc,pagedllm_local_gen", "--include_path", str(tasks),
         "--output_path", str(out), "--log_samples"],
        capture_output=True, text=True, env=env, timeout=540)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "remote tokenizer" in log.lower(), log[-4000:]
    [results_file] = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    results = json.loads(open(results_file).read())["results"]
    assert 0.0 <= results["pagedllm_local_mc"]["acc,none"] <= 1.0
    assert "exact_match,none" in results["pagedllm_local_gen"]

    # What lm-eval logged per choice = sum of the continuation's logprobs, computed here with the
    # model's own tokenizer: the remote tokenization was the real one.
    [samples_file] = glob.glob(str(out / "**" / "samples_pagedllm_local_mc_*.jsonl"),
                               recursive=True)
    samples = [json.loads(line) for line in open(samples_file)]
    assert len(samples) == len(DOCS)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for sample in samples:
            doc = sample["doc"]
            for choice, response in zip(doc["choices"], sample["filtered_resps"]):
                context = tokenizer.encode(doc["question"], add_special_tokens=False)
                whole = tokenizer.encode(doc["question"] + choice, add_special_tokens=False)
                n = len(whole) - len(context)
                out_json = http.post("/v1/completions", json={
                    "model": "tiny", "prompt": whole, "max_tokens": 1, "temperature": 0,
                    "logprobs": 1, "echo": True}).json()
                logprobs = out_json["choices"][0]["logprobs"]["token_logprobs"]
                expected = sum(logprobs[len(whole) - n:len(whole)])
                assert abs(float(response[0]) - expected) < 1e-3, (doc, choice, response, expected)
