"""The Mamba mixer (selective state space layer) over a per-request state cache, in PyTorch.

One step packs requests back to back as everywhere else (a prefill chunk, a decode token). Each
request's layer state lives in one slot of the state cache (worker/state_cache.py):

    conv_states [num_slots, intermediate, d_conv - 1]   the last d_conv - 1 conv inputs
    ssm_states  [num_slots, intermediate, d_state]      the recurrent state h

A chunk continues from its slot's states (a chunked prefill's second chunk, every decode), or
from zeros where it starts at position 0 (a new or recomputed request: whatever the slot held
before is ignored). The step's decodes run as one batch (one scan step), its prefill chunks as
another, padded to [R, Lmax] so the convolution and the scan run once for all of them; padded
positions leave the state as it is (dA = 1, dBx = 0).

The scan is the sequential recurrence (one iteration per position of the longest chunk), with
float32 states, as transformers' slow path computes it:

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * x_t,    y_t = C_t . h_t + D * x_t
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.model_executor.layers.layernorm import RMSNorm
from pagedllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    RowParallelLinear,
    resolve_tp,
)
from pagedllm.model_executor.layers.mamba_parallel import RowPieces


@dataclass
class MambaBatch:
    """Requests of one step padded together to their longest chunk."""

    slots: torch.Tensor  # [R] long: each request's state slot
    has_initial_state: torch.Tensor  # [R] bool: the chunk continues a state (start > 0)
    lengths: torch.Tensor  # [R] long: tokens of each request this step
    token_index: torch.Tensor  # [R, Lmax] long: packed row of each request's t-th token (0: pad)
    valid: torch.Tensor  # [R, Lmax] bool: t < lengths[r]
    rows: torch.Tensor  # [sum(lengths)] long: token_index[valid], the packed rows it computes

    @classmethod
    def build(cls, slots: np.ndarray, starts: np.ndarray, counts: np.ndarray,
              first: np.ndarray, device: torch.device) -> MambaBatch:
        offsets = np.arange(int(counts.max()), dtype=np.int64)
        valid = offsets[None, :] < counts[:, None]
        token_index = np.where(valid, first[:, None] + offsets[None, :], 0)
        return cls(
            slots=torch.from_numpy(slots).to(device),
            has_initial_state=torch.from_numpy(starts > 0).to(device),
            lengths=torch.from_numpy(counts).to(device),
            token_index=torch.from_numpy(token_index).to(device),
            valid=torch.from_numpy(valid).to(device),
            rows=torch.from_numpy(token_index[valid]).to(device),
        )


@dataclass
class MambaStepMetadata:
    """The step's requests as the Mamba layers see them (built once per step, shared): the
    decodes (one token each: one scan step for all of them) apart from the prefill chunks, so a
    long chunk does not make every decode of the step run its length in padding."""

    num_tokens: int
    groups: list[MambaBatch]

    @classmethod
    def build(cls, slots: list[int], starts: np.ndarray, counts: np.ndarray,
              device: torch.device) -> MambaStepMetadata:
        """slots, starts, counts [R]: each request's state slot, first position this step and
        number of tokens, in packing order."""
        counts = counts.astype(np.int64)
        first = np.zeros(len(counts), dtype=np.int64)
        np.cumsum(counts[:-1], out=first[1:])
        slot_array = np.asarray(slots, dtype=np.int64)
        groups = []
        for members in (counts == 1, counts > 1):
            if members.any():
                groups.append(MambaBatch.build(slot_array[members], starts[members],
                                               counts[members], first[members], device))
        return cls(int(counts.sum()), groups)


def causal_conv1d(
    x: torch.Tensor,  # [T, C] packed
    conv_states: torch.Tensor,  # [S, C, K - 1], updated in place for the step's slots
    weight: torch.Tensor,  # [C, K]
    bias: torch.Tensor | None,  # [C]
    md: MambaStepMetadata,
) -> torch.Tensor:  # [T, C] float32, before the activation
    """Depthwise causal convolution of each request's chunk, continuing its conv state."""
    out = x.new_empty((md.num_tokens, x.shape[1]), dtype=torch.float32)
    for group in md.groups:
        out[group.rows] = _conv_batch(x, conv_states, weight, bias, group)
    return out


