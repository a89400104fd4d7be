"""A bad adapter is the caller's ValueError, raised when the request is added, naming what is
wrong; nothing of the call stays queued and the engine keeps serving."""

from __future__ import annotations

import json
import os

import pytest

from pagedllm import LLM, LoRARequest, SamplingParams
from pagedllm.lora.peft_config import read_adapter
from tests.lora.adapters import make_adapter

PARAMS = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    return LLM(tiny_llama_dir, kv_cache_memory="8MiB", enable_lora=True, max_loras=2,
               max_lora_rank=8)


def _assert_refused(llm: LLM, lora: LoRARequest, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        llm.generate([[5, 6, 7], [8, 9]], PARAMS, use_tqdm=False, lora_request=[None, lora])
    assert not llm.llm_engine.has_unfinished_requests()


def test_unknown_path(llm, tmp_path):
    _assert_refused(llm, LoRARequest("ghost", 1, str(tmp_path / "nope")), "adapter_config.json")


def test_rank_above_max(llm, tiny_llama_dir, tmp_path):
    path = make_adapter(tiny_llama_dir, str(tmp_path / "big"), seed=1, rank=16)
    _assert_refused(llm, LoRARequest("big", 1, path), "rank 16, more than max_lora_rank=8")


@pytest.mark.parametrize("overrides,match", [
    (dict(targets=["q_proj", "embed_tokens"]), "embed_tokens"),
    (dict(targets=["q_proj", "lm_head"]), "lm_head"),
    (dict(targets=["q_proj"], modules_to_save=["lm_head"]), "modules_to_save"),
    (dict(targets=["q_proj"], use_dora=True), "use_dora"),
])
def test_unsupported_targets(llm, tiny_llama_dir, tmp_path, overrides, match):
    path = make_adapter(tiny_llama_dir, str(tmp_path / "bad"), seed=1, rank=4, **overrides)
    _assert_refused(llm, LoRARequest("bad", 1, path), match)


def test_pickled_weights_are_never_read(llm, tiny_llama_dir, tmp_path):
    path = make_adapter(tiny_llama_dir, str(tmp_path / "bin"), seed=1, rank=4)
    os.rename(os.path.join(path, "adapter_model.safetensors"),
              os.path.join(path, "adapter_model.bin"))
    _assert_refused(llm, LoRARequest("bin", 1, path), "only safetensors")


def test_adapter_of_another_base_model(llm, tiny_model_factory, tmp_path):
    """Same module names, other widths: refused at intake, never loaded by the worker."""
    other = tiny_model_factory("LlamaConfig", intermediate_size=96)
    path = make_adapter(other, str(tmp_path / "other"), seed=1, rank=4)
    _assert_refused(llm, LoRARequest("other", 1, path), "another base model")


def test_lora_needs_enable_lora(tiny_llama_dir, tmp_path):
    path = make_adapter(tiny_llama_dir, str(tmp_path / "a"), seed=1, rank=4)
    plain = LLM(tiny_llama_dir, kv_cache_memory="8MiB")
    _assert_refused(plain, LoRARequest("a", 1, path), "not enabled")


def test_engine_serves_after_a_refusal(llm, tiny_llama_dir, tmp_path):
    good = make_adapter(tiny_llama_dir, str(tmp_path / "good"), seed=2, rank=4)
    _assert_refused(llm, LoRARequest("ghost", 2, str(tmp_path / "nope")), "adapter_config")
    out = llm.generate([[5, 6, 7]], PARAMS, use_tqdm=False,
                       lora_request=LoRARequest("good", 3, good))
    assert len(out[0].outputs[0].token_ids) == 2


def test_rslora_scaling(tiny_llama_dir, tmp_path):
    path = make_adapter(tiny_llama_dir, str(tmp_path / "rs"), seed=1, rank=16, alpha=8.0,
                        use_rslora=True)
    adapter = read_adapter(LoRARequest("rs", 1, path), max_lora_rank=16)
    assert adapter.scaling == pytest.approx(8.0 / 4.0)
    with open(os.path.join(path, "adapter_config.json")) as f:
        config = json.load(f)
    config["use_rslora"] = False
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    assert read_adapter(LoRARequest("rs", 1, path), 16).scaling == pytest.approx(8.0 / 16)
