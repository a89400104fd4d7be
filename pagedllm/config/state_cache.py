"""What a state-space (Mamba) layer keeps per request, for sizing the state cache (no tensors).

A Mamba layer carries two fixed-size states from token to token instead of a growing K/V
history: the last d_conv - 1 inputs of its causal convolution and the SSM state
[intermediate, d_state]. A model with such layers (Jamba, Mamba) gets a state cache beside the
paged KV cache: one slot per running request, every Mamba layer's states in it. The scheduler
hands out the slots (core/state_slots.py); the worker holds the tensors (worker/state_cache.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

STATE_DTYPE_BYTES = 4
"""Both states are kept in float32 whatever the model's dtype: the SSM state is a running
product over every token so far, where bf16 rounding would compound."""


@dataclass(frozen=True)
class MambaStateSpec:
    """The per-request state of a model's Mamba layers (every Mamba layer's alike)."""

    mamba_layers: tuple[int, ...]
    """Decoder layer indices that are Mamba layers (the others attend)."""
    num_hidden_layers: int
    conv_channels: int
    """Channels of the causal convolution (Mamba: expand * hidden; Mamba2: that + B and C)."""
    conv_kernel: int
    """d_conv: the convolution's width; its state holds conv_kernel - 1 inputs per channel."""
    ssm_state_shape: tuple[int, ...]
    """Mamba: [intermediate, d_state]; Mamba2: [heads, head_dim, d_state]."""

    @property
    def num_attention_layers(self) -> int:
        """Layers with a paged KV cache."""
        return self.num_hidden_layers - len(self.mamba_layers)

    @property
    def conv_state_shape(self) -> tuple[int, int]:
        return (self.conv_channels, self.conv_kernel - 1)

    @property
    def bytes_per_slot(self) -> int:
        """One request's states over every Mamba layer."""
        per_layer = self.conv_channels * (self.conv_kernel - 1) + math.prod(self.ssm_state_shape)
        return len(self.mamba_layers) * per_layer * STATE_DTYPE_BYTES


def channel_share(size: int, tp_size: int, tp_rank: int) -> tuple[int, int]:
    """(first, count) of `size` channels (or heads) that rank tp_rank of tp_size holds."""
    if size % tp_size:
        raise ValueError(f"{size} Mamba channels/heads are not divisible by tp_size={tp_size}")
    count = size // tp_size
    return tp_rank * count, count


def mamba2_group_share(n_groups: int, tp_size: int, tp_rank: int) -> tuple[int, int]:
    """(first, count) of the B/C groups rank tp_rank holds: G/tp whole groups, or, when there
    are fewer groups than ranks, the one group its heads read (the rank's heads are a
    contiguous 1/tp of them, inside one group when tp_size is a multiple of n_groups), which
    tp / G ranks then each keep a copy of (vLLM replicates them the same way)."""
    if n_groups % tp_size == 0:
        return channel_share(n_groups, tp_size, tp_rank)
    if tp_size % n_groups:
        raise ValueError(f"Mamba2's n_groups={n_groups} cannot be split or shared evenly by "
                         f"tp_size={tp_size}")
    return tp_rank // (tp_size // n_groups), 1


_STATE_MODEL_TYPES = ("jamba", "mamba", "falcon_mamba", "mamba2", "bamba", "granitemoehybrid")


def mamba_state_spec(hf_config: Any, tp_size: int = 1) -> MambaStateSpec | None:
    """The spec of a model with Mamba layers, by its config's model_type; None for the others.
    tp_size > 1: one rank's share (its channels / heads and B/C groups; every rank's alike)."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in _STATE_MODEL_TYPES:
        return None  # (a dual encoder's config, CLIP's, has no top-level layer count)
    layers = hf_config.num_hidden_layers
    if model_type == "jamba":
        kinds = list(hf_config.layers_block_type)
        inner = channel_share(hf_config.mamba_expand * hf_config.hidden_size, tp_size, 0)[1]
        return MambaStateSpec(
            mamba_layers=tuple(i for i, kind in enumerate(kinds) if kind == "mamba"),
            num_hidden_layers=layers, conv_channels=inner, conv_kernel=hf_config.mamba_d_conv,
            ssm_state_shape=(inner, hf_config.mamba_d_state),
        )  # fmt: skip
    if model_type in ("mamba", "falcon_mamba"):
        inner = channel_share(hf_config.intermediate_size, tp_size, 0)[1]
        return MambaStateSpec(
            mamba_layers=tuple(range(layers)), num_hidden_layers=layers, conv_channels=inner,
            conv_kernel=hf_config.conv_kernel, ssm_state_shape=(inner, hf_config.state_size),
        )  # fmt: skip
    if model_type == "mamba2":
        inner = channel_share(int(hf_config.expand * hf_config.hidden_size), tp_size, 0)[1]
        state = hf_config.state_size
        groups = mamba2_group_share(hf_config.n_groups, tp_size, 0)[1]
        return MambaStateSpec(
            mamba_layers=tuple(range(layers)), num_hidden_layers=layers,
            conv_channels=inner + 2 * groups * state, conv_kernel=hf_config.conv_kernel,
            ssm_state_shape=(channel_share(hf_config.num_heads, tp_size, 0)[1],
                             hf_config.head_dim, state),
        )  # fmt: skip
    if model_type in ("bamba", "granitemoehybrid"):  # Mamba2 layers
        kinds = list(hf_config.layers_block_type)
        inner = channel_share(int(hf_config.mamba_expand * hf_config.hidden_size), tp_size, 0)[1]
        state = hf_config.mamba_d_state
        groups = mamba2_group_share(hf_config.mamba_n_groups, tp_size, 0)[1]
        return MambaStateSpec(
            mamba_layers=tuple(i for i, kind in enumerate(kinds) if kind == "linear_attention"),
            num_hidden_layers=layers, conv_channels=inner + 2 * groups * state,
            conv_kernel=hf_config.mamba_d_conv,
            ssm_state_shape=(channel_share(hf_config.mamba_n_heads, tp_size, 0)[1],
                             hf_config.mamba_d_head, state),
        )  # fmt: skip
    return None


def prefix_caching_for(hf_config: Any, architecture: str, enabled: bool) -> bool:
    """Prefix caching stays off for a model with Mamba layers (as in vLLM without state
    checkpoints): a cached prefix restores K/V blocks, but a Mamba layer's state after that
    prefix is not kept anywhere, so a hit would start the rest of the prompt from a wrong
    state. Says so in the log when it turns it off."""
    if enabled and mamba_state_spec(hf_config) is not None:
        from pagedllm.logger import init_logger

        init_logger(__name__).info(
            "prefix caching disabled: %s has Mamba layers, whose per-request state a cached "
            "prefix cannot restore", architecture)
        return False
    return enabled


def check_state_model_features(hf_config: Any, architecture: str,
                               speculative_method: str | None) -> None:
    """Refuse what a model with Mamba layers cannot run: speculative decoding writes draft
    tokens into the states, and a rejected draft cannot be taken back out of them."""
    if speculative_method is not None and mamba_state_spec(hf_config) is not None:
        raise ValueError(f"speculative decoding ({speculative_method}) does not run with "
                         f"{architecture}: its Mamba layers' states cannot roll back rejected "
                         f"drafts")
