"""The Gemma GGUF tokenizer built by pagedllm (tokenizer/gguf_gemma.py) against transformers'
GGUF converter on the same file: the same vocabulary, added and special tokens, encodings,
decodings and chat template output. On a small synthetic Gemma-style file (its vocabulary made
so that the merge order decides encodings) and on the real Gemma 3 270M file."""

from __future__ import annotations

import json
import random

import pytest

from pagedllm.tokenizer import gguf_gemma
from pagedllm.tokenizer.loader import gguf_gemma_tokenizer
from tests.hf_reference import hf_gguf_tokenizer
from tests.models.gguf_fixtures import write_sentencepiece_gguf

CORPUS = [
    "Hello world",
    "hello, hello! hallo? 'hell' hole",
    " leading space",
    "   three leading spaces and trailing   ",
    "multiple    inner     spaces",
    "line one\nline two\n\nline four\n\n\n",
    "\ttab\t\tdouble tab\t\t\ttriple",
    "mixed \t \n whitespace  \n\t end",
    "digits 0123456789 and 3.14159, 2024-12-07",
    "punctuation: ;:!?.,'\"()[]{}<>/\\|@#$%^&*-_=+~`",
    "日本語のテキスト 日本 中文文本 한국어",
    "emoji 🚀🔥😀👍🏽 👨‍👩‍👧 🇫🇷",
    "Ünïcödé: café, naïve, résumé",
    "control \x01\x02 bytes \x7f",
    "<start_of_turn>user\nhello there<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text with <bos> inside<eos> and <pad><unk><mask>",
    "[multimodal] <b>bold</b> <start_of_image> <unused0>",
    "not special: <start_of_turn <end_of_turn> start_of_turn",
    "a",
    " ",
    "  ",
    "",
]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
MESSAGES = [
    {"role": "user", "content": "Hello there, how are you?"},
    {"role": "model", "content": "I am  fine.\n\tThanks 🚀"},
    {"role": "user", "content": "<bos> and 日本語"},
]


def _synthetic_tokens(seed: int = 0) -> tuple[list[str], list[float], list[int]]:
    """A Gemma-style vocabulary: control and user-defined tokens first (spaces stored as
    spaces), the 256 byte tokens, single characters, then pieces of words in a shuffled order
    with scores that do not follow it (as in Gemma's files: the order ranks the merges), so
    that many merges compete. "▁▁" repeats the respelled "  " (the later copy wins)."""
    rng = random.Random(seed)
    control = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>",
               "<unused0>"]  # fmt: skip
    user = ["[multimodal]", "\n", "\n\n", "\t\t", "\t\t\t", "  ", "   ", "<b>", "</b>",
            "<start_of_image>"]  # fmt: skip
    chars = sorted(set("".join(CORPUS[:10]).replace(" ", "\u2581")) - set("\n\t"))
    extra = "hello hello world wonderful the then there hahaha lalala"
    words = " ".join([*CORPUS[:10], extra]).split()
    pieces = set()
    for word in words:
        spelled = "\u2581" + word
        for length in range(2, 6):
            for start in range(len(spelled) - length + 1):
                pieces.add(spelled[start : start + length])
    pieces = sorted(pieces)
    rng.shuffle(pieces)
    normal = [*chars, "日", "本", "日本", *pieces, "\u2581\u2581"]
    tokens = control + user + [f"<0x{b:02X}>" for b in range(256)] + normal
    types = [3] * len(control) + [4] * len(user) + [6] * 256 + [1] * len(normal)
    scores = [0.0] * (len(control) + len(user) + 256) + [-rng.random() * 100 for _ in normal]
    return tokens, scores, types


def write_gemma_gguf(path: str, arch: str = "gemma3", chat_template: str | None = CHAT_TEMPLATE,
                     add_bos: bool | None = True, add_eos: bool | None = False,
                     merges: list[str] | None = None) -> str:
    """A tokenizer-only Gemma-style GGUF (the synthetic vocabulary above), as llama.cpp's
    converter writes Gemma's: model "llama", no merges, special ids, BOS flag."""
    tokens, scores, types = _synthetic_tokens()

    def configure(writer) -> None:
        writer.add_head_count_kv(1)
        writer.add_tokenizer_pre("default")
        if add_bos is not None:
            writer.add_add_bos_token(add_bos)
        if add_eos is not None:
            writer.add_add_eos_token(add_eos)
        if chat_template is not None:
            writer.add_chat_template(chat_template)
        if merges is not None:
            writer.add_token_merges(merges)

    return write_sentencepiece_gguf(path, arch, tokens, scores, types, configure)


