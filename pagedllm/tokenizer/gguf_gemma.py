"""The `tokenizers` backend of a Gemma GGUF's sentencepiece-BPE vocabulary, built directly.

A Gemma GGUF (`tokenizer.ggml.model == "llama"`, arch gemma / gemma2 / gemma3) stores the
vocabulary, scores and token types but no merges. transformers' GGUF converter rebuilds the
merges from the vocabulary and hands them to its Gemma tokenizer class; for Gemma 3's 262k
tokens a first load took 30 s on the loaded 2-core machine. This module builds the same backend
(same vocabulary, merges in the same order, normalizer, pre-tokenizer, decoder, byte fallback
and added tokens); loader.py wraps it: 4.5 s there, file parsing included
(benchmarks/gguf_tokenizer_load.py). What transformers does, in short:

- a token made of whitespace with a space in it (Gemma stores "  " as real spaces) is spelled
  as that many "▁" (the normalizer turns spaces into "▁", so that is how text looks it up);
- vocabulary: spelling -> index; a spelling that occurs twice keeps its last index;
- merges: every split of a token into two vocabulary pieces, best first, where "best" is the
  token's position in the file (earlier is better; Gemma's scores do not follow the merge order)
  and, within one token, the longer left piece first;
- control tokens (type 3) become special added tokens, user-defined ones (type 4, e.g. runs of
  tabs, `<start_of_image>`) plain added tokens, both matched whole and never normalized.
"""

from __future__ import annotations

from typing import Any

GEMMA_ARCHS = frozenset({"gemma", "gemma2", "gemma3"})
"""GGUF archs whose sentencepiece vocabulary this module builds (transformers' gemma builder)."""
CONTROL, USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values
_SPACE = "\u2581"
_BPE_UNK = "<unk>"
"""The unknown piece of the BPE model: the tokenizer class's default, whatever the file says
its unknown token is (transformers builds the model before it reads the special ids)."""


def spell(tokens: list[str]) -> list[str]:
    """The tokens as the normalized text spells them: whitespace-only tokens with a space in
    them as that many "▁" (a token of tabs or newlines stays as it is)."""
    return [_SPACE * len(t) if " " in t and not t.strip() else t for t in tokens]


def gemma_merges(spelled: list[str], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """The merges the vocabulary implies, best first.

    Every token is cut at every point where both halves are in the vocabulary. The token's
    position ranks its merges (a spelling that occurs twice ranks by its last position, the one
    the vocabulary keeps); one token's splits go longer left piece first (transformers sorts by
    rank, then left length, then right length, best first)."""
    merges: list[tuple[str, str]] = []
    append = merges.append
    for index, token in enumerate(spelled):
        if vocab[token] != index:
            continue  # an earlier copy of a spelling the file repeats: ranked by its last one
        for cut in range(len(token) - 1, 0, -1):
            left = token[:cut]
            if left in vocab:
                right = token[cut:]
                if right in vocab:
                    append((left, right))
    return merges


def gemma_backend(tokens: list[str], token_types: list[int]) -> Any:
    """The tokenizers.Tokenizer (no post-processor: the wrapper adds BOS / EOS)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

    spelled = spell(tokens)
    vocab = {token: index for index, token in enumerate(spelled)}
    bpe = models.BPE(vocab=vocab, merges=gemma_merges(spelled, vocab), fuse_unk=True,
                     unk_token=_BPE_UNK, dropout=None, byte_fallback=True)  # fmt: skip
    tokenizer = Tokenizer(bpe)
    tokenizer.normalizer = normalizers.Replace(" ", _SPACE)
    # (after the normalizer no space is left to split on; transformers' Gemma class has it too)
    tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous",
                                                   invert=False)  # fmt: skip
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    # NOTE: the file's own spellings, not the "▁" ones: a whitespace user-defined token with a
    # space in it is then not in the vocabulary and not added (as in transformers).
    kinds = list(zip(tokens, token_types))
    control = [AddedToken(t, normalized=False, special=True) for t, k in kinds if k == CONTROL]
    tokenizer.add_special_tokens(control)
    known = vocab.keys() | {str(t) for t in control}
    tokenizer.add_tokens([
        AddedToken(t, normalized=False, special=False)
        for t, kind in kinds if kind == USER_DEFINED and t in known
    ])  # fmt: skip
    return tokenizer
