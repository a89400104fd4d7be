"""Process groups and collectives for tensor parallelism (torch.distributed underneath).

A worker process calls `init_distributed_environment` then `initialize_model_parallel` before it
builds its model; layers ask `get_tensor_model_parallel_world_size()` / `_rank()` at
construction and call the collectives in `communication_op` in their forward. A process that
never initializes (the in-process worker, tests) is rank 0 of a world of 1, and every collective
is the identity there.
"""

from pagedllm.distributed.communication_op import (
    tensor_model_parallel_all_gather,
    tensor_model_parallel_all_reduce,
)
from pagedllm.distributed.parallel_state import (
    backend_for_device,
    destroy_model_parallel,
    get_ep_group,
    get_pp_group,
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    get_tp_group,
    init_distributed_environment,
    initialize_model_parallel,
    model_parallel_is_initialized,
    pp_layer_range,
)
from pagedllm.distributed.utils import divide, kv_heads_per_rank

__all__ = [
    "backend_for_device", "destroy_model_parallel", "divide", "get_ep_group",
    "get_pp_group", "get_tensor_model_parallel_rank", "pp_layer_range",
    "get_tensor_model_parallel_world_size", "get_tp_group", "init_distributed_environment",
    "initialize_model_parallel", "kv_heads_per_rank", "model_parallel_is_initialized",
    "tensor_model_parallel_all_gather", "tensor_model_parallel_all_reduce",
]
