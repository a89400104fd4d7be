"""Encoder-decoders (BART, T5) through the whole engine against HF transformers fp32: greedy
tokens equal `generate`'s for a batch of encoder prompts of different lengths (chunked decoder
prompts, decodes mixed in, a preemption), decoder logits within tolerance, the encoder run once
per request and scheduling, and every KV block and cross-attention entry freed at the end."""

from __future__ import annotations

import random

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.beam_search import BeamSearchParams
from tests.engine_internals import engine_core

MAX_TOKENS = 8
ENCODER_LENGTHS = [3, 17, 23, 9]

_BART = {"d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
         "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
         "max_position_embeddings": 128, "decoder_start_token_id": 2, "forced_eos_token_id": None,
         "init_std": 0.1}
_T5 = {"d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2,
       "num_heads": 4, "relative_attention_num_buckets": 8,
       "relative_attention_max_distance": 20, "decoder_start_token_id": 0}
CONFIGS = {
    "bart": ("BartConfig", "BartForConditionalGeneration", _BART),
    # T5 v1.1 / Flan: gated-GELU FFN, untied head, unscaled decoder output
    "t5_v1_1": ("T5Config", "T5ForConditionalGeneration",
                {**_T5, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}),
    # the original T5: ReLU FFN, tied head, decoder output scaled by d_model^-0.5
    "t5": ("T5Config", "T5ForConditionalGeneration", {**_T5, "feed_forward_proj": "relu"}),
}


def _save(directory: str, tokenizer_dir: str, variant: str) -> None:
    import transformers
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config_cls, arch, overrides = CONFIGS[variant]
    config = getattr(transformers, config_cls)(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **overrides)
    torch.manual_seed(0)
    model = getattr(transformers, arch)(config).to(torch.float32)
    with torch.no_grad():  # non-trivial norms and biases, so a mix-up shows
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.uniform_(0.5, 1.5)
            elif name.endswith("bias") and param.dim() == 1:
                param.normal_(0.0, 0.1)
            elif name == "final_logits_bias":
                param.normal_(0.0, 0.1)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


@pytest.fixture(scope="module")
def build(tmp_path_factory, tiny_tokenizer_dir):
    """build(variant) -> the directory of that tiny random model (built once per module)."""
    built: dict[str, str] = {}

    def make(variant: str) -> str:
        if variant not in built:
            built[variant] = str(tmp_path_factory.mktemp(variant))
            _save(built[variant], tiny_tokenizer_dir, variant)
        return built[variant]

    return make


@pytest.fixture(params=list(CONFIGS))
def model_dir(request, build) -> str:
    return build(request.param)


def _hf(model_dir: str):
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@torch.inference_mode()
def _hf_generate(hf, encoder_ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy `generate` (no EOS: an id past the vocabulary), start token off."""
    out = hf.generate(torch.tensor([encoder_ids]), max_new_tokens=max_new_tokens,
                      do_sample=False, num_beams=1, eos_token_id=hf.config.vocab_size + 1,
                      forced_eos_token_id=None, pad_token_id=0)
    return out[0, 1:].tolist()


def _prompts(vocab: int, lengths: list[int] = ENCODER_LENGTHS) -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


@torch.inference_mode()
def _hf_logprobs(hf, encoder_ids: list[int], start: int, tokens: list[int]) -> torch.Tensor:
    """[len(tokens)]: HF's log-probability of each token given the ones before it."""
    decoder = torch.tensor([[start, *tokens[:-1]]])
    logits = hf(input_ids=torch.tensor([encoder_ids]), decoder_input_ids=decoder).logits[0]
    return torch.log_softmax(logits.float(), -1)[torch.arange(len(tokens)), tokens]


def test_greedy_and_logprobs_match_hf_mixed_batch_with_preemption(model_dir):
    hf = _hf(model_dir)
    prompts = _prompts(hf.config.vocab_size)
    expected = [_hf_generate(hf, p, MAX_TOKENS) for p in prompts]
    # 6 blocks of 4 tokens: four requests of 8 cached decoder tokens cannot all hold theirs
    # at once, so some are preempted, and re-encoded when they resume
    llm = LLM(model_dir, block_size=4, num_gpu_blocks_override=6, max_model_len=24,
              max_num_batched_tokens=24)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True,
                            logprobs=0)
    core = engine_core(llm)
    runner = core.executor.driver_worker.model_runner
    schedulings = []  # each (re)scheduling of a request hands the runner its encoder prompt
    add_request = runner.encdec.add_request
    runner.encdec.add_request = lambda r, ids: (schedulings.append(r), add_request(r, ids))
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    start = hf.generation_config.decoder_start_token_id
    for prompt, out in zip(prompts, outputs):
        ours = torch.tensor([step[t].logprob for step, t in
                             zip(out.outputs[0].logprobs, out.outputs[0].token_ids)])
        reference = _hf_logprobs(hf, prompt, start, list(out.outputs[0].token_ids))
        torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)
    assert len(schedulings) > len(prompts)  # some were preempted and resumed
    assert runner.encdec.num_encoder_runs == len(schedulings)  # once per scheduling
    core.step()  # the last finished ids reach the runner with the next step
    assert runner.encdec.num_cached == 0  # every cross-attention entry freed
    assert core.scheduler.make_stats().num_free_blocks == 6


