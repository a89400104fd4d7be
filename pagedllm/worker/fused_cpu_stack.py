"""The fused CPU decoder stack: every decoder layer of a model in one call into the compiled
kernel per step (kernels/csrc/decoder_layer.cpp) instead of ~30 module calls per layer.

It runs the same operators in the same order as the eager modules (bit-identical results), so
it applies only where each layer is a block it computes: the pre-norm Llama block
(LlamaDecoderLayer) or Gemma 2/3's sandwich block (Gemma2DecoderLayer: the attention and MLP
outputs normed again before the residual add), with RMSNorms (Gemma's (1 + w) included: its
weight holds the sum), q/k/v with optional bias, optional per-head q/k RMSNorm (Qwen3, Gemma 3),
rotary (any frequency variant: the cos/sin cache is the layer's own, so Gemma 3's local and
global layers differ), paged attention on the compiled backend with a float32, float16 or int8 cache
(the layer's own scale, sliding window and soft cap), o_proj with optional bias, a SwiGLU or
tanh-GeGLU MLP without bias, float32, every linear weight in a layout its quant method exposes
through `fused_weight_spec`, and each linear's LoRA slots where the projection is a LoRALinear
(the step's adapter mapping goes with each call). Each layer becomes a DecoderLayerSpec; a layer
that cannot says why (UnsupportedLayer), and the worker logs it. (The embedding scale and the
final logit soft-cap of Gemma are outside the layers: the model's own.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from pagedllm.attention.backends.cpu_paged import CpuPagedAttentionImpl
from pagedllm.forward_context import current_lora_mapping, get_forward_context
from pagedllm.kernels import cpu_kernels_available
from pagedllm.lora.layers import LoRALinear
from pagedllm.model_executor.layers.activation import GeluAndMul, SiluAndMul
from pagedllm.model_executor.layers.layernorm import RMSNorm
from pagedllm.model_executor.layers.rotary import RotaryEmbedding
from pagedllm.model_executor.models.gemma2 import Gemma2DecoderLayer
from pagedllm.model_executor.models.llama import LlamaAttention, LlamaDecoderLayer, LlamaMLP
from pagedllm.model_executor.quantization.base import FusedWeightSpec

_LINEARS = {"qkv": "self_attn.qkv_proj", "o": "self_attn.o_proj",
            "gate_up": "mlp.gate_up_proj", "down": "mlp.down_proj"}  # fmt: skip
"""The kernel's name of each linear -> the module path inside a decoder layer."""

_ACTIVATIONS = {"silu": 0, "gelu_tanh": 1}
"""DecoderLayerSpec.activation -> the kernel's Activation enum."""

MLP_BLOCK_BYTES = 48 * 2**20
"""What one block of a step's MLP rows may hold in intermediates (see mlp_block_rows)."""


