"""QLoRA-style serving of a GGUF base: a tiny Llama written as llama.cpp writes it, its seven
projections in Q4_1 blocks (the SmolLM2 file's type), an adapter in float on top. The engine
keeps the blocks and runs them as it does without an adapter; with the adapter its greedy
scores agree with the float model of the same (dequantized) weights under that adapter."""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from pagedllm import LLM, LoRARequest, SamplingParams
from tests.engine_internals import loaded_model
from tests.lora.adapters import make_adapter
from tests.model_executor.test_gguf import _llama_cpp_permute
from tests.models.gguf_fixtures import write_tokenizer
from tests.models.test_gguf_families import _LLAMA_BLOCK, _gguf_name
from tests.quantization.checkpoints import _copy_dir_with, _load_state, random_prompts

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _q4_1(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Q4_1 blocks, their dequantized values)."""
    from gguf import GGMLQuantizationType, quants

    blocks = quants.quantize(array, GGMLQuantizationType.Q4_1)
    return blocks, quants.dequantize(blocks, GGMLQuantizationType.Q4_1)


def write_q4_1_gguf(hf_dir: str, out_dir: str) -> tuple[str, str]:
    """(the GGUF file, an HF dir of the float weights the GGUF's blocks decode to)."""
    from gguf import GGMLQuantizationType, GGUFWriter

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(hf_dir, "config.json")) as f:
        config = json.load(f)
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    path = os.path.join(out_dir, "tiny-llama.Q4_1.gguf")
    writer = GGUFWriter(path, "llama")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(config.get("rope_theta") or config["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    write_tokenizer(writer, hf_dir)
    reference = {}
    for name, weight in _load_state(hf_dir).items():
        array = weight.numpy()
        gguf_name = _gguf_name(name, _LLAMA_BLOCK)
        if name.split(".")[-2] not in PROJECTIONS:
            writer.add_tensor(gguf_name, np.ascontiguousarray(array, dtype=np.float32))
            reference[name] = weight
            continue
        # llama.cpp's rows for q/k; each row's blocks are its own, so the decoded weights are
        # the HF rows' decoded weights
        if name.endswith("q_proj.weight"):
            array = _llama_cpp_permute(array, heads)
        elif name.endswith("k_proj.weight"):
            array = _llama_cpp_permute(array, kv_heads)
        blocks, _ = _q4_1(np.ascontiguousarray(array))
        writer.add_tensor(gguf_name, blocks, raw_dtype=GGMLQuantizationType.Q4_1)
        reference[name] = torch.from_numpy(_q4_1(weight.numpy())[1].copy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, _copy_dir_with(hf_dir, os.path.join(out_dir, "reference"), reference, None)


def _greedy(llm: LLM, prompts, lora) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False,
                           lora_request=lora)
    return [list(o.outputs[0].token_ids) for o in outputs]


def _scores(llm: LLM, sequences, lora) -> np.ndarray:
    """The logprob the model gives each next token of `sequences` (teacher forcing), all
    sequences' positions in one array."""
    params = SamplingParams(max_tokens=1, prompt_logprobs=1)
    outputs = llm.generate([{"prompt_token_ids": s} for s in sequences], params,
                           use_tqdm=False, lora_request=lora)
    return np.concatenate([[entry[token].logprob for entry, token in
                            zip(o.prompt_logprobs[1:], s[1:])] for o, s in zip(outputs, sequences)])


def test_adapter_over_q4_1_gguf_base(tiny_llama_dir, tmp_path):
    """Teacher-forced on the float model's greedy text, the Q4_1 base under the adapter scores
    every token as the float model under the adapter does, within the quantization's error
    (0.1 nats; the two base models alone differ by up to 0.043 here), while the adapter moves
    the scores by far more than that."""
    # NOTE: a modest update (alpha 1, rank 8: B A / 8), as trained adapters are: the tests'
    # random adapters at scaling 2 inflate the activations, and with them the Q4_1 kernel's
    # int8 rounding of its inputs (0.38 nats measured for tests/lora's "all7")
    lora = LoRARequest("a", 1, make_adapter(tiny_llama_dir, str(tmp_path / "a"), seed=5,
                                            rank=8, alpha=1.0))
    gguf_path, reference = write_q4_1_gguf(tiny_llama_dir, str(tmp_path / "gguf"))
    kwargs = dict(kv_cache_memory="16MiB", max_model_len=128, enable_lora=True)
    quantized = LLM(gguf_path, **kwargs)
    assert quantized.llm_engine.config.model.quantization == "gguf"
    model = loaded_model(quantized)
    assert any(t.dtype == torch.uint8 for t in [*model.parameters(), *model.buffers()])
    floats = LLM(reference, **kwargs)
    prompts = random_prompts([7, 23, 40])
    sequences = [p + g for p, g in zip(prompts, _greedy(floats, prompts, lora))]
    want = _scores(floats, sequences, lora)
    assert np.abs(_scores(quantized, sequences, lora) - want).max() < 0.1
    assert np.abs(_scores(quantized, sequences, None) - want).max() > 1.0