def _added(tokenizer) -> dict[int, tuple]:
    return {i: (t.content, t.special, t.normalized, t.lstrip, t.rstrip, t.single_word)
            for i, t in tokenizer.added_tokens_decoder.items()}  # fmt: skip


def _backend(tokenizer) -> dict:
    return json.loads(tokenizer.backend_tokenizer.to_str())


def assert_same_tokenizer(ours, ref, texts: list[str]) -> None:
    """Everything the engine and its users read from a tokenizer, ours == transformers'."""
    # the whole backend: normalizer, pre-tokenizer, model (vocabulary, merges in their order,
    # byte fallback, unknown piece), added tokens, post-processor, decoder
    assert _backend(ours) == _backend(ref)
    assert len(ours) == len(ref)
    assert ours.get_vocab() == ref.get_vocab()
    assert _added(ours) == _added(ref)
    for attr in ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token",
                 "bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id", "mask_token_id",
                 "all_special_tokens", "all_special_ids", "chat_template", "padding_side",
                 "model_input_names", "add_bos_token", "add_eos_token"):  # fmt: skip
        assert getattr(ours, attr) == getattr(ref, attr), attr
    for text in texts:
        for special in (True, False):
            ids = ours.encode(text, add_special_tokens=special)
            assert ids == ref.encode(text, add_special_tokens=special), (text, special)
            assert ours.convert_ids_to_tokens(ids) == ref.convert_ids_to_tokens(ids)
            for skip in (False, True):
                assert (ours.decode(ids, skip_special_tokens=skip)
                        == ref.decode(ids, skip_special_tokens=skip)), (text, skip)  # fmt: skip
        assert dict(ours(text)) == dict(ref(text)), text
        assert dict(ours(text, "second " + text)) == dict(ref(text, "second " + text)), text
    batch = {"text": texts[:4], "padding": True}
    assert dict(ours(**batch)) == dict(ref(**batch))
    # single tokens decode the same (the first 1000: added tokens, bytes, whitespace runs)
    ids = [*range(min(1000, len(ref))), *range(1000, len(ref), 97)]
    assert ours.convert_ids_to_tokens(ids) == ref.convert_ids_to_tokens(ids)
    assert ours.batch_decode([[i] for i in ids]) == ref.batch_decode([[i] for i in ids])


def _chat(tokenizer, **kwargs):
    return tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, **kwargs)


def _reference(path: str):
    return hf_gguf_tokenizer(path)


@pytest.mark.parametrize("arch", ["gemma3", "gemma"])
def test_synthetic_gemma_gguf_matches_transformers(tmp_path, arch):
    """gemma3 goes through AutoTokenizer in transformers, gemma through GemmaTokenizer."""
    path = write_gemma_gguf(str(tmp_path / f"{arch}.gguf"), arch)
    ours, ref = gguf_gemma_tokenizer(path), _reference(path)
    assert ours is not None  # the fast path took the file
    assert_same_tokenizer(ours, ref, CORPUS)
    assert _chat(ours, tokenize=False) == _chat(ref, tokenize=False)
    assert _chat(ours, tokenize=False).startswith("<bos><start_of_turn>user\n")
    assert list(_chat(ours, tokenize=True)) == list(_chat(ref, tokenize=True))
    # the duplicated spelling keeps its last index, and the repeated whitespace is one token
    assert ours.get_vocab()["\u2581\u2581"] == len(_synthetic_tokens()[0]) - 1
    assert ours.encode("a  b", add_special_tokens=False) == [
        ours.get_vocab()[t] for t in ("a", "\u2581\u2581", "b")]


