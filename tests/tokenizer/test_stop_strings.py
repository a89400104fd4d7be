import pytest

from pagedllm.tokenizer.detokenizer import IncrementalDetokenizer
from pagedllm.tokenizer.stop import StopStringChecker


def _feed(checker: StopStringChecker, deltas: list[str]):
    """Stream deltas; return (index of the delta that hit, result) or (None, None)."""
    text = ""
    for i, delta in enumerate(deltas):
        text += delta
        hit = checker.check(text, len(delta))
        if hit is not None:
            return i, hit
    return None, None


def test_stop_split_across_three_deltas_excluded() -> None:
    index, hit = _feed(StopStringChecker(["STOP"]), ["Hello S", "T", "OP and more"])
    assert index == 2 and hit == ("STOP", "Hello ")


def test_stop_split_across_deltas_included() -> None:
    index, hit = _feed(StopStringChecker(["\n\n"], True), ["a\n", "\nb"])
    assert index == 1 and hit == ("\n\n", "a\n\n")


def test_earliest_occurrence_wins() -> None:
    checker = StopStringChecker(["world", "lo"])
    assert checker.check("hello world", 11) == ("lo", "hel")
    # Same start: the shorter one completed first.
    assert StopStringChecker(["abc", "ab"], True).check("xabc", 4) == ("ab", "xab")


def test_only_matches_overlapping_new_text() -> None:
    checker = StopStringChecker(["ab"])
    assert checker.check("ab cd", 3) is None  # "ab" was already checked before
    assert checker.check("ab cdab", 2) == ("ab", "ab cd")


def test_no_stop_strings() -> None:
    checker = StopStringChecker([])
    assert checker.check("anything", 8) is None and checker.holdback("anything") == 0


def test_holdback() -> None:
    checker = StopStringChecker(["</answer>", "STOP"])
    assert checker.holdback("text </ans") == 5
    assert checker.holdback("text ST") == 2
    assert checker.holdback("text S") == 1
    assert checker.holdback("text") == 0
    assert checker.holdback("") == 0
    assert checker.holdback("x</answer") == 8  # never the whole stop string (that's a match)
    assert StopStringChecker(["STOP"], include_stop_str_in_output=True).holdback("ST") == 0


def test_empty_stop_string_rejected() -> None:
    with pytest.raises(ValueError):
        StopStringChecker([""])


def test_with_detokenizer_stop_spanning_tokens(small_bpe) -> None:
    raw, _ = small_bpe
    text = "The quick brown fox 🎉 jumps over"
    ids = raw.encode(text).ids
    detok, checker = IncrementalDetokenizer(raw, []), StopStringChecker(["fox 🎉 j"])
    streamed, hit = "", None
    for token in ids:
        delta = detok.update([token])
        hit = checker.check(detok.output_text, len(delta))
        if hit is not None:
            break
        safe_end = len(detok.output_text) - checker.holdback(detok.output_text)
        assert detok.output_text[:safe_end].startswith(streamed)
        streamed = detok.output_text[:safe_end]
    assert hit == ("fox 🎉 j", "The quick brown ")
    assert "fox" not in streamed and hit[1].startswith(streamed)
