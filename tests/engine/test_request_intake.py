"""RequestIntake: validation once, the n > 1 fan-out, and nothing registered for a bad request."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pagedllm.engine.input_processor import InputProcessor
from pagedllm.engine.output_processor import OutputProcessor
from pagedllm.engine.request_intake import RequestIntake
from pagedllm.sampling_params import SamplingParams


class CountingProcessor(InputProcessor):
    def __init__(self) -> None:
        config = SimpleNamespace(vocab_size=100, max_model_len=16, task="generate", pooler=None,
                                 model="tiny", is_encoder_decoder=False)  # fmt: skip
        super().__init__(config, tokenizer=None)
        self.validations = 0

    def validate(self, prompt, params) -> None:
        self.validations += 1
        super().validate(prompt, params)


@pytest.fixture
def intake() -> RequestIntake:
    return RequestIntake(CountingProcessor(), OutputProcessor(tokenizer=None))


def test_n_samples_fan_out_into_children_validated_once(intake):
    accepted = intake.add("r", [1, 2, 3], SamplingParams(n=3, seed=7, max_tokens=2))
    children = accepted.core_requests
    assert [c.request_id for c in children] == ["0_r", "1_r", "2_r"]
    assert [c.sampling_params.seed for c in children] == [7, 8, 9]
    assert all(c.sampling_params.n == 1 for c in children)
    assert intake.input_processor.validations == 1
    assert set(intake.output_processor.states) == {"0_r", "1_r", "2_r"}
    assert intake.abort(["r"]) == ["0_r", "1_r", "2_r"]
    assert not intake.output_processor.states and "r" not in intake


def test_one_sample_keeps_the_request_id(intake):
    accepted = intake.add("r", [1, 2], SamplingParams(max_tokens=2))
    assert [c.request_id for c in accepted.core_requests] == ["r"]
    intake.finished("r")
    assert len(intake) == 0


@pytest.mark.parametrize(
    "prompt, params, message",
    [
        (list(range(16)), SamplingParams(n=2), "maximum model length is 16"),
        ([1, 200], SamplingParams(n=2), "outside the vocabulary"),
        ([1, 2], SamplingParams(n=2, stop_token_ids=[500]), "stop_token_ids"),
        ([1, 2], SamplingParams(n=2, allowed_token_ids=[3, 100]), "allowed_token_ids"),
    ],
)
def test_a_bad_request_registers_nothing(intake, prompt, params, message):
    with pytest.raises(ValueError, match=message):
        intake.add("r", prompt, params)
    assert "r" not in intake and not intake.output_processor.states


def test_a_request_id_in_use_is_refused(intake):
    intake.add("r", [1], SamplingParams(n=2))
    with pytest.raises(ValueError, match="already in use"):
        intake.add("r", [2], SamplingParams())
    assert set(intake.output_processor.states) == {"0_r", "1_r"}


class WordTokenizer:
    """Each space-separated word is one token (a leading space makes a different token: id +
    50, like byte-level BPE's 'Ġword'); counts its calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        assert not add_special_tokens
        self.calls.append(text)
        ids = [len(word) + 50 for word in text.split()]  # every word after a space
        if not text.startswith(" "):
            ids[0] -= 50
        return ids


def test_bad_words_tokenized_once_and_kept_by_every_sample(intake):
    tokenizer = intake.input_processor.tokenizer = WordTokenizer()
    params = SamplingParams(n=3, bad_words=["ab cde", "  f"])
    children = intake.add("r", [1, 2], params).core_requests
    # Each word, as is and with a leading space (vLLM keeps the spaced form when its first
    # token differs and its length is the same); leading whitespace stripped first.
    assert sorted(tokenizer.calls) == sorted(["ab cde", " ab cde", "f", " f"])
    expected = [[2, 53], [52, 53], [1], [51]]
    assert all(c.sampling_params._bad_words_token_ids == expected for c in children)
    assert params._bad_words_token_ids == expected


def test_bad_words_outside_the_vocabulary_are_refused(intake):
    intake.input_processor.tokenizer = WordTokenizer()
    with pytest.raises(ValueError, match="bad_words"):
        intake.add("r", [1, 2], SamplingParams(bad_words=["x" * 120]))
    assert "r" not in intake and not intake.output_processor.states
