"""LLM: the offline batch API (vLLM's `LLM`), a thin loop over LLMEngine with a progress bar."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from pagedllm.beam_search import (
    BeamSearch,
    BeamSearchOutput,
    BeamSearchParams,
    StepLogprobs,
    run_beam_search,
    step_logprobs,
)
from pagedllm.engine.arg_utils import EngineArgs
from pagedllm.engine.input_processor import PromptType
from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.entrypoints.score_utils import (
    check_cross_encoder,
    cosine,
    cross_encoder_prompt,
    pair_lists,
)
from pagedllm.lora.request import LoRARequest
from pagedllm.multimodal.chat_images import extract_images
from pagedllm.outputs import (
    ClassificationRequestOutput,
    EmbeddingRequestOutput,
    PoolingRequestOutput,
    RequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from pagedllm.pooling_params import PoolingParams
from pagedllm.sampling_params import RequestOutputKind, SamplingParams
from pagedllm.tokenizer.chat import Conversation, apply_chat_template


class LLM:
    """Offline generation.

        llm = LLM("SmolLM2-135M-Instruct")
        outputs = llm.generate(["Hello, my name is"], SamplingParams(max_tokens=32))
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        dtype: str = "auto",
        max_model_len: int | None = None,
        kv_cache_memory: str | int | None = None,
        max_num_seqs: int = 128,
        max_num_batched_tokens: int | None = None,
        enable_prefix_caching: bool = True,
        enable_chunked_prefill: bool = True,
        block_size: int = 16,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        args = EngineArgs(
            model=model,
            dtype=dtype,
            max_model_len=max_model_len,
            kv_cache_memory=kv_cache_memory,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            enable_prefix_caching=enable_prefix_caching,
            enable_chunked_prefill=enable_chunked_prefill,
            block_size=block_size,
            seed=seed,
            **kwargs,
        )
        self.llm_engine = LLMEngine.from_engine_args(args)
        self._counter = itertools.count()

    def get_tokenizer(self) -> Any:
        return self.llm_engine.get_tokenizer()

    def collective_rpc(self, method: str, args: tuple = ()) -> list[Any]:
        """Call `Worker.<method>(*args)` on every worker (vLLM's name); results by rank. E.g.
        `llm.collective_rpc("set_drafting", (False,))` pauses speculative decoding."""
        return self.llm_engine.engine_core.collective_rpc(method, args)

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt (text, token ids, or {"prompt_token_ids": [...]}); outputs
        come back in input order. lora_request: one adapter for every prompt, or one (or None,
        the base model) per prompt; needs enable_lora=True."""
        prompt_list = _as_prompt_list(prompts)
        params_list = _as_params_list(sampling_params, len(prompt_list))
        loras = _as_lora_list(lora_request, len(prompt_list))
        request_ids = self._add_requests(prompt_list, params_list, loras)
        return self._run_engine(request_ids, use_tqdm)  # type: ignore[return-value]

    def chat(
        self,
        messages: Conversation | list[Conversation],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
    ) -> list[RequestOutput]:
        """Apply the model's chat template to one conversation or a list of them, then generate
        (lora_request: as in generate)."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        tokenizer = self.get_tokenizer()
        config = self.llm_engine.config
        prompts = []
        for conversation in conversations:
            # image_url parts (vision-language models): loaded and checked, placeholders in
            chat = extract_images(conversation, config.model.hf_config, tokenizer,
                                  config.multimodal, config.model.path)
            text = apply_chat_template(
                tokenizer, chat.conversation, chat_template, add_generation_prompt,
                continue_final_message,
            )
            # The template already holds the special tokens (BOS etc.): do not add them again.
            ids = tokenizer.encode(text, add_special_tokens=False)
            prompt: dict[str, Any] = {"prompt_token_ids": ids, "prompt": text}
            if chat.images:
                prompt["multi_modal_data"] = {"image": chat.images}
            prompts.append(prompt)
        outputs = self.generate(prompts, sampling_params, use_tqdm, lora_request)
        for output, prompt in zip(outputs, prompts):
            output.prompt = prompt["prompt"]
        return outputs

    def beam_search(
        self,
        prompts: PromptType | Sequence[PromptType],
        params: BeamSearchParams,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        use_tqdm: bool = False,
    ) -> list[BeamSearchOutput]:
        """Beam search for every prompt (see pagedllm/beam_search.py); one BeamSearchOutput per
        prompt, in input order, its sequences best first. As in vLLM, a sequence's `tokens` and
        `text` hold the prompt and the generation (`token_ids`: the generation alone). Each step
        runs every prompt's live beams as one batch of one-token requests. lora_request: as in
        generate (each prompt's beams run under its adapter)."""
        processor = self.llm_engine.input_processor
        model = self.llm_engine.config.model
        if model.is_encoder_decoder:
            raise ValueError(f"beam search does not run encoder-decoders ({model.architecture}) "
                             f"yet")
        prompt_list = _as_prompt_list(prompts)
        loras = _as_lora_list(lora_request, len(prompt_list))
        for lora in set(loras):
            processor.validate_lora(lora)  # (a bad adapter fails here, before any step)
        searches = [
            BeamSearch(processor.process_prompt(p).prompt_token_ids, params,
                       model.eos_token_ids, model.max_model_len)
            for p in prompt_list
        ]
        if not searches:
            return []
        lora_of = {id(search): lora for search, lora in zip(searches, loras)}

        def run_step(token_prompts: list[list[int]], num_logprobs: int) -> list[StepLogprobs]:
            step = SamplingParams(max_tokens=1, logprobs=num_logprobs,
                                  temperature=params.temperature, detokenize=False)
            # run_beam_search passes the live searches' beams in order, search by search
            beam_loras = [lora_of[id(s)] for s in searches if not s.done for _ in s.beams]
            assert len(beam_loras) == len(token_prompts)
            outputs = self.generate([{"prompt_token_ids": p} for p in token_prompts], step,
                                    use_tqdm=False, lora_request=beam_loras)
            return [step_logprobs(o) for o in outputs]

        bar = tqdm(total=max(s.max_tokens for s in searches), desc="Beam search",
                   disable=not use_tqdm, dynamic_ncols=True)
        try:
            run_beam_search(searches, run_step, on_step=bar.update)
        finally:
            bar.close()
        tokenizer = self.get_tokenizer()
        results = []
        for search in searches:
            sequences = search.best()
            for seq in sequences:
                seq.text = tokenizer.decode(seq.tokens)
            results.append(BeamSearchOutput(sequences))
        return results

    def embed(
        self,
        prompts: PromptType | Sequence[PromptType],
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        use_tqdm: bool = True,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
    ) -> list[EmbeddingRequestOutput]:
        """One embedding per prompt (text, token ids, or {"prompt_token_ids": [...]}), in input
        order. Needs an embedding model (BertModel...) or a decoder started with task="embed";
        the engine packs the prompts into as few forward passes as its token budget allows."""
        prompt_list = _as_prompt_list(prompts)
        if pooling_params is None or isinstance(pooling_params, PoolingParams):
            params_list = [pooling_params or PoolingParams()] * len(prompt_list)
        else:
            params_list = list(pooling_params)
            if len(params_list) != len(prompt_list):
                raise ValueError(f"got {len(params_list)} pooling_params for "
                                 f"{len(prompt_list)} prompts; pass one or one per prompt")
        # (vLLM's signature; adapters serve generation only: the intake refuses one here)
        loras = _as_lora_list(lora_request, len(prompt_list))
        request_ids = self._add_requests(prompt_list, params_list, loras)
        return self._run_engine(request_ids, use_tqdm)  # type: ignore[return-value]

    def classify(
        self,
        prompts: PromptType | Sequence[PromptType],
        use_tqdm: bool = True,
    ) -> list[ClassificationRequestOutput]:
        """Label scores per prompt (`outputs.probs`, in label-id order; the labels are
        `llm.llm_engine.config.model.classifier.labels`), from a sequence-classification model
        (BertForSequenceClassification, (XLM)RobertaForSequenceClassification)."""
        prompt_list = _as_prompt_list(prompts)
        params = [PoolingParams(task="classify")] * len(prompt_list)
        request_ids = self._add_requests(prompt_list, params)
        return self._run_engine(request_ids, use_tqdm)  # type: ignore[return-value]

    def score(
        self,
        data_1: str | Sequence[str],
        data_2: str | Sequence[str],
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
    ) -> list[ScoringRequestOutput]:
        """The score of each (data_1, data_2) pair, vLLM's pairing (one data_1 against every
        data_2, or one each): a cross-encoder's relevance (the sigmoid of its one logit, the pair
        read as one prompt) or, for an embedding model, the cosine similarity."""
        queries, documents = pair_lists(data_1 if isinstance(data_1, str) else list(data_1),
                                        data_2 if isinstance(data_2, str) else list(data_2))
        config = self.llm_engine.config.model
        if config.task == "classify":
            check_cross_encoder(config)
            tokenizer = self.get_tokenizer()
            pairs: list[PromptType] = [
                cross_encoder_prompt(tokenizer, config, q, d, truncate_prompt_tokens)
                for q, d in zip(queries, documents)]
            outputs = self.classify(pairs, use_tqdm=use_tqdm)
            return [ScoringRequestOutput(o.request_id, o.prompt_token_ids,
                                         ScoringOutput(o.outputs.probs[0])) for o in outputs]
        texts = list(dict.fromkeys([*queries, *documents]))  # each distinct text embedded once
        embedded = dict(zip(texts, self.embed(texts, use_tqdm=use_tqdm)))
        return [ScoringRequestOutput(embedded[d].request_id, embedded[d].prompt_token_ids,
                                     ScoringOutput(cosine(embedded[q].outputs.embedding,
                                                          embedded[d].outputs.embedding)))
                for q, d in zip(queries, documents)]

    def _add_requests(self, prompts: list[PromptType],
                      params: Sequence[SamplingParams | PoolingParams],
                      loras: Sequence[LoRARequest | None] | None = None) -> list[str]:
        request_ids = []
        loras = loras or [None] * len(prompts)
        try:
            for prompt, sp, lora in zip(prompts, params, loras):
                sp = sp.clone()
                if isinstance(sp, SamplingParams):
                    sp.output_kind = RequestOutputKind.FINAL_ONLY
                request_id = str(next(self._counter))
                self.llm_engine.add_request(request_id, prompt, sp, lora_request=lora)
                request_ids.append(request_id)
        except Exception:
            # A bad prompt rejects the whole call; nothing of it stays queued.
            self.llm_engine.abort_request(request_ids)
            raise
        return request_ids

    def _run_engine(
        self, request_ids: list[str], use_tqdm: bool
    ) -> list[RequestOutput | PoolingRequestOutput]:
        finished: dict[str, RequestOutput | PoolingRequestOutput] = {}
        bar = tqdm(total=len(request_ids), desc="Processed prompts", disable=not use_tqdm,
                   dynamic_ncols=True)
        generated = 0
        try:
            while self.llm_engine.has_unfinished_requests():
                for output in self.llm_engine.step():
                    if output.finished:
                        finished[output.request_id] = output
                        if isinstance(output, RequestOutput):
                            generated += sum(len(o.token_ids) for o in output.outputs)
                        bar.update(1)
                        bar.set_postfix_str(
                            f"output {generated / max(bar.format_dict['elapsed'], 1e-6):.1f} tok/s"
                        )
        finally:
            bar.close()
        return [finished[r] for r in request_ids]


def _as_prompt_list(prompts: Any) -> list[PromptType]:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    if isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], int):
        return [list(prompts)]
    return list(prompts)


def _as_lora_list(lora: Any, count: int) -> list[LoRARequest | None]:
    if lora is None or isinstance(lora, LoRARequest):
        return [lora] * count
    loras = list(lora)
    if len(loras) != count:
        raise ValueError(
            f"got {len(loras)} lora_requests for {count} prompts; pass one or one per prompt")
    return loras


def _as_params_list(params: Any, count: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams() for _ in range(count)]
    if isinstance(params, SamplingParams):
        return [params] * count
    params = list(params)
    if len(params) != count:
        raise ValueError(
            f"got {len(params)} sampling_params for {count} prompts; pass one or one per prompt"
        )
    return params
