"""What the tiny-GGUF tests share: the tiny tokenizer as GGUF byte-level BPE, the converter's
expert stacking, the tensor-writing tail of a GGUF writer (HF names -> GGUF names, optionally in
Q8_0 blocks), the module fixture's loop that writes one file per case from a tiny random HF model,
the engine-and-logits comparisons against that HF model, and a Q8_0 file run quantized against
the same file dequantized at load."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import numpy as np
import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.model_executor.layers.linear import UnquantizedLinearMethod
from tests.engine_internals import loaded_model
from tests.models.family_check import (
    assert_engine_matches_hf,
    assert_logits_match_hf,
    random_prompts,
)

TensorSplit = Callable[[str, np.ndarray], "dict[str, np.ndarray] | None"]
"""(HF name, tensor) -> the converter's tensors for it, or None: not this hook's to change."""


def write_sentencepiece_gguf(path: str, arch: str, tokens: list[str], scores: list[float],
                             token_types: list[int], configure: Callable | None = None) -> str:
    """A tokenizer-only GGUF of `arch` as the Gemma converters write theirs: a sentencepiece
    ("llama") vocabulary without merges, pad 0 / eos 1 / bos 2 / unk 3, dummy one-layer
    hyperparameters and a zero embedding; `configure(writer)` adds the caller's keys."""
    from gguf import GGUFWriter

    writer = GGUFWriter(path, arch)
    writer.add_block_count(1)
    writer.add_context_length(32)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(8)
    writer.add_head_count(1)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(token_types)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    if configure is not None:
        configure(writer)
    writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tokenizer(writer, model_dir: str) -> None:
    """The tiny byte-level BPE tokenizer of model_dir as llama.cpp's converter writes a "gpt2"
    vocabulary (merges, control tokens, BOS / EOS / PAD)."""
    with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    vocab = dict(tok["model"]["vocab"])
    special = {t["content"]: t["id"] for t in tok["added_tokens"]}
    vocab.update(special)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])  # control / normal
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m
                             for m in tok["model"]["merges"]])  # fmt: skip
    writer.add_bos_token_id(special["<|im_start|>"])
    writer.add_eos_token_id(special["<|im_end|>"])
    writer.add_pad_token_id(special["<|endoftext|>"])
    writer.add_add_bos_token(False)


def converter_tensors(tensors: dict[str, np.ndarray],
                      split: TensorSplit = lambda name, array: None) -> dict[str, np.ndarray]:
    """HF tensors as llama.cpp's converter emits them for a fine-grained MoE (under HF-like
    names, mapped to GGUF names by the writer): the routed experts stacked per projection
    ([E, ...]), the router's score-correction bias as `e_score_correction.bias`; `split` may
    replace any other tensor by its own."""
    out, experts = {}, {}
    for name, array in tensors.items():
        stem, _, proj = name.partition(".mlp.experts.")
        if proj:  # "<e>.gate_proj.weight"
            expert, _, leaf = proj.partition(".")
            experts.setdefault(f"{stem}.mlp.experts.{leaf}", {})[int(expert)] = array
        elif (replaced := split(name, array)) is not None:
            out.update(replaced)
        elif name.endswith("e_score_correction_bias"):
            out[name.replace("e_score_correction_bias", "e_score_correction.bias")] = array
        else:
            out[name] = array
    for name, per_expert in experts.items():
        out[name] = np.stack([per_expert[e] for e in range(len(per_expert))])
    return out


def write_tensors(writer, names, tensors: dict[str, np.ndarray],
                  q8_0: Callable[[str, np.ndarray], bool] = lambda gguf_name, array: False,
                  rename: Callable[[str], str | None] | None = None) -> None:
    """Each tensor under its GGUF name, in Q8_0 blocks where q8_0(GGUF name, array) says so, else
    F32; then the file is written and closed. The GGUF name: rename(HF name) where given (a
    whole name, suffix included), else the gguf package's TensorNameMap `names` on the HF name's
    stem plus its suffix."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    for name, array in tensors.items():
        if rename is not None:
            gguf_name = rename(name)
        else:
            stem, _, suffix = name.rpartition(".")
            gguf_stem = names.get_name(stem)
            gguf_name = None if gguf_stem is None else f"{gguf_stem}.{suffix}"
        assert gguf_name is not None, name
        array = np.ascontiguousarray(array, dtype=np.float32)
        if q8_0(gguf_name, array):
            writer.add_tensor(gguf_name, quantize(array, GGMLQuantizationType.Q8_0),
                              raw_dtype=GGMLQuantizationType.Q8_0)  # fmt: skip
        else:
            writer.add_tensor(gguf_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_gguf_files(tiny_model_factory, tmp_path_factory,
                     cases: dict[str, tuple[str, dict]],
                     write: Callable[[str, str, str], str],
                     file_name: Callable[[str], str]) -> dict[str, tuple[str, str]]:
    """case -> (the GGUF file write(hf_dir, path, case) made, the HF model dir it was written
    from), for each case's (config class, overrides)."""
    files = {}
    for case, (config_cls, overrides) in cases.items():
        hf_dir = tiny_model_factory(config_cls, **overrides)
        path = str(tmp_path_factory.mktemp(f"{case}_gguf") / file_name(case))
        files[case] = (write(hf_dir, path, case), hf_dir)
    return files


def hf_comparison_tests(cases: list[str]):
    """The two tests each GGUF module runs on its `gguf_files` fixture, parametrized by case:
    greedy tokens through the whole engine, and prefill logits, equal to the HF model's.
    Use: `test_engine_matches_hf, test_logits_match_hf = hf_comparison_tests(CASES)`."""

    @pytest.mark.parametrize("case", cases)
    def test_engine_matches_hf(gguf_files, case):
        path, reference_dir = gguf_files[case]
        assert_engine_matches_hf(path, reference_dir=reference_dir)

    @pytest.mark.parametrize("case", cases)
    def test_logits_match_hf(gguf_files, case):
        path, reference_dir = gguf_files[case]
        assert_logits_match_hf(path, reference_dir=reference_dir)

    return test_engine_matches_hf, test_logits_match_hf


def assert_q8_0_equals_dequantized(path: str) -> None:
    """A Q8_0 file run with its linears kept in their blocks (--quantization gguf) gives the
    greedy tokens, and logprobs within 2e-3, of the same file dequantized at load."""
    prompts = random_prompts([5, 19], 300)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=0)
    runs = {}
    for quantization in ("gguf", "none"):
        llm = LLM(path, quantization=quantization, kv_cache_memory="4MiB")
        qkv = loaded_model(llm).model.layers[0].self_attn.qkv_proj
        assert isinstance(qkv.quant_method, UnquantizedLinearMethod) == (quantization == "none")
        runs[quantization] = llm.generate(prompts, params, use_tqdm=False)
    for quantized, dequantized in zip(runs["gguf"], runs["none"]):
        assert quantized.outputs[0].token_ids == dequantized.outputs[0].token_ids
        ours, ref = (torch.tensor([step[t].logprob for step, t in
                                   zip(o.outputs[0].logprobs, o.outputs[0].token_ids)])
                     for o in (quantized, dequantized))
        torch.testing.assert_close(ours, ref, atol=2e-3, rtol=0)
