"""The Mamba-based families at -tp 2: greedy tokens equal transformers' (fp32 slow path) for the
mixed batch whose prefills are chunked by a 16-token budget (decodes mixed in), one engine start
per family. Mamba / Falcon-Mamba / Jamba: each rank holds half the mixer's channels, x_proj's
dt/B/C all-reduced. Mamba2 / Bamba: two B/C groups, one per rank (the gated norm local);
Granite 4.0 hybrid: one group replicated on both ranks (the norm's variance all-reduced), with
rotary attention and experts. Each rank's state slot holds its own share (sized below). A Q8_0
GGUF of Mamba kept in its blocks (--quantization gguf): in_proj's whole tensor reaches the
block collector piece by piece, each rank's rows, and -tp 2 equals -tp 1. The gated norm's
shards against transformers' norm for group layouts -tp 2 cannot show (2 groups over 4 ranks).
-tp 1 equals HF in tests/models/test_state_space_models.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pagedllm.config.state_cache import mamba_state_spec
from tests.distributed.test_tensor_parallel import LENGTHS, MAX_TOKENS, run_engine
from tests.hf_reference import hf_greedy, load_hf_model
from tests.models.family_check import random_prompts
from tests.models.test_gguf_qwen_gemma import write_gguf
from tests.models.test_state_space_models import (
    GRANITE_HYBRID,
    JAMBA,
    MAMBA,
    MAMBA2,
    _hf_greedy_uncached,
)

# one B/C group for 8 heads: both ranks keep it, the gated norm's group spans the two ranks
GRANITE_ONE_GROUP = {**GRANITE_HYBRID["rope_moe"], "mamba_n_groups": 1}

FAMILIES = {
    # (one engine start per mixer layout, for CI's time: Falcon-Mamba runs Mamba's mixer plus
    # Jamba's kind of dt/B/C norms, Bamba Mamba2's mixer in Granite's hybrid shell)
    # (in_proj's bias split with its rows, out_proj's added once after the all-reduce)
    "mamba": ("MambaConfig", {**MAMBA, "use_bias": True}),
    "jamba": ("JambaConfig", JAMBA),
    "mamba2": ("Mamba2Config", {**MAMBA2, "use_bias": True}),
    "granite_hybrid": ("GraniteMoeHybridConfig", GRANITE_ONE_GROUP),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """transformers' reference at one thread, as the ranks run (a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tp2_equals_hf(tiny_model_factory, family):
    config_cls, overrides = FAMILIES[family]
    model_dir = tiny_model_factory(config_cls, **overrides)
    hf = load_hf_model(model_dir)
    prompts = random_prompts(LENGTHS, hf.config.vocab_size)
    # (transformers' cached generate is Jamba's only; the others re-run the whole sequence)
    reference = hf_greedy if family == "jamba" else _hf_greedy_uncached
    expected = [reference(hf, p, MAX_TOKENS) for p in prompts]
    assert run_engine(model_dir, prompts, tp=2, max_model_len=64, max_num_seqs=4) == expected


def test_gguf_q8_0_blocks_tp2_equal_tp1(tiny_model_factory, tmp_path):
    model_dir = tiny_model_factory("MambaConfig", **MAMBA)
    path = write_gguf(model_dir, str(tmp_path / "tiny-mamba.Q8_0.gguf"), "mamba", q8_0=True)
    prompts = random_prompts(LENGTHS, load_hf_model(model_dir).config.vocab_size)
    kwargs = dict(max_model_len=64, max_num_seqs=4, quantization="gguf")
    assert (run_engine(path, prompts, tp=2, **kwargs)
            == run_engine(path, prompts, tp=1, **kwargs))


def test_state_slot_is_the_ranks_share():
    """Mamba: half the channels; Mamba2 with 2 groups: half the heads and one group each; with
    one group: half the heads, the group kept whole on both ranks."""
    mamba = SimpleNamespace(model_type="mamba", num_hidden_layers=2, intermediate_size=128,
                            conv_kernel=4, state_size=8)
    spec = mamba_state_spec(mamba, 2)
    assert spec.conv_state_shape == (64, 3) and spec.ssm_state_shape == (64, 8)
    mamba2 = SimpleNamespace(model_type="mamba2", num_hidden_layers=2, hidden_size=64, expand=2,
                             num_heads=8, head_dim=16, n_groups=2, state_size=8, conv_kernel=4)
    whole, half = mamba_state_spec(mamba2), mamba_state_spec(mamba2, 2)
    assert whole.conv_channels == 128 + 2 * 2 * 8 and half.conv_channels == 64 + 2 * 1 * 8
    assert half.ssm_state_shape == (4, 16, 8)
    mamba2.n_groups = 1
    assert mamba_state_spec(mamba2, 2).conv_channels == 64 + 2 * 1 * 8
    with pytest.raises(ValueError, match="n_groups=3 cannot be split"):
        mamba_state_spec(SimpleNamespace(**{**vars(mamba2), "n_groups": 3, "num_heads": 6}), 2)


@pytest.mark.parametrize("n_groups, tp", [(2, 4), (1, 2), (4, 2)])
def test_gated_norm_shards_equal_transformers(monkeypatch, n_groups, tp):
    """The gated group norm of each of tp simulated ranks, concatenated, equals transformers'
    Mamba2RMSNormGated over all channels: groups spanning ranks (2 groups over 4 ranks, 1 over
    2) through the [T, n_groups] all-reduce of squared sums, whole groups (4 over 2) locally."""
    from transformers.models.mamba2.modeling_mamba2 import Mamba2RMSNormGated

    from pagedllm.model_executor.layers import mamba2
    from pagedllm.model_executor.layers.mamba_parallel import RowPieces

    torch.manual_seed(0)
    channels, tokens = 64, 3
    y, gate, weight = torch.randn(tokens, channels), torch.randn(tokens, channels), torch.rand(64)
    hf = Mamba2RMSNormGated(channels, channels // n_groups, eps=1e-5)
    hf.weight.data.copy_(weight)
    norms = []
    for rank in range(tp):
        norm = mamba2.GatedGroupRMSNorm(RowPieces.even(channels, tp, rank),
                                        channels // n_groups, 1e-5)
        norm.weight.weight_loader(norm.weight, weight)
        norms.append(norm)
    parts = list(zip(y.chunk(tp, -1), gate.chunk(tp, -1)))
    partial: list[torch.Tensor] = []  # each rank's contribution to the all-reduce
    monkeypatch.setattr(mamba2, "tensor_model_parallel_all_reduce",
                        lambda t: partial.append(t.clone()) or t)
    for norm, (y_r, gate_r) in zip(norms, parts):
        norm(y_r, gate_r)
    total = sum(partial) if partial else None
    monkeypatch.setattr(mamba2, "tensor_model_parallel_all_reduce", lambda t: total)
    ours = torch.cat([norm(y_r, gate_r) for norm, (y_r, gate_r) in zip(norms, parts)], -1)
    torch.testing.assert_close(ours, hf(y, gate))
    assert bool(partial) == (n_groups < tp)
