"""GPT-2, GPT-BigCode, Phi, GPT-J, OPT, GLM-4-MoE, DBRX, BLOOM and Falcon split over ranks.
GPT-2: fused c_attn cut per q/k/v shard at load (from a transposed Conv1D), c_fc
column-parallel, c_proj row-parallel, wte/wpe vocab-parallel; GPT-BigCode: its one multi-query
K/V head replicated on both ranks; Phi: GQA, per-head q/k LayerNorm (one weight), partial
rotary, parallel attention + MLP, LM head bias split by vocabulary; GPT-J: interleaved partial
rotary, parallel block; OPT: post-norm with its replicated project_in/out; GLM-4-MoE
(DeepSeek-V3's routed MoE with shared experts) at -tp 2, DBRX (the whole fused Wqkv cut per
shard, clip_qkv) at -tp 2 and -pp 2; BLOOM and Falcon-RW: each rank's ALiBi slopes are its heads';
Falcon's new architecture: grouped query_key_value reordered, then split. Each of GPT-2,
GPT-BigCode, Phi, GPT-J, OPT, BLOOM and Falcon at -pp 2 too. Greedy tokens equal HF's (fp32);
-tp 1 equals HF in tests/models."""

from __future__ import annotations

import pytest

from tests.distributed.test_tensor_parallel import LENGTHS, MAX_TOKENS, run_engine
from tests.hf_reference import hf_greedy, load_hf_model
from tests.models.family_check import random_prompts
from tests.models.test_bloom import VARIANTS as BLOOM
from tests.models.test_dbrx_glm4_moe import VARIANTS as MOE
from tests.models.test_falcon import VARIANTS as FALCON
from tests.models.test_gpt2 import VARIANTS as GPT2
from tests.models.test_gpt_bigcode import VARIANTS as BIGCODE
from tests.models.test_gptj import VARIANTS as GPTJ
from tests.models.test_opt import VARIANTS as OPT
from tests.models.test_phi import VARIANTS as PHI


@pytest.mark.parametrize("config_cls, overrides, tp, pp", [
    # one engine per family (each start costs seconds of CI): -tp 2 for some, -pp 2
    # (models/pipeline_stage.py, one layer per stage) for the others, both send layouts of -pp
    # (hidden + residual; one tensor: OPT's post-norm layout, BLOOM) and both ALiBi splits covered
    ("GPT2Config", GPT2["gpt2"], 2, 1), ("GPTBigCodeConfig", BIGCODE["multi_query"], 1, 2),
    ("PhiConfig", PHI["qk_layernorm_gqa"], 2, 1), ("GPTJConfig", GPTJ["rotary_dim_8"], 1, 2),
    ("OPTConfig", OPT["post_norm_projected"], 1, 2), (*MOE["glm4_moe"], 2, 1),
    (*MOE["dbrx"], 1, 2), ("BloomConfig", BLOOM["bloom"], 2, 1),
    ("BloomConfig", BLOOM["bloom"], 1, 2),
    # (Falcon-RW's ALiBi at -tp 2 equals HF too; its slopes are checked below without an engine)
    ("FalconConfig", FALCON["new_gqa_two_norms"], 2, 1),
])  # fmt: skip
def test_split_equals_hf(tiny_model_factory, config_cls, overrides, tp, pp):
    model_dir = tiny_model_factory(config_cls, **overrides)
    hf = load_hf_model(model_dir)
    prompts = random_prompts(LENGTHS, hf.config.vocab_size)
    expected = [hf_greedy(hf, p, MAX_TOKENS) for p in prompts]
    assert run_engine(model_dir, prompts, tp=tp, pipeline_parallel_size=pp) == expected


def test_alibi_slopes_are_the_ranks_heads(monkeypatch):
    """Rank r of 2 biases heads [2r, 2r + 1] of 4 with their own slopes (a short greedy run can
    keep its tokens with another head's slopes, so this is checked directly too)."""
    from pagedllm.model_executor.layers import alibi_attention, attention

    monkeypatch.setattr(attention, "get_tensor_model_parallel_world_size", lambda: 2)
    whole = alibi_attention.alibi_slopes(4)
    for rank in range(2):
        monkeypatch.setattr(alibi_attention, "get_tensor_model_parallel_rank",
                            lambda rank=rank: rank)
        layer = alibi_attention.ALiBiAttention(4, 16, 0.25, 4)
        assert layer.num_heads == 2
        assert layer.alibi_slopes.tolist() == whole[2 * rank : 2 * rank + 2].tolist()
