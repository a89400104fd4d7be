"""The Mamba2 mixer (state space duality layer: scalar A per head, B and C shared by groups of
heads), over the same per-request state cache and step layout as layers/mamba.py:

    conv_states [num_slots, intermediate + 2 * groups * d_state, d_conv - 1]
    ssm_states  [num_slots, heads, head_dim, d_state]

in_proj gives [gate | x B C | dt]; x B C go through the causal convolution and SiLU; per head h,
with g = h's group:

    h_t = exp(dt_t * A_h) * h_{t-1} + dt_t * x_t (outer) B_{g,t},   y_t = h_t C_{g,t} + D_h x_t

then the gated group RMS norm norm(y * SiLU(gate)) and out_proj. The recurrence runs
sequentially (transformers' slow path computes the same in chunks, SSD form: equal within
float32 rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.distributed import tensor_model_parallel_all_reduce
from pagedllm.model_executor.layers.linear import RowParallelLinear, resolve_tp
from pagedllm.model_executor.layers.mamba import (
    DepthwiseConv,
    MambaInProj,
    MambaStepMetadata,
    StateSpaceMixer,
    causal_conv1d,
)
from pagedllm.model_executor.layers.mamba_parallel import (
    RowPieces,
    channel_share,
    mamba2_group_share,
)


def ssd_scan(
    x: torch.Tensor,  # [T, H, P] float32
    dt: torch.Tensor,  # [T, H] float32, after bias, softplus and limits
    A: torch.Tensor,  # [H] float32 (negative)
    B: torch.Tensor,  # [T, H, N] (each head's group's B)
    C: torch.Tensor,  # [T, H, N]
    D: torch.Tensor,  # [H]
    ssm_states: torch.Tensor,  # [S, H, P, N] float32, updated in place for the step's slots
    md: MambaStepMetadata,
) -> torch.Tensor:  # [T, H, P] float32 (D skip included)
    y = torch.empty_like(x)
    for b in md.groups:
        dt_p = dt[b.token_index] * b.valid[..., None]  # [R, Lmax, H]; 0 where padded
        x_p = x[b.token_index]  # [R, Lmax, H, P]
        B_p, C_p = B.float()[b.token_index], C.float()[b.token_index]  # [R, Lmax, H, N]
        h = torch.where(b.has_initial_state[:, None, None, None], ssm_states[b.slots], 0.0)
        ys = []
        for t in range(b.token_index.shape[1]):
            dt_t = dt_p[:, t, :, None, None]  # [R, H, 1, 1]
            h = torch.exp(dt_t * A[:, None, None]) * h + (
                dt_t * x_p[:, t, :, :, None] * B_p[:, t, :, None, :])
            ys.append(torch.matmul(h, C_p[:, t, :, :, None])[..., 0])  # [R, H, P]
        ssm_states[b.slots] = h
        y[b.rows] = torch.stack(ys, dim=1)[b.valid]
    return y + x * D.float()[:, None]


class GatedGroupRMSNorm(nn.Module):
    """norm(y * SiLU(gate)) over groups of group_size channels, then the weight (float32), as
    transformers' MambaRMSNormGated: the mean of squares of each of the n_groups groups of
    intermediate / n_groups channels.

    Under tensor parallelism the rank holds `channels` (a contiguous 1/tp of them): whole
    groups when group_size fits in them (the norm stays local), else a part of one group that
    tp / n_groups ranks share: each adds its part's sum of squares into its group's column of a
    [T, n_groups] all-reduce, so the variance is the whole group's."""

    def __init__(self, channels: RowPieces, group_size: int, eps: float) -> None:
        super().__init__()
        self.weight = channels.attach(nn.Parameter(torch.ones(channels.rows)))
        self.group_size = group_size
        self.eps = eps
        local, start = channels.rows, channels.starts[0]
        # the group the rank's channels lie in, when a group spans ranks (None: whole groups)
        self.shared_group = None if group_size <= local else start // group_size
        self.num_groups = sum(channels.sizes) // group_size

    def forward(self, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:  # [T, I/tp] fp32
        y = y * F.silu(gate.float())
        if self.shared_group is None:
            groups = y.view(y.shape[0], -1, self.group_size)
            groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)
            return self.weight * groups.view_as(y).to(self.weight.dtype)
        sums = y.new_zeros((y.shape[0], self.num_groups))
        sums[:, self.shared_group] = y.pow(2).sum(-1)
        sums = tensor_model_parallel_all_reduce(sums)
        variance = sums[:, self.shared_group, None] / self.group_size
        return self.weight * (y * torch.rsqrt(variance + self.eps)).to(self.weight.dtype)