def test_explicit_encoder_and_decoder_prompts(build):
    """vLLM's {"encoder_prompt", "decoder_prompt"}: the decoder continues its given prompt
    (the start token prepended), as HF generate continues decoder_input_ids."""
    model_dir = build("bart")
    hf = _hf(model_dir)
    encoder, decoder = _prompts(hf.config.vocab_size, [12, 4])
    start = hf.generation_config.decoder_start_token_id
    with torch.inference_mode():
        out = hf.generate(torch.tensor([encoder]), decoder_input_ids=torch.tensor(
            [[start, *decoder]]), max_new_tokens=MAX_TOKENS, do_sample=False, num_beams=1,
            eos_token_id=hf.config.vocab_size + 1, forced_eos_token_id=None, pad_token_id=0)
    expected = out[0, 1 + len(decoder):].tolist()
    llm = LLM(model_dir, max_model_len=32, kv_cache_memory="1MiB")
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    (output,) = llm.generate({"encoder_prompt": {"prompt_token_ids": encoder},
                              "decoder_prompt": {"prompt_token_ids": decoder}}, params,
                             use_tqdm=False)
    assert output.prompt_token_ids == [start, *decoder]
    assert list(output.outputs[0].token_ids) == expected
    with pytest.raises(ValueError, match="encoder takes at most 128"):
        llm.generate([[5] * 129], params, use_tqdm=False)
    with pytest.raises(ValueError, match="beam search"):
        llm.beam_search([encoder], BeamSearchParams(beam_width=2, max_tokens=2))


def test_completions_through_the_server(build, tmp_path_factory):
    """/v1/completions on a served BART: a batch of encoder prompts of different lengths, as
    token ids and as text, equal to HF generate; an over-long encoder prompt is a 400."""
    import httpx
    from transformers import AutoTokenizer

    from tests.entrypoints.conftest import serve_module

    model_dir = build("bart")
    hf = _hf(model_dir)
    prompts = _prompts(hf.config.vocab_size, [5, 21])
    text = "The quick brown fox jumps over the lazy dog."
    text_ids = AutoTokenizer.from_pretrained(model_dir)(text).input_ids
    expected = [_hf_generate(hf, p, MAX_TOKENS) for p in (*prompts, text_ids)]
    server = serve_module(model_dir, tmp_path_factory, "bart_server", "--max-model-len", "32",
                          "--kv-cache-memory", "1MiB", "--served-model-name", "bart")
    remote = next(server)
    try:
        body = {"model": "bart", "max_tokens": MAX_TOKENS, "temperature": 0.0,
                "ignore_eos": True, "logprobs": 0, "return_tokens_as_token_ids": True}
        batch = httpx.post(f"{remote.url}/v1/completions", json={**body, "prompt": prompts},
                           timeout=60).json()
        single = httpx.post(f"{remote.url}/v1/completions", json={**body, "prompt": text},
                            timeout=60).json()
        choices = sorted(batch["choices"], key=lambda c: c["index"]) + single["choices"]
        assert [[int(t.removeprefix("token_id:")) for t in c["logprobs"]["tokens"]]
                for c in choices] == expected
        bad = httpx.post(f"{remote.url}/v1/completions",
                         json={**body, "prompt": [7] * 200}, timeout=60)
        assert bad.status_code == 400, bad.text
    finally:
        server.close()


def _cross_budget_llm(model_dir: str, **kwargs) -> LLM:
    """A KV budget that splits into 128 decoder tokens (8 blocks of 16) and the cross-attention
    K/V of 128 encoder tokens (this model's bytes per token, self and cross, summed)."""
    from pagedllm.engine.arg_utils import EngineArgs
    from pagedllm.worker.cross_attention_plan import cross_attention_bytes_per_token

    config = EngineArgs(model=model_dir, max_model_len=128).create_engine_config().model
    assert config.compute_dtype == "float32"
    per_token = cross_attention_bytes_per_token(config)  # fp32 cache: self bytes are the same
    return LLM(model_dir, max_model_len=128, kv_cache_memory=128 * 2 * per_token,
               max_num_batched_tokens=64, **kwargs)


