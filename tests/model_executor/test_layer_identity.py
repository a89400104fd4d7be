"""Every linear, embedding, LM head and MoE layer of every registered family carries its module
name as `prefix` and the tensor-parallel role of its place; the roles' per-rank shapes and
checkpoint slices (tp_size 1 today; 2 checks the slicing the distributed issue will use)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import transformers

from pagedllm.model_executor.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    LinearBase,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from pagedllm.model_executor.layers.mamba import MambaInProj
from pagedllm.model_executor.layers.moe import FusedMoE
from pagedllm.model_executor.models.registry import (
    CLASSIFIER_MODEL_REGISTRY,
    EMBEDDING_MODEL_REGISTRY,
    MODEL_REGISTRY,
)
from tests.conftest import TINY_LLAMA
from tests.models import (
    test_bloom,
    test_cohere,
    test_dbrx_glm4_moe,
    test_deepseek,
    test_encoder_decoder,
    test_falcon,
    test_gemma,
    test_glm4,
    test_gpt2,
    test_gpt_bigcode,
    test_gpt_neox,
    test_gptj,
    test_granite,
    test_granitemoe,
    test_olmo2,
    test_opt,
    test_phi,
    test_qwen,
    test_qwen_moe,
    test_stablelm,
)
from tests.models.test_mixtral import MIXTRAL
from tests.models.test_state_space_models import BAMBA, GRANITE_HYBRID, JAMBA, MAMBA, MAMBA2

# the multimodal tests' tiny towers (tests/multimodal/conftest.py builds them in fixtures)
_TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4}
_CLIP_VISION = {**_TOWER, "image_size": 28, "patch_size": 7, "projection_dim": 32,
                "model_type": "clip_vision_model"}
_DUAL_TEXT = {**_TOWER, "vocab_size": 384, "max_position_embeddings": 64}
_DUAL_VISION = {**_TOWER, "image_size": 28, "patch_size": 7}

FAMILIES: dict[str, list[tuple[str, dict]]] = {
    "LlamaForCausalLM": [("LlamaConfig", {}), ("LlamaConfig", {"tie_word_embeddings": True})],
    "MistralForCausalLM": [("MistralConfig", {"sliding_window": 8})],
    "Qwen2ForCausalLM": [test_qwen.VARIANTS["qwen2"], test_qwen.VARIANTS["qwen2_tied"]],
    "Qwen3ForCausalLM": [test_qwen.VARIANTS["qwen3_bias"]],
    "GemmaForCausalLM": [test_gemma.VARIANTS["gemma"]],
    "Gemma2ForCausalLM": [test_gemma.VARIANTS["gemma2"]],
    "Gemma3ForCausalLM": [test_gemma.VARIANTS["gemma3"]],
    "GPT2LMHeadModel": [("GPT2Config", v) for v in test_gpt2.VARIANTS.values()],
    "GPTNeoXForCausalLM": [("GPTNeoXConfig", v) for v in test_gpt_neox.VARIANTS.values()],
    "OPTForCausalLM": [("OPTConfig", v) for v in test_opt.VARIANTS.values()],
    "Phi3ForCausalLM": [("Phi3Config", {"partial_rotary_factor": 0.5})],
    "MixtralForCausalLM": [("MixtralConfig", MIXTRAL)],
    "Qwen2MoeForCausalLM": [test_qwen_moe.VARIANTS["qwen2_moe"]],
    "Qwen3MoeForCausalLM": [test_qwen_moe.VARIANTS["qwen3_moe"]],
    "BertModel": [("BertConfig", {"num_key_value_heads": None, "type_vocab_size": 2})],
    "RobertaModel": [("RobertaConfig", {"num_key_value_heads": None})],
    "XLMRobertaModel": [("XLMRobertaConfig", {"num_key_value_heads": None})],
    "BertForSequenceClassification": [("BertConfig", {"num_key_value_heads": None})],
    "RobertaForSequenceClassification": [("RobertaConfig", {"num_key_value_heads": None})],
    "XLMRobertaForSequenceClassification": [("XLMRobertaConfig",
                                             {"num_key_value_heads": None})],
    "GraniteForCausalLM": [("GraniteConfig", v) for v in test_granite.VARIANTS.values()],
    "GraniteMoeForCausalLM": [("GraniteMoeConfig", v) for v in test_granitemoe.VARIANTS.values()],
    "Olmo2ForCausalLM": [("Olmo2Config", v) for v in test_olmo2.VARIANTS.values()],
    "StableLmForCausalLM": [("StableLmConfig", v) for v in test_stablelm.VARIANTS.values()],
    "PhiForCausalLM": [("PhiConfig", v) for v in test_phi.VARIANTS.values()],
    "GPTJForCausalLM": [("GPTJConfig", v) for v in test_gptj.VARIANTS.values()],
    "CohereForCausalLM": [("CohereConfig", v) for v in test_cohere.VARIANTS.values()],
    "GPTBigCodeForCausalLM": [("GPTBigCodeConfig", v) for v in test_gpt_bigcode.VARIANTS.values()],
    "FalconForCausalLM": [("FalconConfig", v) for v in test_falcon.VARIANTS.values()],
    # (transformers has no InternLM2 config; the model reads Llama's fields plus `bias`)
    "InternLM2ForCausalLM": [("LlamaConfig", {"bias": True})],
    "GlmForCausalLM": [test_glm4.VARIANTS["glm"]],
    "Glm4ForCausalLM": [test_glm4.VARIANTS["glm4"]],
    "DeepseekV2ForCausalLM": [test_deepseek.VARIANTS["v2_lite"], test_deepseek.VARIANTS["v2"]],
    "DeepseekV3ForCausalLM": [test_deepseek.VARIANTS["v3"]],
    "BloomForCausalLM": [("BloomConfig", v) for v in test_bloom.VARIANTS.values()],
    "JambaForCausalLM": [("JambaConfig", JAMBA)],
    "MambaForCausalLM": [("MambaConfig", MAMBA)],
    "Mamba2ForCausalLM": [("Mamba2Config", MAMBA2)],
    "FalconMambaForCausalLM": [("FalconMambaConfig", MAMBA)],
    "BambaForCausalLM": [("BambaConfig", BAMBA)],
    "GraniteMoeHybridForCausalLM": [("GraniteMoeHybridConfig", GRANITE_HYBRID["rope_moe"])],
    # (the CLIP tower and projector are plain replicated torch modules, not checked here)
    "LlavaForConditionalGeneration": [("LlavaConfig", {
        "text_config": {**TINY_LLAMA, "vocab_size": 385, "model_type": "llama"},
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "image_size": 28, "patch_size": 7,
                          "model_type": "clip_vision_model"}})],
    "LlavaNextForConditionalGeneration": [("LlavaNextConfig", {
        "text_config": {**TINY_LLAMA, "vocab_size": 385, "model_type": "llama"},
        "vision_config": _CLIP_VISION, "image_grid_pinpoints": [[28, 56], [56, 28], [56, 56]]})],
    "InternVLForConditionalGeneration": [("InternVLConfig", {
        "text_config": {**TINY_LLAMA, "vocab_size": 387, "model_type": "qwen2"},
        "vision_config": {**_TOWER, "image_size": [28, 28], "patch_size": [7, 7],
                          "use_qk_norm": True, "layer_scale_init_value": 0.5},
        "image_seq_length": 4})],
    "Qwen2VLForConditionalGeneration": [("Qwen2VLConfig", {
        "text_config": {**TINY_LLAMA, "vocab_size": 388,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                            "mrope_section": [2, 3, 3]}},
        "vision_config": {"depth": 2, "embed_dim": 32, "hidden_size": TINY_LLAMA["hidden_size"],
                          "num_heads": 4, "mlp_ratio": 2, "patch_size": 7,
                          "spatial_merge_size": 2, "temporal_patch_size": 2},
        "tie_word_embeddings": False})],
    "CLIPModel": [("CLIPConfig", {"text_config": _DUAL_TEXT, "vision_config": _DUAL_VISION,
                                  "projection_dim": 24})],
    "SiglipModel": [("SiglipConfig", {"text_config": {**_DUAL_TEXT, "projection_size": 24},
                                      "vision_config": _DUAL_VISION})],
    "DbrxForCausalLM": [test_dbrx_glm4_moe.VARIANTS["dbrx"]],
    "Glm4MoeForCausalLM": [test_dbrx_glm4_moe.VARIANTS["glm4_moe"]],
    "BartForConditionalGeneration": [test_encoder_decoder.CONFIGS["bart"][::2]],
    "T5ForConditionalGeneration": [test_encoder_decoder.CONFIGS[v][::2] for v in ("t5", "t5_v1_1")],
}
PLAIN_TORCH = {"CLIPModel", "SiglipModel"}
"""Families built of plain torch modules only (both towers replicated; no LinearBase yet)."""
MOE = ("Moe", "Mixtral", "Deepseek", "Jamba", "Dbrx")
"""Names of the families with FusedMoE layers (GLM-4-MoE's is "Glm4Moe")."""
CASES = [(arch, cls, overrides) for arch, configs in FAMILIES.items() for cls, overrides in configs]

ROLES = {
    "qkv_proj": QKVParallelLinear, "c_attn": QKVParallelLinear,
    "query_key_value": QKVParallelLinear, "gate_up_proj": MergedColumnParallelLinear,
    "o_proj": RowParallelLinear, "down_proj": RowParallelLinear, "out_proj": RowParallelLinear,
    "c_proj": RowParallelLinear, "attention.dense": RowParallelLinear,
    "output.dense": RowParallelLinear, "fc2": RowParallelLinear,
    "dense_4h_to_h": RowParallelLinear, "intermediate.dense": ColumnParallelLinear,
    "fc1": ColumnParallelLinear, "c_fc": ColumnParallelLinear,
    "dense_h_to_4h": ColumnParallelLinear, "mlp.gate": ReplicatedLinear,
    "self_attn.dense": RowParallelLinear, "self_attention.dense": RowParallelLinear,
    "fc_in": ColumnParallelLinear, "fc_out": RowParallelLinear,
    "q_proj": ColumnParallelLinear, "q_a_proj": ReplicatedLinear, "q_b_proj": ColumnParallelLinear,
    "kv_a_proj_with_mqa": ReplicatedLinear, "kv_b_proj": ColumnParallelLinear,
    "shared_expert_gate": ReplicatedLinear, "project_in": ReplicatedLinear,
    "project_out": ReplicatedLinear, "classifier": ReplicatedLinear,
    "k_proj": ColumnParallelLinear, "v_proj": ColumnParallelLinear,  # BART's (q/k/v apart)
    # T5's attention and (gated) FFN
    "q": ColumnParallelLinear, "k": ColumnParallelLinear, "v": ColumnParallelLinear,
    "o": RowParallelLinear, "wi": ColumnParallelLinear, "wi_0": ColumnParallelLinear,
    "wi_1": ColumnParallelLinear, "wo": RowParallelLinear,
    "dense": ReplicatedLinear,  # last: a classifier head's "pooler.dense" (no deeper name)
    # Mamba mixers (layers/mamba_parallel.py): in_proj's pieces split on their own, x_proj
    # row-parallel (dt/B/C all-reduced), dt_proj by channel
    "in_proj": MambaInProj, "x_proj": RowParallelLinear, "dt_proj": ColumnParallelLinear,
    "router": ReplicatedLinear, "moe.gate": ReplicatedLinear,  # Jamba's, Granite 4's routers
}  # fmt: skip
"""Module name suffix -> the role of a linear layer there (vLLM's choice for that place)."""


@dataclass(frozen=True)
class _ModelConfig:
    """The ModelConfig fields the models read (a frozen dataclass, as ModelConfig: DBRX
    `replace`s its hf_config)."""

    hf_config: Any
    max_model_len: int = 128
    enforce_eager: bool = True
    pooler: Any = field(default_factory=lambda: SimpleNamespace(pooling_type="MEAN"))
    classifier: Any = field(default_factory=lambda: SimpleNamespace(num_labels=3))


def _build(arch: str, config_cls: str, overrides: dict) -> torch.nn.Module:
    """The model skeleton on the meta device (no weights: only names and shapes matter)."""
    hf_config = getattr(transformers, config_cls)(**{**TINY_LLAMA, "vocab_size": 384, **overrides})
    model_config = _ModelConfig(hf_config)
    registry = next(r for r in (EMBEDDING_MODEL_REGISTRY, CLASSIFIER_MODEL_REGISTRY, MODEL_REGISTRY)
                    if arch in r)
    with torch.device("meta"):
        return registry.get(arch)(model_config)


def test_every_registered_family_is_covered():
    assert set(FAMILIES) == (set(MODEL_REGISTRY.names()) | set(EMBEDDING_MODEL_REGISTRY.names())
                             | set(CLASSIFIER_MODEL_REGISTRY.names()))


@pytest.mark.parametrize("arch, config_cls, overrides", CASES)
def test_prefixes_are_module_names_and_roles_fit(arch, config_cls, overrides):
    model = _build(arch, config_cls, overrides)
    modules = dict(model.named_modules())
    named = [m for m in modules.values()
             if isinstance(m, (LinearBase, VocabParallelEmbedding, FusedMoE))]  # fmt: skip
    assert any(isinstance(m, LinearBase) for m in named) != (arch in PLAIN_TORCH)
    for layer in named:
        assert layer.prefix and modules.get(layer.prefix) is layer, (arch, layer.prefix)
        if isinstance(layer, LinearBase):
            suffix = next(s for s in ROLES if f".{layer.prefix}".endswith(f".{s}"))
            assert type(layer) is ROLES[suffix], (layer.prefix, type(layer).__name__)
    moe = [m for m in named if isinstance(m, FusedMoE)]
    assert bool(moe) == any(f in arch for f in MOE)
    head = getattr(model, "lm_head", getattr(model, "embed_out", None))
    if head is not None:  # a tied head is the token embedding itself
        assert isinstance(head, ParallelLMHead) != model.tie_word_embeddings


# ---- roles: per-rank shapes and checkpoint slices --------------------------------------------

IN, OUT = 16, 24


def _loaded(layer: LinearBase, weight: torch.Tensor, shards=None) -> LinearBase:
    if shards is None:
        layer.weight.weight_loader(layer.weight, weight)
    else:
        for shard_id, part in zip(shards, weight.split(layer.output_sizes)):
            layer.weight.weight_loader(layer.weight, part, shard_id)
    return layer


def test_roles_at_tp_size_1_hold_the_whole_weight():
    torch.manual_seed(0)
    w, x = torch.randn(OUT, IN), torch.randn(5, IN)
    for cls in (ReplicatedLinear, ColumnParallelLinear, RowParallelLinear):
        layer = _loaded(cls(IN, OUT), w)
        assert (layer.input_size_per_partition, layer.output_sizes_per_partition) == (IN, [OUT])
        assert layer.weight.shape == (OUT, IN)
        torch.testing.assert_close(layer(x), x @ w.t())
    qkv = QKVParallelLinear(IN, 4, 4, 2)
    assert qkv.output_sizes_per_partition == [16, 8, 8] == qkv.output_sizes
    assert (qkv.num_heads_per_partition, qkv.num_kv_heads_per_partition) == (4, 2)
    assert (ColumnParallelLinear.parallel_role, RowParallelLinear.parallel_role) == (
        "column", "row")  # fmt: skip
    embedding = VocabParallelEmbedding(384, 8)
    assert (embedding.vocab_start_index, embedding.vocab_end_index) == (0, 384)
    assert embedding.num_embeddings_per_partition == 384


def test_column_and_row_slices_recombine_at_tp_size_2():
    torch.manual_seed(0)
    w, x = torch.randn(OUT, IN), torch.randn(5, IN)
    columns = [_loaded(ColumnParallelLinear(IN, OUT, tp_size=2, tp_rank=r), w) for r in (0, 1)]
    assert columns[0].weight.shape == (OUT // 2, IN)
    torch.testing.assert_close(torch.cat([c(x) for c in columns], dim=-1), x @ w.t())
    rows = [_loaded(RowParallelLinear(IN, OUT, tp_size=2, tp_rank=r), w) for r in (0, 1)]
    assert rows[0].weight.shape == (OUT, IN // 2)
    partial = [r(part) for r, part in zip(rows, x.chunk(2, dim=-1))]
    torch.testing.assert_close(partial[0] + partial[1], x @ w.t())  # what all-reduce will sum


@pytest.mark.parametrize("num_kv_heads", [2, 1])  # 1: fewer KV heads than ranks, replicated
def test_qkv_ranks_hold_their_heads(num_kv_heads):
    head_dim, num_heads = 4, 4
    sizes = [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim]
    w = torch.arange(sum(sizes) * IN, dtype=torch.float32).view(sum(sizes), IN)
    q, k, v = w.split(sizes)
    for whole in (True, False):  # one fused checkpoint tensor, or q/k/v shards
        for rank in (0, 1):
            layer = QKVParallelLinear(IN, head_dim, num_heads, num_kv_heads, tp_size=2,
                                      tp_rank=rank)  # fmt: skip
            _loaded(layer, w, None if whole else ["q", "k", "v"])
            kv_rows = slice(rank * 4, rank * 4 + 4) if num_kv_heads == 2 else slice(0, 4)
            expected = torch.cat([q[rank * 8 : rank * 8 + 8], k[kv_rows], v[kv_rows]])
            torch.testing.assert_close(layer.weight, expected)


def test_merged_column_splits_each_shard():
    w = torch.randn(2 * OUT, IN)
    gate, up = w.split(OUT)
    layer = MergedColumnParallelLinear(IN, [OUT, OUT], tp_size=2, tp_rank=1)
    _loaded(layer, w, [0, 1])
    torch.testing.assert_close(layer.weight, torch.cat([gate[OUT // 2 :], up[OUT // 2 :]]))


def test_vocab_parallel_embedding_rank_range():
    table = torch.randn(384, 8)
    embedding = VocabParallelEmbedding(384, 8, tp_size=2, tp_rank=1)
    embedding.weight.weight_loader(embedding.weight, table)
    assert (embedding.vocab_start_index, embedding.vocab_end_index) == (192, 384)
    torch.testing.assert_close(embedding.weight, table[192:])
