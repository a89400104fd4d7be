"""Token embedding and the LM head (the same matrix when the model ties them).

Both are vocab-parallel (vLLM's VocabParallelEmbedding / ParallelLMHead): rank r of `tp_size`
holds the vocabulary rows [vocab_start_index, vocab_end_index), ceil(vocab / tp) rows per rank
(the last rank's tail is padding, zero). A lookup masks the ids outside the rank's rows to
zero vectors and all-reduces (each id is found on exactly one rank); the LM head's logits are
all-gathered ([N, tp * rows], the padding cut by the LogitsProcessor). tp_size / tp_rank default
to this process's tensor-parallel group (a world of 1: the whole table, no collectives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.distributed import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_gather,
    tensor_model_parallel_all_reduce,
)
from pagedllm.model_executor.custom_op import compiled_cpu_kernels_apply, float_weight_dtype
from pagedllm.model_executor.layers.weight_utils import default_weight_loader, set_weight_attrs


class VocabParallelEmbedding(nn.Module):
    """prefix: the module's name in the model (a quantization config may keep it float)."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        prefix: str = "",
        tp_size: int | None = None,
        tp_rank: int | None = None,
    ) -> None:
        super().__init__()
        if tp_size is None:
            tp_size = get_tensor_model_parallel_world_size()
            tp_rank = get_tensor_model_parallel_rank() if tp_rank is None else tp_rank
        tp_rank = tp_rank or 0
        if not 0 <= tp_rank < tp_size:
            raise ValueError(f"tp_rank={tp_rank} is not a rank of tp_size={tp_size}")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.prefix = prefix
        self.tp_size = tp_size
        self.tp_rank = tp_rank
        self.num_embeddings_per_partition = -(-num_embeddings // tp_size)  # padded: ceil
        self.vocab_start_index = min(tp_rank * self.num_embeddings_per_partition, num_embeddings)
        self.vocab_end_index = min(self.vocab_start_index + self.num_embeddings_per_partition,
                                   num_embeddings)
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
        if self.tp_size == 1:
            return self._lookup(input_ids)
        # ids of other ranks' rows: looked up as row 0, then zeroed; the sum over ranks
        # leaves each id's one real row
        outside = (input_ids < self.vocab_start_index) | (input_ids >= self.vocab_end_index)
        local = (input_ids - self.vocab_start_index).masked_fill(outside, 0)
        rows = self._lookup(local).masked_fill(outside.unsqueeze(-1), 0.0)
        return tensor_model_parallel_all_reduce(rows)

    def _lookup(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.qweight_kernel is not None:
            return self.qweight_kernel.gather_rows(input_ids).to(torch.get_default_dtype())
        return F.embedding(input_ids, self.weight).to(self.activation_dtype)

    def project(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden [N, embedding_dim] -> [N, tp * rows per rank] (the LM head's matmul; the
        ranks' logits gathered, the vocabulary padded to a multiple of tp)."""
        return tensor_model_parallel_all_gather(self._project_local(hidden_states), dim=-1)

    def _project_local(self, hidden_states: torch.Tensor) -> torch.Tensor:
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
            self._load_rows(param, loaded)
            return
        rows = self.vocab_end_index - self.vocab_start_index
        if rows != self.num_embeddings_per_partition:  # padded: the float table has the rows
            self._load_rows(param, loaded.dequantize())
            return
        loaded = loaded.narrow(0, self.vocab_start_index, rows)  # this rank's rows, in blocks
        from pagedllm.model_executor.quantization.gguf import compact_kquant_weight

        compact = compact_kquant_weight([loaded])  # Q4_K/Q5_K/Q6_K: the file's compact scales
        if compact is not None:
            self.qweight_kernel = compact
            return
        if loaded.qtype.name in supported_gguf_types() and compiled_kernel_fits(
            self.embedding_dim,
            32,
            param.device,  # every GGUF type decodes to groups of 16 or 32
        ):
            self.qweight_kernel = to_packed_group_weight(loaded.decode())
        else:
            default_weight_loader(param, loaded.dequantize())

    def _load_rows(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        """This rank's rows of a [vocab, ...] tensor; the padding rows (last rank) zero."""
        rows = self.vocab_end_index - self.vocab_start_index
        if rows == param.shape[0]:
            default_weight_loader(param, loaded.narrow(0, self.vocab_start_index, rows))
            return
        param.data.zero_()
        default_weight_loader(param.narrow(0, 0, rows),  # type: ignore[arg-type]
                              loaded.narrow(0, self.vocab_start_index, rows))

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

    def _project_local(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = super()._project_local(hidden_states)
        return logits if self.bias is None else logits + self.bias

    def _load_bias(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        self._load_rows(param, loaded)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("ParallelLMHead is applied through LogitsProcessor, not called")
