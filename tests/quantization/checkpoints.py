"""Tiny quantized checkpoints for tests, built from the tiny random Llama:

* dequantized_reference_dir: the float checkpoint whose linear weights are what a quantization
  method computes with (the reference its quantized run must match);
* write_awq_checkpoint / write_gptq_checkpoint: the tiny model's random weights quantized to 4-bit
  codes with per-group fp16 scales and zero points, packed the way AutoAWQ ("gemm") and AutoGPTQ
  store them (written independently of the engine's unpacking), plus the float reference
  checkpoint holding exactly the weights those codes encode.
"""

from __future__ import annotations

import json
import os
import random
import shutil

import torch

LINEAR_SUFFIXES = (
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
    "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)  # fmt: skip
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
_INPUT_GROUP = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gate_up",
                "up_proj": "gate_up"}  # fmt: skip


def random_prompts(lengths: list[int], vocab: int = 384, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


def _load_state(model_dir: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(model_dir, "model.safetensors"))


def _copy_dir_with(model_dir: str, out_dir: str, state: dict, quant_config: dict | None) -> str:
    from safetensors.torch import save_file

    shutil.copytree(model_dir, out_dir, dirs_exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()},
              os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})  # fmt: skip
    with open(os.path.join(out_dir, "config.json")) as f:
        config = json.load(f)
    if quant_config is not None:
        config["quantization_config"] = quant_config
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f)
    return out_dir


def _is_linear(name: str, keep_float: tuple[str, ...] = ()) -> bool:
    from pagedllm.model_executor.quantization.base import is_layer_skipped

    return name.endswith(LINEAR_SUFFIXES) and not is_layer_skipped(name, keep_float)


_VOCAB_TABLES = ("model.embed_tokens.weight", "lm_head.weight")
ROUTER_SUFFIXES = ("mlp.gate.weight", "block_sparse_moe.gate.weight", "shared_expert_gate.weight")
"""MoE routers: float under int8/int4."""


def _quantized_by_weight_only(name: str, tensor: torch.Tensor, keep_float: tuple[str, ...]):
    """A linear weight (of any family: every 2-D weight but the vocabulary tables and the MoE
    routers; MoE experts included) that int8/int4 quantize, not named in keep_float."""
    from pagedllm.model_executor.quantization.base import is_layer_skipped

    return (
        name.endswith(".weight") and tensor.dim() == 2 and name not in _VOCAB_TABLES
        and not name.endswith(ROUTER_SUFFIXES) and not is_layer_skipped(name, keep_float)
    )  # fmt: skip


def dequantized_reference_dir(
    model_dir: str, method: str, tmp: str, keep_float: tuple[str, ...] = ()
) -> str:
    """keep_float: module names the quantized run leaves float (modules_to_not_convert)."""
    from pagedllm.kernels import cpu_kernels_available
    from pagedllm.model_executor.quantization.base import is_layer_skipped
    from pagedllm.model_executor.quantization.group_quant import (
        quantize_int8_grouped,
        quantize_int8_per_channel,
    )
    from pagedllm.model_executor.quantization.weight_only_int4 import quantize_int4

    quantize = {"int8": quantize_int8_per_channel,
                "int4": lambda w: quantize_int4(w, 32)}[method]  # fmt: skip

    def reference(name: str, w: torch.Tensor) -> torch.Tensor:
        if _quantized_by_weight_only(name, w, keep_float):
            return quantize(w).dequantize()
        table = name in _VOCAB_TABLES and not is_layer_skipped(name, keep_float)
        if cpu_kernels_available() and table:  # held int8 per 32 columns too
            return quantize_int8_grouped(w, 32).dequantize()
        return w

    state = {k: reference(k, v) for k, v in _load_state(model_dir).items()}
    return _copy_dir_with(model_dir, os.path.join(tmp, f"{method}_reference"), state, None)


# ---- AWQ / GPTQ ------------------------------------------------------------------------------