@pytest.mark.parametrize("add_bos, add_eos", [(None, None), (False, True), (True, True)])
def test_synthetic_bos_eos_flags_match_transformers(tmp_path, add_bos, add_eos):
    """No flag means BOS (sentencepiece's default); EOS only when the file asks for it."""
    path = write_gemma_gguf(str(tmp_path / "flags.gguf"), chat_template=None, add_bos=add_bos,
                            add_eos=add_eos)  # fmt: skip
    ours, ref = gguf_gemma_tokenizer(path), _reference(path)
    assert ours is not None
    assert_same_tokenizer(ours, ref, CORPUS[:4])
    ids = ours.encode("hello")
    assert (ids[0] == 2) == (add_bos is not False) and (ids[-1] == 1) == bool(add_eos)


def test_wrong_merge_orders_fail(tmp_path, monkeypatch):
    """The comparison can fail: merges ranked by the file's scores (which transformers' Gemma
    builder ignores) change encodings of the corpus; one token's splits in the other order
    (shorter left piece first) the backend's merge list."""
    path = write_gemma_gguf(str(tmp_path / "order.gguf"))
    ref = _reference(path)
    right = gguf_gemma.gemma_merges
    tokens, scores, _ = _synthetic_tokens()
    score = dict(zip(tokens, scores))

    def by_score(spelled, vocab):
        return sorted(right(spelled, vocab), key=lambda m: -score.get(m[0] + m[1], 0.0))

    def shorter_left_first(spelled, vocab):
        return sorted(right(spelled, vocab), key=lambda m: (vocab[m[0] + m[1]], len(m[0])))

    monkeypatch.setattr(gguf_gemma, "gemma_merges", by_score)
    ours = gguf_gemma_tokenizer(path)
    assert any(ours.encode(t) != ref.encode(t) for t in CORPUS)
    for wrong in (by_score, shorter_left_first):
        monkeypatch.setattr(gguf_gemma, "gemma_merges", wrong)
        with pytest.raises(AssertionError):
            assert_same_tokenizer(gguf_gemma_tokenizer(path), ref, CORPUS)


def test_other_vocabularies_fall_back(tmp_path):
    """A sentencepiece file of another arch, or a Gemma file with merges (transformers would
    use them), is left to transformers."""
    from gguf import GGUFWriter

    path = str(tmp_path / "llama.gguf")
    writer = GGUFWriter(path, "llama")
    for add in (writer.add_block_count, writer.add_context_length, writer.add_embedding_length,
                writer.add_feed_forward_length, writer.add_head_count):  # fmt: skip
        add(1)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>", "a"])
    writer.add_token_types([2, 3, 3, 1])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert gguf_gemma_tokenizer(path) is None
    with_merges = write_gemma_gguf(str(tmp_path / "merges.gguf"), merges=["\u2581 h"])
    assert gguf_gemma_tokenizer(with_merges) is None
    assert gguf_gemma_tokenizer(write_gemma_gguf(str(tmp_path / "plain.gguf"))) is not None


@pytest.mark.gguf
@pytest.mark.slow
def test_gemma3_270m_tokenizer_matches_transformers(gemma3_270m_gguf_path):
    """The real 262k-entry vocabulary (no chat template in this file: both render an explicit
    one the same)."""
    ours, ref = gguf_gemma_tokenizer(gemma3_270m_gguf_path), _reference(gemma3_270m_gguf_path)
    assert ours is not None
    texts = CORPUS + [
        "The capital of France is Paris. " * 3,
        "def f(x):\n    return {'a': [1, 2.5e-3, None]}  # comment\n",
        "Ελληνικά, Русский текст, العربية, हिन्दी, ภาษาไทย",
        "\U0001f9d1\u200d\U0001f4bb \u00a0nbsp\u2009thin \u3000ideographic space",
        "<start_of_image><end_of_image>\n\n\n\n\t\t\t\t" + " " * 40 + "x",
    ]
    assert_same_tokenizer(ours, ref, texts)
    assert len(ours) == 262144
    assert ours.encode("Hello")[0] == ours.bos_token_id == 2
    assert _chat(ours, tokenize=False, chat_template=CHAT_TEMPLATE) == _chat(
        ref, tokenize=False, chat_template=CHAT_TEMPLATE)
