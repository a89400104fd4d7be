"""Multi-LoRA through `pagedllm serve` with the official OpenAI client: adapters picked by
`model`, /v1/models, runtime load/unload while another request streams, and the 400/404s."""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from pagedllm import LLM, LoRARequest, SamplingParams
from tests.entrypoints.conftest import serve_module
from tests.lora.adapters import make_adapter

PROMPT = [5, 17, 42, 9, 100, 23, 7]
EXTRA = {"ignore_eos": True}


@pytest.fixture(scope="module")
def adapters(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_dir")
    outside = tmp_path_factory.mktemp("outside")
    paths = {
        "a": make_adapter(tiny_llama_dir, str(root / "a"), seed=1, rank=8),
        "b": make_adapter(tiny_llama_dir, str(root / "b"), seed=2, rank=4,
                          targets=["q_proj", "v_proj"]),
        "c": make_adapter(tiny_llama_dir, str(root / "c"), seed=3, rank=8),
        "big": make_adapter(tiny_llama_dir, str(root / "big"), seed=4, rank=32),
        "outside": make_adapter(tiny_llama_dir, str(outside / "x"), seed=5, rank=4),
    }
    os.symlink(paths["outside"], root / "link_out")
    paths["link_out"] = str(root / "link_out")
    return str(root), paths


@pytest.fixture(scope="module")
def server(tiny_llama_dir, adapters, tmp_path_factory):
    root, paths = adapters
    b = json.dumps({"name": "b", "path": paths["b"], "base_model_name": "tiny"})
    yield from serve_module(
        tiny_llama_dir, tmp_path_factory, "lora_server", "--served-model-name", "tiny",
        "--kv-cache-memory", "16MiB", "--enable-lora", "--max-loras", "2", "--max-cpu-loras", "2",
        "--max-lora-rank", "16",
        "--lora-modules", f"a={paths['a']}", b, "--allow-runtime-lora-updating",
        "--lora-dir", root)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def offline_text(tiny_llama_dir, adapters):
    """The offline engine's greedy text per adapter (offline = PEFT's merged model, tested in
    test_lora_engine.py)."""
    _, paths = adapters
    llm = LLM(tiny_llama_dir, kv_cache_memory="8MiB", enable_lora=True, max_loras=3)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    texts = {}
    for i, name in enumerate([None, "a", "b", "c"]):
        lora = name and LoRARequest(name, i, paths[name])
        texts[name] = llm.generate([PROMPT], params, use_tqdm=False,
                                   lora_request=lora)[0].outputs[0].text
    return texts


def _complete(client, model: str) -> str:
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0.0,
                                    extra_body=EXTRA)
    return out.choices[0].text


def test_models_lists_adapters_with_parent(client, adapters):
    _, paths = adapters
    cards = {m.id: m for m in client.models.list().data}
    assert {"tiny", "a", "b"} <= set(cards)
    assert cards["a"].parent == "tiny" and cards["b"].parent == "tiny"
    assert cards["a"].root == paths["a"]


def test_model_picks_the_adapter(client, offline_text):
    assert len(set(offline_text.values())) == 4, "adapters must change the output"
    assert _complete(client, "tiny") == offline_text[None]
    assert _complete(client, "a") == offline_text["a"]
    assert _complete(client, "b") == offline_text["b"]
    chat = client.chat.completions.create(model="a", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=4, temperature=0.0)
    assert chat.model == "a"


def test_adapters_and_base_in_one_batch(client, offline_text):
    """Requests under both adapters and the base at once (the engine batches them): each gets
    its own model's text."""
    names = ["a", "tiny", "b"] * 2
    with ThreadPoolExecutor(len(names)) as pool:
        texts = list(pool.map(lambda name: _complete(client, name), names))
    assert texts == [offline_text[None if n == "tiny" else n] for n in names]


def test_requests_per_adapter_metric(server, client):
    before = _lora_requests(server, "b")
    _complete(client, "b")
    _complete(client, "b")
    assert _lora_requests(server, "b") == before + 2


def _lora_requests(server, name: str) -> float:
    body = httpx.get(f"{server.url}/metrics").text
    for line in body.splitlines():
        if line.startswith("pagedllm:lora_requests_total{") and f'lora_name="{name}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        _complete(client, "nope")
    assert info.value.body["code"] == "model_not_found"