@pytest.mark.parametrize("variant", ["bart", "t5"])
def test_cross_attention_budget_makes_requests_wait(build, variant):
    """Four encoder prompts of 40-70 tokens against a 128-token cross-attention budget: at most
    two run at once (the others wait for the memory), tokens still equal HF's, the K/V held
    never exceed the budget and take the planned bytes, and everything is freed at the end."""
    model_dir = build(variant)
    hf = _hf(model_dir)
    prompts = _prompts(hf.config.vocab_size, [60, 50, 70, 40])
    llm = _cross_budget_llm(model_dir)
    core = engine_core(llm)
    runner = core.executor.driver_worker.model_runner
    info, budget = core.executor.kv_cache_info, core.scheduler.cross_attention
    assert (info.num_blocks, info.num_cross_attention_tokens, budget.num_tokens) == (8, 128, 128)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    engine = llm.llm_engine
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    finished, most_running = {}, 0
    per_token = runner.encdec.held_bytes() // max(1, runner.encdec.num_tokens)
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[int(out.request_id)] = list(out.outputs[0].token_ids)
        most_running = max(most_running, core.scheduler.num_running)
        held = runner.encdec
        assert held.num_tokens <= 128 and sum(budget.held.values()) <= 128
        if held.num_tokens:
            per_token = held.held_bytes() // held.num_tokens
    assert most_running == 2  # 60 + 50 fit, 70 waits; then 70 + 40
    assert per_token == info.num_bytes // (info.num_blocks * info.block_size)
    assert [finished[i] for i in range(len(prompts))] == [
        _hf_generate(hf, p, MAX_TOKENS) for p in prompts]
    core.step()  # the last finished ids reach the runner with the next step
    assert runner.encdec.num_cached == 0 and runner.encdec.num_tokens == 0
    assert budget.num_free == 128 and budget.held == {}
    assert core.scheduler.make_stats().num_free_blocks == 8


def test_cross_attention_budget_preempts_lower_priority_and_frees_on_abort(build):
    """Priority policy: a high-priority request whose encoder prompt does not fit beside the
    running ones preempts the lowest-priority one (which is re-encoded when it resumes); an
    aborted request gives its tokens back."""
    model_dir = build("bart")
    hf = _hf(model_dir)
    low_a, low_b, high, aborted = _prompts(hf.config.vocab_size, [60, 50, 70, 30])
    llm = _cross_budget_llm(model_dir, scheduling_policy="priority")
    core, engine = engine_core(llm), llm.llm_engine
    budget = core.scheduler.cross_attention
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    engine.add_request("low_a", low_a, params, priority=5)
    engine.add_request("low_b", low_b, params, priority=5)
    engine.step()
    assert set(budget.held) == {"low_a", "low_b"}
    engine.add_request("high", high, params, priority=0)
    finished, preemptions = {}, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = list(out.outputs[0].token_ids)
        preemptions += engine.last_stats.num_preemptions if engine.last_stats else 0
    assert preemptions >= 1
    for name, prompt in (("low_a", low_a), ("low_b", low_b), ("high", high)):
        assert finished[name] == _hf_generate(hf, prompt, MAX_TOKENS), name
    engine.add_request("aborted", aborted, params)
    engine.step()
    assert budget.held == {"aborted": 30}
    engine.abort_request(["aborted"])
    assert budget.held == {} and budget.num_free == 128


def test_outputs_are_the_same_bits_alone_and_in_any_batch(model_dir):
    """Batch invariance on the encoder-decoder path: each request's greedy tokens and top
    logprobs are the same bits alone and beside encoder prompts of other lengths, in two orders
    (the encoder packs a step's prompts; T5 adds its relative-position bias there)."""
    llm = LLM(model_dir, max_model_len=64, num_gpu_blocks_override=64)
    prompts = _prompts(llm.get_tokenizer().vocab_size)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=3)

    def run(batch: list[list[int]]) -> list[list[tuple[int, dict[int, float]]]]:
        outputs = llm.generate(batch, params, use_tqdm=False)
        return [[(t, {i: lp.logprob for i, lp in step.items()})
                 for t, step in zip(o.outputs[0].token_ids, o.outputs[0].logprobs)]
                for o in outputs]

    alone = [run([p])[0] for p in prompts]
    assert run(prompts) == alone
    assert run(prompts[::-1]) == alone[::-1]
