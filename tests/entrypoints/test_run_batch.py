"""`pagedllm run-batch` on the tiny random Llama: every input line gets one OpenAI batch output
line (answers equal to what `pagedllm serve` gives the same bodies; bad lines and bad requests as
error lines with the server's status and error body), and an interrupted output resumes: lines
already answered are kept byte for byte and not run again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

pytestmark = pytest.mark.timeout(300)

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "What is a fox?"}],
        "max_tokens": 6, "temperature": 0}
COMPLETION = {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 6,
              "temperature": 0}
RESPONSE = {"model": "tiny", "input": "Tell me a story.", "max_output_tokens": 6,
            "temperature": 0}


def request(custom_id: str, url: str, body: dict) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


LINES = [
    request("chat", "/v1/chat/completions", CHAT),
    request("completion", "/v1/completions", COMPLETION),
    request("response", "/v1/responses", RESPONSE),
    request("bad-temperature", "/v1/chat/completions", {**CHAT, "temperature": -1}),
    request("bad-url", "/v1/images", {}),
    request("streamed", "/v1/completions", {**COMPLETION, "stream": True}),
    request("unknown-model", "/v1/completions", {**COMPLETION, "model": "other"}),
    request("chat-2", "/v1/chat/completions", {**CHAT, "max_tokens": 3}),
]
EXPECTED_STATUS = {"chat": 200, "completion": 200, "response": 200, "bad-temperature": 400,
                   "bad-url": 400, "streamed": 400, "unknown-model": 404, "chat-2": 200}


@pytest.fixture(scope="module")
def server(shared_tiny_server):
    return shared_tiny_server


def run_batch(model_dir: str, input_path, output_path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pagedllm.entrypoints.cli.main", "run-batch", "-i",
           str(input_path), "-o", str(output_path), "--model", model_dir,
           "--served-model-name", "tiny", "--kv-cache-memory", "16MiB", "--no-progress"]
    env = {**os.environ, "PAGEDLLM_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)


def by_id(path) -> dict[str | None, dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len({line["custom_id"] for line in lines}) == len(lines), "a custom_id twice"
    return {line["custom_id"]: line for line in lines}


def test_every_line_answered_as_the_server_would(server, tiny_llama_dir, tmp_path):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("\n".join(LINES) + "\n")
    result = run_batch(tiny_llama_dir, source, out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{len(LINES)} line(s) answered, 0 already" in result.stdout
    answers = by_id(out)
    assert {k: v["response"]["status_code"] for k, v in answers.items()} == EXPECTED_STATUS
    assert all(v["error"] is None for v in answers.values())
    assert "temperature" in answers["bad-temperature"]["response"]["body"]["error"]["message"]
    with httpx.Client(base_url=server.url, timeout=60) as http:
        chat = http.post("/v1/chat/completions", json=CHAT).json()
        completion = http.post("/v1/completions", json=COMPLETION).json()
        response = http.post("/v1/responses", json=RESPONSE).json()
    body = answers["chat"]["response"]["body"]
    assert body["choices"][0]["message"] == chat["choices"][0]["message"]
    assert body["usage"] == chat["usage"]
    assert (answers["completion"]["response"]["body"]["choices"][0]["text"]
            == completion["choices"][0]["text"])
    assert (answers["response"]["response"]["body"]["output"][0]["content"][0]["text"]
            == response["output"][0]["content"][0]["text"])

    # interrupted after three lines and half of the fourth: resumes, keeps those three as they
    # were, runs the rest once
    first_three = "".join(out.read_text().splitlines(keepends=True)[:3])
    fourth = out.read_text().splitlines(keepends=True)[3]
    out.write_text(first_three + fourth[:len(fourth) // 2])
    result = run_batch(tiny_llama_dir, source, out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.read_text().startswith(first_three)
    resumed = by_id(out)
    kept = {json.loads(line)["custom_id"] for line in first_three.splitlines()}
    assert set(resumed) == set(answers)
    assert f"{len(LINES) - 3} line(s) answered, 3 already" in result.stdout
    for custom_id in kept:
        assert resumed[custom_id] == answers[custom_id]
    # all answered: nothing runs (the engine does not even start)
    result = run_batch(tiny_llama_dir, source, out)
    assert "0 line(s) answered" in result.stdout


@pytest.mark.parametrize(("lines", "needle"), [
    ([LINES[0], LINES[0]], "appears twice"),
    ([LINES[0], "{not json"], "line 2: not JSON"),
    ([json.dumps({"url": "/v1/completions", "body": {}})], "custom_id"),
    ([json.dumps({"custom_id": "a", "method": "GET", "url": "/v1/models", "body": {}})],
     "method must be POST"),
])
def test_files_that_are_not_batch_files_are_refused(lines, needle):
    from pagedllm.entrypoints.openai.run_batch import parse_input

    with pytest.raises(ValueError, match=needle):
        parse_input("\n".join(lines) + "\n")


def test_the_command_refuses_a_bad_file_before_running(tiny_llama_dir, tmp_path):
    """Through the CLI (one case: the parsing is the unit above): a non-zero exit, the reason on
    stderr, and no output file."""
    source, out = tmp_path / "bad.jsonl", tmp_path / "out.jsonl"
    source.write_text(LINES[0] + "\n{not json\n")
    result = run_batch(tiny_llama_dir, source, out)
    assert result.returncode != 0 and "line 2: not JSON" in result.stderr, result.stderr[-2000:]
    assert not out.exists()
