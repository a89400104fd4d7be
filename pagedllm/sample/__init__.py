"""Token sampling: per-step SamplingMetadata + a vectorized Sampler (see sampler.py for the
order of transforms)."""

from pagedllm.sample.metadata import SamplingMetadata, SamplingRow
from pagedllm.sample.outputs import LogprobsTensors, SamplerOutput
from pagedllm.sample.sampler import Sampler, compute_prompt_logprobs

__all__ = [
    "LogprobsTensors",
    "Sampler",
    "SamplerOutput",
    "SamplingMetadata",
    "SamplingRow",
    "compute_prompt_logprobs",
]