def _conv_batch(x: torch.Tensor, conv_states: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None, b: MambaBatch) -> torch.Tensor:
    width = weight.shape[1] - 1
    prev = torch.where(b.has_initial_state[:, None, None], conv_states[b.slots], 0.0)
    chunk = (x.float()[b.token_index] * b.valid[..., None]).transpose(1, 2)  # [R, C, Lmax]
    full = torch.cat([prev, chunk], dim=2)  # [R, C, K-1 + Lmax]
    out = F.conv1d(full, weight.float().unsqueeze(1),
                   None if bias is None else bias.float(), groups=weight.shape[0])
    # the new state: the last K-1 inputs of each request (its chunk ends at column lengths + K-2)
    cols = b.lengths[:, None] + torch.arange(width, device=x.device)  # [R, K-1]
    conv_states[b.slots] = full.gather(2, cols[:, None, :].expand(-1, full.shape[1], -1))
    return out.transpose(1, 2)[b.valid]  # [T_b, C]


def selective_scan(
    x: torch.Tensor,  # [T, I] float32 (after conv and activation)
    dt: torch.Tensor,  # [T, I] float32, after dt bias and softplus
    A: torch.Tensor,  # [I, N] float32 (negative)
    B: torch.Tensor,  # [T, N]
    C: torch.Tensor,  # [T, N]
    D: torch.Tensor,  # [I]
    ssm_states: torch.Tensor,  # [S, I, N] float32, updated in place for the step's slots
    md: MambaStepMetadata,
) -> torch.Tensor:  # [T, I] float32: y (D skip included, no gate)
    y = torch.empty_like(x)
    for b in md.groups:
        pad = b.valid[..., None]
        x_p = x[b.token_index] * pad  # [R, Lmax, I]
        dt_p = dt[b.token_index] * pad  # 0 where padded: exp(0 * A) = 1, dt * B * x = 0
        B_p, C_p = B.float()[b.token_index], C.float()[b.token_index]  # [R, Lmax, N]
        h = torch.where(b.has_initial_state[:, None, None], ssm_states[b.slots], 0.0)
        ys = []
        for t in range(b.token_index.shape[1]):
            dt_t = dt_p[:, t, :, None]  # [R, I, 1]
            h = torch.exp(dt_t * A) * h + dt_t * B_p[:, t, None, :] * x_p[:, t, :, None]
            ys.append(torch.matmul(h, C_p[:, t, :, None])[..., 0])  # [R, I]
        ssm_states[b.slots] = h
        y[b.rows] = torch.stack(ys, dim=1)[b.valid]
    return y + x * D.float()


class StateSpaceMixer(nn.Module):
    """A layer whose per-request states live in the state cache (Mamba, Mamba2).

    The cache is bound once (bind_state_cache) before the first step; the layer reads its two
    tensors (conv_states[index], ssm_states[index]) and the step's metadata (current) from it;
    no layer here imports the worker."""

    state_cache: Any = None
    state_index: int = -1

    def bind_state_cache(self, cache: Any, index: int) -> None:
        self.state_cache, self.state_index = cache, index

    def _states(self) -> tuple[torch.Tensor, torch.Tensor, MambaStepMetadata]:
        cache = self.state_cache
        assert cache is not None and cache.current is not None, "no state cache bound / no step"
        index = self.state_index
        return cache.conv_states[index], cache.ssm_states[index], cache.current


