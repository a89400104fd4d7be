"""Token embedding and the LM head (the same matrix when the model ties them).

Both are vocab-parallel (vLLM's VocabParallelEmbedding / ParallelLMHead): rank r of `tp_size`
holds the vocabulary rows [vocab_start_index, vocab_end_index). There is no tensor parallelism
yet: at tp_size 1 a rank holds the whole table; the distributed issue adds the masking of
out-of-range ids and the all-reduce (embedding) / all-gather (LM head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.model_executor.custom_op import compiled_cpu_kernels_apply, float_weight_dtype
from pagedllm.model_executor.layers.weight_utils import default_weight_loader, set_weight_attrs


class VocabParallelEmbedding(nn.Module):
    """prefix: the module's name in the model (a quantization config may keep it float)."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        prefix: str = "",
        tp_size: int = 1,
        tp_rank: int = 0,
    ) -> None:
        super().__init__()
        if num_embeddings % tp_size or not 0 <= tp_rank < tp_size:
            raise ValueError(f"vocab {num_embeddings} cannot be split as rank {tp_rank} of "
                             f"{tp_size}")  # fmt: skip
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.prefix = prefix
        self.tp_size = tp_size
        self.tp_rank = tp_rank
        self.num_embeddings_per_partition = num_embeddings // tp_size
        self.vocab_start_index = tp_rank * self.num_embeddings_per_partition
        self.vocab_end_index = self.vocab_start_index + self.num_embeddings_per_partition
        # torch.empty: pages are only resident once written, so a table that is loaded straight
        # into quantized form (load_weight) never costs its float size.
        self.compiled_matmul = compiled_cpu_kernels_apply()
        """The LM head's float matmul runs the compiled kernel (built float32 on the CPU)."""
        self.activation_dtype = torch.get_default_dtype()
        """What lookups return (the table may be kept in a half dtype, see float_weight_dtype)."""
        weight = torch.empty(self.num_embeddings_per_partition, embedding_dim,
                             dtype=float_weight_dtype(self.compiled_matmul))  # [V/tp, hidden]
        self.weight = nn.Parameter(weight, requires_grad=False)
        set_weight_attrs(self.weight, weight_loader=self.load_weight)

        self.qweight_kernel: nn.Module | None = None
        """Set by quantize_(): the table held quantized (then `weight` is gone)."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, hidden]
        if self.qweight_kernel is not None:
            return self.qweight_kernel.gather_rows(input_ids).to(torch.get_default_dtype())
        return F.embedding(input_ids, self.weight).to(self.activation_dtype)

    def project(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden [N, embedding_dim] -> [N, num_embeddings] (the LM head's matmul)."""
        if self.qweight_kernel is not None:
            return self.qweight_kernel(hidden_states)
        from pagedllm.model_executor.layers.linear import dense_linear

        return dense_linear(hidden_states, self.weight, None, self.compiled_matmul)

    def load_weight(self, param: nn.Parameter, loaded) -> None:
        """A float tensor, or a GGUF table still in its blocks (model_loader.gguf.GGUFWeight):
        that one becomes the compiled kernel's codes and scales directly, exact and without a
        float copy of the table at any point (SmolLM2's is 113 MB in float32, Gemma 3's 671 MB)."""
        from pagedllm.model_executor.quantization.gguf_blocks import supported_gguf_types
        from pagedllm.model_executor.quantization.group_quant import (
            compiled_kernel_fits,
            to_packed_group_weight,
        )

        if isinstance(loaded, torch.Tensor):
            rows = self.vocab_end_index - self.vocab_start_index
            default_weight_loader(param, loaded.narrow(0, self.vocab_start_index, rows))
            return
        assert self.tp_size == 1, "GGUF tables load whole (tp_size 1)"
        if loaded.qtype.name in supported_gguf_types() and compiled_kernel_fits(
            self.embedding_dim,
            32,
            param.device,  # every GGUF type decodes to groups of 16 or 32
        ):
            self.qweight_kernel = to_packed_group_weight(loaded.decode())
        else:
            default_weight_loader(param, loaded.dequantize())

    def quantize_(self) -> None:
        """Hold the table as int8 codes with a scale per 32 columns in the compiled kernel's
        layout, dropping the float copy; unchanged where that kernel does not apply (a table
        loaded from GGUF blocks is in that layout already).

        Why: with tied embeddings the LM head is ~20 % of a small model's weights and, in
        float32, the largest single read of every decode step.
        """
        from pagedllm.model_executor.quantization.group_quant import (
            compiled_kernel_fits,
            quantize_int8_grouped,
            to_packed_group_weight,
        )

        if self.qweight_kernel is None:
            if not compiled_kernel_fits(self.embedding_dim, 32, self.weight.device):
                return
            self.qweight_kernel = to_packed_group_weight(
                quantize_int8_grouped(self.weight.detach())
            )
        if "weight" in self._parameters:
            del self.weight

    def extra_repr(self) -> str:
        tp = f", tp={self.tp_rank}/{self.tp_size}" if self.tp_size > 1 else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{tp}"


class ParallelLMHead(VocabParallelEmbedding):
    """The output projection [vocab, hidden] (applied by LogitsProcessor through `project`),
    with a bias [vocab] where the checkpoint has one (Phi-1/2, GPT-J)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, bias: bool = False,
                 **kwargs) -> None:  # fmt: skip
        super().__init__(num_embeddings, embedding_dim, **kwargs)
        self.bias: nn.Parameter | None = None
        if bias:
            b = torch.empty(self.num_embeddings_per_partition, dtype=torch.get_default_dtype())
            self.bias = nn.Parameter(b, requires_grad=False)
            set_weight_attrs(self.bias, weight_loader=self._load_bias)

    def project(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = super().project(hidden_states)
        return logits if self.bias is None else logits + self.bias

    def _load_bias(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        rows = self.vocab_end_index - self.vocab_start_index
        default_weight_loader(param, loaded.narrow(0, self.vocab_start_index, rows))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("ParallelLMHead is applied through LogitsProcessor, not called")
