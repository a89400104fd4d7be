"""Build SamplingMetadata for tests from SamplingParams keyword sets."""

from __future__ import annotations

import torch

from pagedllm.sample.metadata import SamplingMetadata, SamplingRow
from pagedllm.sampling_params import SamplingParams


def make_row(
    prompt: list[int] | None = None, output: list[int] | None = None, **params
) -> SamplingRow:
    sampling_params = SamplingParams(**params)
    generator = None
    if sampling_params.seed is not None:
        generator = torch.Generator().manual_seed(sampling_params.seed)
    return SamplingRow(sampling_params, list(prompt or []), list(output or []), generator)


def build(rows: list[SamplingRow], vocab_size: int, eos: tuple[int, ...] = ()) -> SamplingMetadata:
    return SamplingMetadata.build(rows, vocab_size, "cpu", eos)
