"""Messages in and out of the engine core (serializable plain data; cross the process boundary)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# The engine core's outputs are produced by the scheduler, so they live with its contracts.
from pagedllm.core.sched.output import EngineCoreOutput, EngineCoreOutputs
from pagedllm.lora.request import LoRARequest
from pagedllm.multimodal.inputs import MultiModalFeature
from pagedllm.pooling_params import PoolingParams
from pagedllm.sampling_params import SamplingParams

__all__ = ["EngineCoreOutput", "EngineCoreOutputs", "EngineCoreRequest"]


@dataclass
class EngineCoreRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    """For n > 1 the output processor fans out n child requests with n == 1 each."""
    arrival_time: float = field(default_factory=time.time)
    priority: int = 0
    pooling_params: PoolingParams | None = None
    """Set for an embedding request (task "embed"); sampling_params are then the defaults."""
    lora_request: LoRARequest | None = None
    """The adapter to run under (None: the base model); checked by the input processor."""
    token_type_ids: list[int] | None = None
    """BERT's segment of each prompt token (a cross-encoder's text pair); None: all 0."""
    cache_salt: str | None = None
    """Prefix-cache isolation: only requests with the same salt share cached blocks."""
    mm_features: list[MultiModalFeature] | None = None
    """The prompt's images (pixels, placeholder positions, content hashes); None: text only."""
    encoder_prompt_token_ids: list[int] | None = None
    """Encoder-decoder models: the encoder's input (prompt_token_ids is the decoder's)."""
    tenant: str | None = None
    """The API key's name (--api-keys-file): the scheduler shares the batch fairly by it."""
    tenant_weight: int = 1
    """The key's `fair_share` weight."""