def test_load_and_unload_while_streaming(server, client, adapters, offline_text):
    _, paths = adapters
    stream = client.completions.create(model="a", prompt=PROMPT, max_tokens=64,
                                       temperature=0.0, stream=True, extra_body=EXTRA)
    chunks = []
    first = next(iter(stream))
    chunks.append(first.choices[0].text)
    loaded = threading.Event()

    def load() -> None:
        r = httpx.post(f"{server.url}/v1/load_lora_adapter",
                       json={"lora_name": "c", "lora_path": paths["c"]})
        assert r.status_code == 200, r.text
        loaded.set()

    thread = threading.Thread(target=load)
    thread.start()
    for chunk in stream:
        chunks.append(chunk.choices[0].text)
    thread.join()
    assert loaded.is_set()
    assert "".join(chunks).startswith(offline_text["a"])
    assert "c" in {m.id for m in client.models.list().data}
    assert _complete(client, "c") == offline_text["c"]
    r = httpx.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": "c"})
    assert r.status_code == 200, r.text
    with pytest.raises(openai.NotFoundError):
        _complete(client, "c")
    r = httpx.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": "c"})
    assert r.status_code == 404


@pytest.mark.parametrize("name,key,match", [
    ("big", "big", "max_lora_rank"),
    ("out", "outside", "outside the server's --lora-dir"),
    ("lnk", "link_out", "outside the server's --lora-dir"),
    ("ghost", None, "adapter_config.json"),
    ("a", "c", "already been loaded"),
])
def test_bad_loads_are_400(server, adapters, name, key, match):
    root, paths = adapters
    path = paths[key] if key else os.path.join(root, "ghost")
    r = httpx.post(f"{server.url}/v1/load_lora_adapter", json={"lora_name": name,
                                                                "lora_path": path})
    assert r.status_code == 400, r.text
    assert match in r.json()["error"]["message"]


def test_runtime_updates_are_off_by_default():
    from pagedllm.engine.arg_utils import EngineArgs
    from pagedllm.entrypoints.openai.api_server import build_app
    from pagedllm.entrypoints.openai.state import ServerSettings

    def paths(allow: bool) -> set[str]:
        settings = ServerSettings(EngineArgs(), ["m"], allow_runtime_lora_updating=allow)
        return set(build_app(settings).openapi()["paths"])

    assert "/v1/load_lora_adapter" not in paths(False)
    assert {"/v1/load_lora_adapter", "/v1/unload_lora_adapter"} <= paths(True)


def test_adapter_loads_and_evictions_in_metrics(server, client, adapters):
    """Three adapters used in turn with room for two in CPU memory (--max-cpu-loras 2): each use
    after the first two reads one from disk and evicts another."""
    _, paths = adapters
    r = httpx.post(f"{server.url}/v1/load_lora_adapter",
                   json={"lora_name": "d", "lora_path": paths["c"]})
    assert r.status_code == 200, r.text
    before = _metrics(server)
    for name in ["a", "b", "d", "a", "b", "d"]:
        _complete(client, name)
    after = _metrics(server)
    loads, cpu = "pagedllm:lora_loads_total", 'pagedllm:lora_evictions_total{tier="cpu"}'
    assert after[loads] - before.get(loads, 0.0) >= 4
    assert after[cpu] - before.get(cpu, 0.0) >= 4
    assert 'pagedllm:lora_evictions_total{tier="slot"}' in after
    r = httpx.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": "d"})
    assert r.status_code == 200, r.text


def test_lora_requests_info(server, client):
    """vLLM's info gauge names the adapters of the running requests while one streams."""
    stream = client.completions.create(model="b", prompt=PROMPT, max_tokens=400,
                                       temperature=0.0, stream=True, extra_body=EXTRA)
    next(iter(stream))
    info = [line for line in httpx.get(f"{server.url}/metrics").text.splitlines()
            if line.startswith("pagedllm:lora_requests_info{")]
    stream.close()
    assert len(info) == 1, info
    assert 'running_lora_adapters="b"' in info[0] and 'max_lora="2"' in info[0]


def _metrics(server) -> dict[str, float]:
    """Sample name with its labels (model_name dropped) -> value."""
    samples = {}
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("pagedllm:lora"):
            key, value = line.rsplit(" ", 1)
            key = key.replace('model_name="tiny",', "").replace('{model_name="tiny"}', "")
            samples[key] = float(value)
    return samples