def _quantize_4bit(w_t: torch.Tensor, g_idx: torch.Tensor, num_groups: int):
    """W^T [K, N] -> codes [K, N] 0..15, zeros [G, N] 1..15, fp16 scales [G, N] (asymmetric
    min/max per group, as AutoAWQ/AutoGPTQ do), and the W^T they encode."""
    lo = torch.stack([w_t[g_idx == g].amin(0) for g in range(num_groups)])  # [G, N]
    hi = torch.stack([w_t[g_idx == g].amax(0) for g in range(num_groups)])
    scales = ((hi - lo) / 15).clamp_min(1e-4).half()
    zeros = torch.round(-lo / scales.float()).clamp(1, 15).long()  # 1..: v1's z - 1 stays >= 0
    codes = torch.round(w_t / scales.float()[g_idx]).long() + zeros[g_idx]
    codes = codes.clamp(0, 15)
    return codes, zeros, scales, (codes - zeros[g_idx]).float() * scales.float()[g_idx]


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 holding uint32 bit patterns -> int32 with the same bits."""
    return (words & 0xFFFFFFFF).to(torch.int64).apply_(lambda v: v - (1 << 32) if v >= 1 << 31
                                                       else v).to(torch.int32)  # fmt: skip


def pack_gptq_rows(codes: torch.Tensor) -> torch.Tensor:
    """[K, N] -> [K/8, N]: word [r, n] nibble i = codes[8r + i, n] (AutoGPTQ's pack)."""
    k, n = codes.shape
    words = torch.zeros(k // 8, n, dtype=torch.int64)
    for i in range(8):
        words |= codes[i::8].to(torch.int64) << (4 * i)
    return _to_int32(words)


def pack_cols(codes: torch.Tensor, order: list[int]) -> torch.Tensor:
    """[R, N] -> [R, N/8]: word [r, c] nibble i = codes[r, 8c + order[i]]."""
    r, n = codes.shape
    words = torch.zeros(r, n // 8, dtype=torch.int64)
    for i in range(8):
        words |= codes[:, order[i] :: 8].to(torch.int64) << (4 * i)
    return _to_int32(words)


def _write_4bit(model_dir, tmp, name, quant_config, pack_layer, g_idx_of, group_size, seed=0,
                keep_float: tuple[str, ...] = ()):  # fmt: skip
    """keep_float: linear layers left float (listed in the config's modules_to_not_convert)."""
    gen = torch.Generator().manual_seed(seed)
    quantized, reference, g_idx_cache = {}, {}, {}
    if keep_float:
        quant_config = {**quant_config, "modules_to_not_convert": list(keep_float)}
    for key, value in _load_state(model_dir).items():
        if not _is_linear(key, keep_float):
            quantized[key] = reference[key] = value
            continue
        n, k = value.shape
        # q/k/v (and gate/up) see the same input: GPTQ gives them the same act-order g_idx
        shared_input = key.rsplit(".", 2)[0] + _INPUT_GROUP.get(key.split(".")[-2], key)
        if shared_input not in g_idx_cache:
            g_idx_cache[shared_input] = g_idx_of(k, gen)
        g_idx = g_idx_cache[shared_input]
        num_groups = k // group_size
        codes, zeros, scales, w_t = _quantize_4bit(value.t().float(), g_idx, num_groups)
        prefix = key.removesuffix(".weight")
        for suffix, tensor in pack_layer(codes, zeros, scales, g_idx).items():
            quantized[f"{prefix}.{suffix}"] = tensor
        reference[key] = w_t.t().contiguous()
    qdir = _copy_dir_with(model_dir, os.path.join(tmp, name), quantized, quant_config)
    rdir = _copy_dir_with(model_dir, os.path.join(tmp, f"{name}_reference"), reference, None)
    return qdir, rdir


def write_awq_checkpoint(model_dir: str, tmp: str, group_size: int = 32,
                         keep_float: tuple[str, ...] = ()):  # fmt: skip
    def pack(codes, zeros, scales, g_idx):
        return {"qweight": pack_cols(codes, AWQ_ORDER), "qzeros": pack_cols(zeros, AWQ_ORDER),
                "scales": scales}  # fmt: skip

    config = {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True,
              "version": "gemm"}  # fmt: skip
    contiguous = lambda k, gen: torch.arange(k) // group_size  # noqa: E731
    return _write_4bit(model_dir, tmp, "awq", config, pack, contiguous, group_size,
                       keep_float=keep_float)  # fmt: skip


def write_gptq_checkpoint(model_dir: str, tmp: str, group_size: int = 32, act_order=False,
                          checkpoint_format: str = "gptq"):  # fmt: skip
    offset = 1 if checkpoint_format == "gptq" else 0

    def pack(codes, zeros, scales, g_idx):
        qzeros = pack_cols(zeros - offset, list(range(8)))  # sequential nibbles
        return {
            "qweight": pack_gptq_rows(codes),
            "qzeros": qzeros,
            "scales": scales,
            "g_idx": g_idx.to(torch.int32),
        }

    def g_idx_of(k, gen):
        if not act_order:
            return torch.arange(k) // group_size
        # act-order: rows are quantized in a permuted order, group = position in it // size
        order = torch.randperm(k, generator=gen)
        g_idx = torch.empty(k, dtype=torch.long)
        g_idx[order] = torch.arange(k) // group_size
        return g_idx

    config = {"quant_method": "gptq", "bits": 4, "group_size": group_size, "desc_act": act_order,
              "sym": False, "checkpoint_format": checkpoint_format}  # fmt: skip
    name = f"gptq_{checkpoint_format}_{'act' if act_order else 'seq'}"
    return _write_4bit(model_dir, tmp, name, config, pack, g_idx_of, group_size)


# ---- running ---------------------------------------------------------------------------------


@torch.inference_mode()
def engine_logits(model_dir: str, prompts: list[list[int]], quantization: str | None):
    """Float32 prefill logits [len(prompt), vocab] of each prompt, through the engine's model."""
    from pagedllm.model_executor.model_loader import get_model
    from pagedllm.model_executor.model_loader.config import load_model_config
    from tests.model_executor.paged import PagedRunner

    config = load_model_config(model_dir, max_model_len=256, quantization=quantization or "none")
    model = get_model(config, "cpu")
    runner = PagedRunner(model, num_reqs=len(prompts))
    return runner.step(dict(enumerate(prompts)))


def greedy_with_logprobs(llm, prompts: list[list[int]], max_tokens: int = 20):
    from pagedllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, logprobs=2)
    return [o.outputs[0] for o in llm.generate(prompts, params, use_tqdm=False)]


NEAR_TIE = 0.05
"""Top-2 logprob gap under which a bf16-vs-fp32 difference may legitimately flip greedy."""


def assert_greedy_agrees(got, want, min_prompts_fully_equal: int = 1) -> list[int]:
    """Greedy outputs agree token for token, except that after a near-tie in the reference
    (top-2 gap < NEAR_TIE) the two may part; returns how many tokens agree per prompt."""
    agree = []
    for g, w in zip(got, want):
        n = next((i for i, (a, b) in enumerate(zip(g.token_ids, w.token_ids)) if a != b),
                 len(w.token_ids))  # fmt: skip
        agree.append(n)
        if n < len(w.token_ids):
            top2 = sorted((lp.logprob for lp in w.logprobs[n].values()), reverse=True)[:2]
            assert top2[0] - top2[1] < NEAR_TIE, f"token {n} differs; reference top-2 {top2}"
    assert sum(n == len(w.token_ids) for n, w in zip(agree, want)) >= min_prompts_fully_equal
    return agree
