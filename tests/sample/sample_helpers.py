"""Build SamplingMetadata for tests from SamplingParams keyword sets."""

from __future__ import annotations

from pagedllm.sample.metadata import SamplingMetadata, SamplingRow
from pagedllm.sampling_params import SamplingParams


def make_row(
    prompt: list[int] | None = None, output: list[int] | None = None, **params
) -> SamplingRow:
    return SamplingRow(SamplingParams(**params), list(prompt or []), list(output or []))


def build(rows: list[SamplingRow], vocab_size: int, eos: tuple[int, ...] = ()) -> SamplingMetadata:
    return SamplingMetadata.build(rows, vocab_size, "cpu", eos)
