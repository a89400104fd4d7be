"""Incremental detokenization: the text delta each new token adds, never half a character.

vLLM's prefix_offset / read_offset technique, on token ids. Each step decodes two short
windows of the token list and emits what the longer adds:

    all_ids:   ... | prefix_offset ....... read_offset ....... len(all_ids)
                     [-- already emitted --][-- not yet emitted --]
    prefix_text = decode(all_ids[prefix_offset:read_offset])
    new_text    = decode(all_ids[prefix_offset:])
    delta       = new_text[len(prefix_text):]

Decoding from prefix_offset (a few tokens of context) instead of read_offset keeps what
depends on the left neighbour right (SentencePiece's leading-space rule). When new_text ends
in U+FFFD the last token(s) stop mid-way through a multi-byte UTF-8 character: nothing is
emitted and the window grows until the character completes (or the request finishes:
flush()). After an emission both offsets move forward, so each step costs O(window), not
O(sequence length).

Why the deltas concatenate to the one-shot decode: an emission happens only when the window's
text ends in a complete character, so read_offset is always on a character boundary, and
UTF-8 (lossy) decoding of bytes after a boundary does not depend on the bytes before it.
The window starts with up to INITIAL_CONTEXT prompt tokens (as vLLM), which only matters for
tokenizers whose decoder depends on context (then the output keeps, e.g., its leading space,
as a continuation of the prompt should).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

INITIAL_CONTEXT = 5
"""Prompt tokens decoded as left context of the first output tokens."""

_REPLACEMENT = "\ufffd"


class Decoder(Protocol):
    """What the detokenizer needs: HF PreTrainedTokenizer(Fast) and tokenizers.Tokenizer."""

    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Decoder,
        prompt_token_ids: list[int],
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._decode_kwargs: dict[str, Any] = {"skip_special_tokens": skip_special_tokens}
        if hasattr(tokenizer, "clean_up_tokenization_spaces"):
            # NOTE: HF's cleanup (" ." -> ".") looks across window edges and would make the
            # deltas disagree with each other; vLLM's streaming never applies it either.
            self._decode_kwargs["clean_up_tokenization_spaces"] = False
        if getattr(tokenizer, "is_fast", True) is False:
            # Only slow (Python) tokenizers know this option; fast ones never add the spaces.
            self._decode_kwargs["spaces_between_special_tokens"] = spaces_between_special_tokens
        context = list(prompt_token_ids[-INITIAL_CONTEXT:])
        if self._decode(context).endswith(_REPLACEMENT):
            context = []  # a prompt cut mid-character would corrupt the first output char
        self.token_ids: list[int] = context
        """Context tokens followed by every output token."""
        self.num_context_tokens = len(context)
        self.prefix_offset = 0
        self.read_offset = len(context)
        self.output_text = ""
        """Text emitted so far (excludes a held-back incomplete character)."""
        self._prefix_text: str | None = None

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_context_tokens :]

    def update(self, new_token_ids: list[int]) -> str:
        """Append tokens; return the newly stable text (possibly "")."""
        self.token_ids.extend(new_token_ids)
        return self._emit(final=False)

    def flush(self) -> str:
        """At finish: emit whatever is held back, even an incomplete character (as U+FFFD,
        like the one-shot decode)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        if self._prefix_text is None:
            self._prefix_text = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.token_ids[self.prefix_offset :])
        if len(new_text) <= len(self._prefix_text):
            return ""  # e.g. a skipped special token
        if new_text.endswith(_REPLACEMENT) and not final:
            return ""
        delta = new_text[len(self._prefix_text) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
        self._prefix_text = None
        self.output_text += delta
        return delta

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return self.tokenizer.decode(ids, **self._decode_kwargs)


def decode_tokens(
    tokenizer: Decoder, token_ids: Iterable[int], cache: dict[int, str] | None = None
) -> list[str]:
    """Each token id decoded alone (logprobs' decoded_token), special tokens included.

    A token holding part of a multi-byte character decodes to U+FFFD, as in vLLM and the
    OpenAI API. `cache` (token id -> text) may be shared across calls.
    """
    texts = []
    for token_id in token_ids:
        text = cache.get(token_id) if cache is not None else None
        if text is None:
            text = tokenizer.decode([token_id], skip_special_tokens=False)
            if cache is not None:
                cache[token_id] = text
        texts.append(text)
    return texts