class MambaMixer(StateSpaceMixer):
    """in_proj -> causal conv -> SiLU -> x_proj (dt, B, C) -> dt_proj -> selective scan, gated
    by SiLU(z) -> out_proj. bc_dt_norm_eps: RMS norms on dt, B and C after x_proj, with weights
    (Jamba) or without (weightless_norms: Falcon-Mamba); None: none (Mamba).

    Under tensor parallelism each rank holds intermediate_size / tp channels
    (layers/mamba_parallel.py): in_proj's x and z halves, conv1d, dt_proj, A_log and D are the
    rank's channels; x_proj is row-parallel (dt, B and C mix every channel: all-reduced, so the
    dt/B/C norms see whole vectors), out_proj row-parallel."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        state_size: int,
        conv_kernel: int,
        time_step_rank: int,
        conv_bias: bool,
        proj_bias: bool,
        bc_dt_norm_eps: float | None,
        prefix: str,
        weightless_norms: bool = False,
    ) -> None:
        super().__init__()
        tp_size, tp_rank = resolve_tp(None, None)
        channels = RowPieces.even(intermediate_size, tp_size, tp_rank)
        self.intermediate_size = intermediate_size
        self.state_size = state_size
        self.time_step_rank = time_step_rank
        self.in_proj = MambaInProj(hidden_size, [intermediate_size, intermediate_size],
                                   proj_bias, f"{prefix}.in_proj")
        self.conv1d = DepthwiseConv(channels, conv_kernel, conv_bias)
        self.x_proj = RowParallelLinear(intermediate_size, time_step_rank + 2 * state_size, False,
                                        prefix=f"{prefix}.x_proj")
        self.dt_proj = ColumnParallelLinear(time_step_rank, intermediate_size, True,
                                            prefix=f"{prefix}.dt_proj")
        self.A_log = channels.attach(nn.Parameter(torch.zeros(channels.rows, state_size)))
        self.D = channels.attach(nn.Parameter(torch.ones(channels.rows)))
        self.out_proj = RowParallelLinear(intermediate_size, hidden_size, proj_bias,
                                          prefix=f"{prefix}.out_proj")
        self.bc_dt_norm_eps = bc_dt_norm_eps
        self.weightless_norms = weightless_norms
        if bc_dt_norm_eps is not None and not weightless_norms:
            self.dt_layernorm = RMSNorm(time_step_rank, bc_dt_norm_eps)
            self.b_layernorm = RMSNorm(state_size, bc_dt_norm_eps)
            self.c_layernorm = RMSNorm(state_size, bc_dt_norm_eps)
        self.bc_dt_norm = bc_dt_norm_eps is not None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        conv_states, ssm_states, md = self._states()
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # [T, I] each
        x = F.silu(causal_conv1d(x, conv_states, self.conv1d.weight, self.conv1d.bias, md))
        dt, B, C = self.x_proj(x.to(hidden_states.dtype)).split(
            [self.time_step_rank, self.state_size, self.state_size], dim=-1)
        if self.weightless_norms:
            dt, B, C = (_rms(t, self.bc_dt_norm_eps) for t in (dt, B, C))
        elif self.bc_dt_norm:
            dt = self.dt_layernorm.norm(dt)
            B, C = self.b_layernorm.norm(B), self.c_layernorm.norm(C)
        dt = F.softplus(self.dt_proj(dt).float())
        A = -torch.exp(self.A_log.float())
        y = selective_scan(x, dt, A, B, C, self.D, ssm_states, md)
        y = y * F.silu(z.float())
        return self.out_proj(y.to(hidden_states.dtype))


def _rms(x: torch.Tensor, eps: float | None) -> torch.Tensor:
    """RMS norm without a weight (statistics in float32)."""
    assert eps is not None
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class MambaInProj(MergedColumnParallelLinear):
    """in_proj: pieces stacked along the output rows (Mamba's [x | z], Mamba2's
    [z | x | B | C | dt]), each split over the ranks on its own: evenly, or by the (first row,
    rows) share given for it in `shares` (Mamba2's B and C groups, shared when fewer than the
    ranks)."""

    def __init__(self, hidden_size: int, sizes: list[int], bias: bool, prefix: str,
                 shares: dict[int, tuple[int, int]] | None = None) -> None:
        self.shares = dict(shares or {})
        super().__init__(hidden_size, sizes, bias, prefix=prefix)
        for param in (self._parameters.get("weight"), self.bias):
            if param is not None and self.tp_size > 1:
                param.weight_loader = self._piecewise(param.weight_loader)

    def _piecewise(self, load: Any) -> Any:
        """The checkpoint holds in_proj whole: hand it to the parameter's loader piece by piece
        (shard i = rows of piece i), as a merged layer's separate checkpoint tensors come, so
        a quant method that collects shards (GGUF blocks: narrow, no split) gets each rank's
        slice of each piece."""

        def load_pieces(param: nn.Parameter, loaded: Any, shard_id: Any = None) -> None:
            if shard_id is not None:
                return load(param, loaded, shard_id)
            offset = 0
            for index, size in enumerate(self.output_sizes):
                load(param, loaded.narrow(0, offset, size), index)
                offset += size

        return load_pieces

    def _outputs_per_partition(self) -> list[int]:
        return [self.shares[i][1] if i in self.shares else size // self.tp_size
                for i, size in enumerate(self.output_sizes)]

    def _row_start(self, index: int, size: int) -> int:
        return self.shares[index][0] if index in self.shares else self.tp_rank * size


class DepthwiseConv(nn.Module):
    """The checkpoint's `conv1d` (weight [C, 1, K], bias [C]); applied by causal_conv1d. Holds
    this rank's channels of the whole tensors (`channels`: which rows)."""

    def __init__(self, channels: RowPieces, kernel: int, bias: bool) -> None:
        super().__init__()
        self.weight = channels.attach(nn.Parameter(torch.zeros(channels.rows, kernel)))
        self.bias = channels.attach(nn.Parameter(torch.zeros(channels.rows))) if bias else None


def mamba_mixers(model: nn.Module) -> list[StateSpaceMixer]:
    """The model's state-space mixers in layer order (the state cache's layer index)."""
    return [m for m in model.modules() if isinstance(m, StateSpaceMixer)]