class Mamba2Mixer(StateSpaceMixer):
    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        num_heads: int,
        head_dim: int,
        num_groups: int,
        state_size: int,
        conv_kernel: int,
        conv_bias: bool,
        proj_bias: bool,
        norm_eps: float,
        time_step_limit: tuple[float, float] | None,
        prefix: str,
    ) -> None:
        super().__init__()
        tp_size, tp_rank = resolve_tp(None, None)
        heads = channel_share(num_heads, tp_size, tp_rank)
        group_share = mamba2_group_share(num_groups, tp_size, tp_rank)
        inner = channel_share(intermediate_size, tp_size, tp_rank)
        group_rows = num_groups * state_size
        group_part = (group_share[0] * state_size, group_share[1] * state_size)
        # this rank's sizes: everything below is the rank's share (all of it at tp_size 1)
        self.intermediate_size = inner[1]
        self.num_heads, self.head_dim = heads[1], head_dim
        self.num_groups, self.state_size = group_share[1], state_size
        self.conv_dim = inner[1] + 2 * group_part[1]
        limit = tuple(time_step_limit) if time_step_limit is not None else (0.0, float("inf"))
        # (0, inf), the default, is no limit at all: skip the clamp
        self.time_step_limit = None if limit == (0.0, float("inf")) else limit
        # [z | x | B | C | dt]: z, x and dt by head, B and C the rank's groups
        self.in_proj = MambaInProj(
            hidden_size, [intermediate_size, intermediate_size, group_rows, group_rows, num_heads],
            proj_bias, f"{prefix}.in_proj", shares={2: group_part, 3: group_part})
        # conv1d's channels [x | B | C]: the same rows as in_proj's x, B and C
        conv_rows = RowPieces([intermediate_size, group_rows, group_rows],
                              [inner, group_part, group_part])
        self.conv1d = DepthwiseConv(conv_rows, conv_kernel, conv_bias)
        per_head = RowPieces([num_heads], [heads])
        self.dt_bias = per_head.attach(nn.Parameter(torch.ones(heads[1])))
        self.A_log = per_head.attach(nn.Parameter(torch.zeros(heads[1])))
        self.D = per_head.attach(nn.Parameter(torch.ones(heads[1])))
        self.norm = GatedGroupRMSNorm(RowPieces([intermediate_size], [inner]),
                                      intermediate_size // num_groups, norm_eps)
        self.out_proj = RowParallelLinear(intermediate_size, hidden_size, proj_bias,
                                          prefix=f"{prefix}.out_proj")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        conv_states, ssm_states, md = self._states()
        T, H, G, N = hidden_states.shape[0], self.num_heads, self.num_groups, self.state_size
        gate, xBC, dt = self.in_proj(hidden_states).split(
            [self.intermediate_size, self.conv_dim, H], dim=-1)
        xBC = F.silu(causal_conv1d(xBC, conv_states, self.conv1d.weight, self.conv1d.bias, md))
        x, B, C = xBC.split([self.intermediate_size, G * N, G * N], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias.float())
        if self.time_step_limit is not None:
            dt = dt.clamp(*self.time_step_limit)
        heads_per_group = H // G
        B = B.reshape(T, G, N).repeat_interleave(heads_per_group, dim=1)  # [T, H, N]
        C = C.reshape(T, G, N).repeat_interleave(heads_per_group, dim=1)
        A = -torch.exp(self.A_log.float())
        y = ssd_scan(x.reshape(T, H, self.head_dim), dt, A, B, C, self.D, ssm_states, md)
        y = self.norm(y.reshape(T, self.intermediate_size), gate)
        return self.out_proj(y.to(hidden_states.dtype))