def mlp_block_rows(intermediate_size: int, budget: int = MLP_BLOCK_BYTES) -> int:
    """The MLP's rows per block in the fused stack: its gate|up rows (float32, 2 x I), the
    activation's (float32, I) and the down kernel's int16 copy of them (I) within `budget`,
    a multiple of 16 rows (the kernels' tile) where that is at least 16. A 1B Llama (I = 8192):
    432 rows, so a 2048-token chunk's MLP holds ~46 MiB instead of ~220; Gemma 3 270M
    (I = 2048) 1744 rows, SmolLM2 (I = 1536) 2336."""
    rows = max(1, budget // (intermediate_size * (2 * 4 + 4 + 2)))
    return rows if rows < 16 else rows // 16 * 16


class UnsupportedLayer(Exception):
    """A layer the fused stack cannot compute; the message says what in it."""


@dataclass(frozen=True)
class DecoderLayerSpec:
    """One decoder layer's static inputs to the fused stack, by name."""

    input_norm: torch.Tensor  # [hidden] float32
    post_norm: torch.Tensor  # [hidden], the norm before the MLP (with the residual add)
    attn_out_norm: torch.Tensor | None  # [hidden], Gemma 2/3's sandwich norms; with mlp_out_norm
    mlp_out_norm: torch.Tensor | None  # [hidden]
    eps: float
    activation: str
    """The gated MLP's: "silu" (SwiGLU) or "gelu_tanh" (GeGLU, Gemma)."""
    linears: dict[str, FusedWeightSpec]
    """"qkv", "o", "gate_up", "down" -> its weight."""
    qkv_bias: torch.Tensor | None  # [(H + 2 * Hkv) * D]
    o_bias: torch.Tensor | None  # [hidden]
    q_norm: torch.Tensor | None  # [D], per-head RMSNorm of q (Qwen3); with k_norm
    k_norm: torch.Tensor | None  # [D]
    qk_norm_eps: float | None
    cos_sin_cache: torch.Tensor  # [max_position, rotary_dim] float32
    rotary_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    kv_cache: torch.Tensor  # [2, num_blocks, block_size, Hkv, D] float32 or float16 (int8: D + 4)
    scale: float
    sliding_window: int | None
    soft_cap: float | None
    lora: dict[str, LoRALinear] = field(default_factory=dict)
    """Multi-LoRA: "qkv", "o", "gate_up", "down" -> the projection's slots (absent: none)."""
    mlp_block_rows: int | None = None
    """The MLP's rows per block in a long step (mlp_block_rows()); None: all rows at once."""

    def kernel_args(
        self,
    ) -> tuple[dict[str, torch.Tensor], dict[str, float], dict[str, int]]:
        """LlamaDecoderStack.add_layer's (tensors, scalars, ints); an absent optional is an
        absent key."""
        tensors = {"input_norm": self.input_norm, "post_norm": self.post_norm,
                   "cos_sin_cache": self.cos_sin_cache, "kv_cache": self.kv_cache}  # fmt: skip
        scalars = {"eps": self.eps, "scale": self.scale}
        ints = {"num_heads": self.num_heads, "num_kv_heads": self.num_kv_heads,
                "head_dim": self.head_dim, "rotary_dim": self.rotary_dim,
                "activation": _ACTIVATIONS[self.activation]}  # fmt: skip
        for name, weight in self.linears.items():
            tensors.update({f"{name}.{key}": t for key, t in weight.tensors.items()})
            if weight.layout in ("packed_group", "kquant", "q5"):
                ints.update({f"{name}.group_size": weight.group_size, f"{name}.u4": int(weight.u4)})
                if weight.layout in ("kquant", "q5"):
                    ints[f"{name}.offset"] = weight.offset
                if weight.layout == "q5":
                    ints[f"{name}.q5"] = 1
                if weight.activation_bits != 16:  # (absent: int16, the kernel's default)
                    ints[f"{name}.activation_bits"] = weight.activation_bits
        for name, lora in self.lora.items():
            tensors.update({f"{name}.lora_a": lora.lora_a, f"{name}.lora_b": lora.lora_b})
        optional_tensors = {"qkv_bias": self.qkv_bias, "o_bias": self.o_bias,
                            "q_norm": self.q_norm, "k_norm": self.k_norm,
                            "attn_out_norm": self.attn_out_norm,
                            "mlp_out_norm": self.mlp_out_norm}  # fmt: skip
        tensors.update({k: t for k, t in optional_tensors.items() if t is not None})
        optional_scalars = {"qk_norm_eps": self.qk_norm_eps, "soft_cap": self.soft_cap}
        scalars.update({k: v for k, v in optional_scalars.items() if v is not None})
        if self.sliding_window is not None:
            ints["sliding_window"] = self.sliding_window
        if self.mlp_block_rows is not None:
            ints["mlp_block_rows"] = self.mlp_block_rows
        return tensors, scalars, ints


AllReduce = Callable[[torch.Tensor], torch.Tensor]
"""Sum a tensor over the tensor-parallel ranks (in place where it can)."""


@dataclass
class FusedStackStats:
    """Steps the fused stack ran, and of those the tensor-parallel ones (tests prove the fused
    path ran under -tp with them; `Worker.execution_stats`)."""

    steps: int = 0
    tensor_parallel_steps: int = 0


class FusedCpuStack:
    """A model's decoder layers as one LlamaDecoderStack (the static inputs handed over once;
    per-layer calls from Python would cost ~25 argument conversions each). Called like a
    decoder layer, for all of them (models/llama.py LayerRunner).

    Under tensor parallelism (`all_reduce` given) each layer runs as two calls, cut where its
    row-parallel o_proj and down_proj leave partial sums: the sums go through `all_reduce`
    (torch.distributed) between the calls, before the residual add the kernel fuses into the
    next norm; everything else stays fused."""

    def __init__(self, specs: list[DecoderLayerSpec], all_reduce: AllReduce | None = None) -> None:
        self.stack = torch.classes.pagedllm.LlamaDecoderStack()
        for spec in specs:
            self.stack.add_layer(*spec.kernel_args())
        self.num_layers = len(specs)
        self.all_reduce = all_reduce
        self.stats = FusedStackStats()

    def __call__(
        self,
        positions: torch.Tensor,  # [T]
        hidden: torch.Tensor,  # [T, hidden]
        residual: torch.Tensor | None,  # [T, hidden]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        md = get_forward_context().attn_metadata.common
        lora = current_lora_mapping()
        slots = None if lora is None else lora.token_slots
        self.stats.steps += 1
        if self.all_reduce is None:
            return self.stack.forward(hidden, residual, positions, md.slot_mapping,
                                      md.block_table, md.seq_lens, md.query_start_loc,
                                      slots)  # fmt: skip
        self.stats.tensor_parallel_steps += 1
        stack, all_reduce = self.stack, self.all_reduce
        stack.begin_step(hidden.shape[0], positions, md.slot_mapping, md.block_table,
                         md.seq_lens, md.query_start_loc, slots)  # fmt: skip
        x = hidden
        for index in range(self.num_layers):
            o = all_reduce(stack.attention_partial(index, x, residual if index == 0 else None))
            x = all_reduce(stack.mlp_partial(index, o))
        return stack.end_step(x)


def build_fused_cpu_stack(
    layers: nn.ModuleList, all_reduce: AllReduce | None = None
) -> FusedCpuStack:
    """The fused form of `layers` (their KV caches bound); UnsupportedLayer if any cannot be.
    all_reduce: the tensor-parallel sum (None: one rank)."""
    if not cpu_kernels_available():
        raise UnsupportedLayer("the compiled CPU kernels are not available")
    specs = []
    for index, layer in enumerate(layers):
        try:
            specs.append(layer_spec(layer))  # (first: the block is one the kernel computes)
            _check_parallel_roles(layer, tensor_parallel=all_reduce is not None)
        except UnsupportedLayer as e:
            raise UnsupportedLayer(f"layer {index}: {e}") from None
    return FusedCpuStack(specs, all_reduce)


def layer_spec(layer: nn.Module) -> DecoderLayerSpec:
    """One layer's spec; UnsupportedLayer names the first part the fused stack cannot run."""
    attn_mod, mlp = _check_block(layer)
    attn = attn_mod.attn
    _check_attention_backend(attn)
    norms = _block_norms(layer)
    rotary = attn_mod.rotary_emb
    # (a subclass that rotates differently overrides one of these: M-RoPE's forward_cpu /
    # forward_native read 3-row positions, which the kernel's one cos/sin row per token is not)
    if any(getattr(type(rotary), name) is not getattr(RotaryEmbedding, name)
           for name in ("forward", "forward_cpu", "forward_native")):
        raise UnsupportedLayer(f"{type(rotary).__name__} is not the cached-cos/sin rotary")
    q_norm, k_norm = attn_mod.q_norm, attn_mod.k_norm
    for norm in (q_norm, k_norm):
        if norm is not None:
            _check_rms_norm(norm)
    attn_out, mlp_out = norms["attn_out"], norms["mlp_out"]
    return DecoderLayerSpec(
        input_norm=norms["input"].weight, post_norm=norms["post"].weight,
        attn_out_norm=None if attn_out is None else attn_out.weight,
        mlp_out_norm=None if mlp_out is None else mlp_out.weight,
        eps=norms["input"].eps, activation=_activation(mlp.act_fn),
        linears={name: _linear_weight(layer, name, path) for name, path in _LINEARS.items()},
        qkv_bias=_base(attn_mod.qkv_proj).bias, o_bias=_base(attn_mod.o_proj).bias,
        q_norm=None if q_norm is None else q_norm.weight,
        k_norm=None if k_norm is None else k_norm.weight,
        qk_norm_eps=None if q_norm is None else q_norm.eps,
        cos_sin_cache=rotary.cos_sin_cache, rotary_dim=rotary.rotary_dim,
        num_heads=attn.num_heads, num_kv_heads=attn.num_kv_heads, head_dim=attn.head_size,
        kv_cache=attn.kv_cache, scale=attn.scale, sliding_window=attn.sliding_window,
        soft_cap=attn.logits_soft_cap,
        lora={name: m for name, path in _LINEARS.items()
              if isinstance(m := layer.get_submodule(path), LoRALinear)},
        mlp_block_rows=mlp_block_rows(_base(mlp.down_proj).input_size_per_partition),
    )  # fmt: skip


_BLOCKS = (LlamaDecoderLayer.forward, Gemma2DecoderLayer.forward)
"""The decoder layer forwards the kernel computes: pre-norm, and Gemma 2/3's sandwich norms."""


def _check_block(layer: nn.Module) -> tuple[LlamaAttention, LlamaMLP]:
    """The layer runs one of _BLOCKS, attention and MLP included."""
    # NOTE: the forward methods, not the classes: a family that only changes how the block is
    # built (Qwen2's bias, Qwen3's q/k norm, Mistral's window, Gemma's norm class, Gemma 3's
    # rotary per layer type) computes the same block.
    if type(layer).forward not in _BLOCKS:
        raise UnsupportedLayer(
            f"{type(layer).__name__} computes its own block (not pre-norm or sandwich)"
        )
    attn_mod, mlp = layer.self_attn, layer.mlp
    if type(attn_mod).forward is not LlamaAttention.forward:
        raise UnsupportedLayer(f"{type(attn_mod).__name__} is not the Llama attention")
    if type(mlp).forward is not LlamaMLP.forward:
        raise UnsupportedLayer(f"{type(mlp).__name__} is not a dense gated MLP")
    _activation(mlp.act_fn)
    if _base(mlp.gate_up_proj).bias is not None or _base(mlp.down_proj).bias is not None:
        raise UnsupportedLayer("MLP bias")
    return attn_mod, mlp


def _check_attention_backend(attn: nn.Module) -> None:
    if not isinstance(attn.impl, CpuPagedAttentionImpl):
        raise UnsupportedLayer(f"attention backend {type(attn.impl).__name__} (cpu_paged only)")
    cache = attn.kv_cache
    if cache is None or cache.device.type != "cpu":
        raise UnsupportedLayer("no KV cache bound on the CPU")
    if cache.dtype not in (torch.float32, torch.float16, torch.int8):
        raise UnsupportedLayer(f"KV cache dtype {cache.dtype} (float32, float16 or int8 only)")


def _activation(act_fn: nn.Module) -> str:
    """The kernel's name of a gated activation the compiled kernel computes."""
    if isinstance(act_fn, SiluAndMul):
        name = "silu"
    elif isinstance(act_fn, GeluAndMul) and act_fn.approximate == "tanh":
        name = "gelu_tanh"
    else:
        raise UnsupportedLayer(f"activation {act_fn!r} (SwiGLU and tanh GeGLU only)")
    if not act_fn.runs_compiled_cpu_kernel:
        raise UnsupportedLayer(f"activation {act_fn!r} runs the PyTorch reference (not float32)")
    return name


def _block_norms(layer: nn.Module) -> dict[str, RMSNorm | None]:
    """The block's norms by their role in the kernel (attn_out / mlp_out: sandwich blocks only),
    each checked."""
    if type(layer).forward is Gemma2DecoderLayer.forward:
        norms = {"input": layer.input_layernorm, "post": layer.pre_feedforward_layernorm,
                 "attn_out": layer.post_attention_layernorm,
                 "mlp_out": layer.post_feedforward_layernorm}  # fmt: skip
    else:
        norms = {"input": layer.input_layernorm, "post": layer.post_attention_layernorm,
                 "attn_out": None, "mlp_out": None}  # fmt: skip
    present = [norm for norm in norms.values() if norm is not None]
    for norm in present:
        _check_rms_norm(norm)
    if len({norm.eps for norm in present}) > 1:  # (the kernel takes one eps per layer)
        raise UnsupportedLayer(f"norms of different eps {sorted({n.eps for n in present})}")
    return norms


def _check_rms_norm(norm: nn.Module) -> None:
    if not isinstance(norm, RMSNorm) or not norm.kernel_computes_norm():
        raise UnsupportedLayer(f"{type(norm).__name__} is not an RMSNorm the kernel computes")
    weight = norm.weight
    if weight.dtype != torch.float32 or weight.device.type != "cpu":
        raise UnsupportedLayer(
            f"{type(norm).__name__} weight {weight.dtype} on {weight.device} (float32 CPU only)"
        )
    if not norm.runs_compiled_cpu_kernel:
        raise UnsupportedLayer(f"{type(norm).__name__} runs the PyTorch reference (not float32)")


_ROW_PARALLEL = ("o", "down")
"""The linears whose outputs are partial sums under tensor parallelism (the kernel's cut points)."""


def _check_parallel_roles(layer: nn.Module, tensor_parallel: bool) -> None:
    """The layer's linears are split the way the kernel's cut points assume: under tensor
    parallelism q/k/v and gate/up column-parallel (outputs kept split), o and down row-parallel
    (inputs already split, outputs summed by the stack's all-reduce); else all whole."""
    for name, path in _LINEARS.items():
        linear = layer.get_submodule(path)
        base = _base(linear)
        split = getattr(base, "tp_size", 1) > 1
        if not tensor_parallel:
            if split:
                raise UnsupportedLayer(f"{path} is split over ranks, but no all-reduce was given")
            continue
        role = getattr(base, "parallel_role", "replicated")
        if name in _ROW_PARALLEL:
            if role != "row" or not (base.input_is_parallel and base.reduce_results):
                raise UnsupportedLayer(
                    f"{path}: {type(base).__name__} is not row-parallel with "
                    "split inputs and summed outputs"
                )
            if isinstance(linear, LoRALinear):
                # NOTE: eager LoRA sums the shrunk rows over the ranks and adds the delta to
                # the summed output; adding it to the partial sums would round differently
                raise UnsupportedLayer(f"{path}: LoRA on a row-parallel layer")
        elif role != "column" or getattr(base, "gather_output", False):
            raise UnsupportedLayer(
                f"{path}: {type(base).__name__} is not column-parallel with split outputs"
            )


def _base(linear: nn.Module) -> nn.Module:
    """The linear layer itself, under its LoRA wrapper if it has one."""
    return linear.base_layer if isinstance(linear, LoRALinear) else linear


def _linear_weight(layer: nn.Module, name: str, path: str) -> FusedWeightSpec:
    linear = layer.get_submodule(path)
    if isinstance(linear, LoRALinear):
        linear = linear.base_layer  # (its slots go to the spec's `lora`)
    spec = linear.quant_method.fused_weight_spec(linear)
    if spec is None:
        method = type(linear.quant_method).__name__
        raise UnsupportedLayer(f"{path}: {method} has no fused layout for its weight")
    return spec
