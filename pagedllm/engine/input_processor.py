"""Prompt -> token ids, and the checks of a prompt and its parameters against the model.

Every check here raises ValueError naming the field, before anything reaches the engine core, so
a bad request never disturbs the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pagedllm.config import (
    LoRAConfig,
    ModelConfig,
    MultiModalConfig,
    SchedulerConfig,
    StructuredOutputsConfig,
)
from pagedllm.lora.peft_config import check_adapter_shapes, read_adapter
from pagedllm.lora.request import LoRARequest
from pagedllm.multimodal.inputs import MultiModalFeature
from pagedllm.pooling_params import PoolingParams
from pagedllm.sampling_params import SamplingParams

# What generate() accepts as one prompt: text, token ids, or vLLM's dict forms (and, from the
# server's own code only, a ProcessedPrompt it already processed: see process_prompt).
PromptType = str | list[int] | dict[str, Any]


MAX_CACHE_SALT_CHARS = 1024


def cache_salt_of(prompt: PromptType) -> str | None:
    """vLLM's `cache_salt` of a dict prompt (None: no salt); a ValueError if it is not a
    non-empty string of at most MAX_CACHE_SALT_CHARS characters."""
    if not isinstance(prompt, dict) or prompt.get("cache_salt") is None:
        return None
    salt = prompt["cache_salt"]
    if not isinstance(salt, str) or not salt:
        raise ValueError("cache_salt must be a non-empty string")
    if len(salt) > MAX_CACHE_SALT_CHARS:
        raise ValueError(f"cache_salt must be at most {MAX_CACHE_SALT_CHARS} characters, "
                         f"got {len(salt)}")
    return salt


@dataclass
class ProcessedPrompt:
    prompt: str | None
    prompt_token_ids: list[int]
    token_type_ids: list[int] | None = None
    """BERT segment ids (a text pair for a cross-encoder); None: every token is segment 0."""
    mm_features: list[MultiModalFeature] | None = None
    """The prompt's images (vision-language models), in prompt order; None: text only."""
    encoder_prompt_token_ids: list[int] | None = None
    """Encoder-decoder models: the encoder's input; prompt_token_ids is the decoder's prompt."""


class InputProcessor:
    def __init__(self, model_config: ModelConfig, tokenizer: Any,
                 structured_outputs: StructuredOutputsConfig | None = None,
                 lora_config: LoRAConfig | None = None, scheduling_policy: str = "fcfs",
                 multimodal: MultiModalConfig | None = None,
                 scheduler: SchedulerConfig | None = None) -> None:
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.structured_outputs = structured_outputs or StructuredOutputsConfig()
        self.lora_config = lora_config
        self.scheduling_policy = scheduling_policy
        self.multimodal = multimodal or MultiModalConfig()
        self.scheduler = scheduler or SchedulerConfig()
        self._mm_processor: Any = None

    def _process_multimodal(self, processed: ProcessedPrompt, data: Any) -> ProcessedPrompt:
        """vLLM's multi_modal_data={"image": PIL image or a list of them}: the placeholders
        expanded, one feature per image."""
        from pagedllm.multimodal.processor import MultiModalProcessor, is_multimodal

        if not is_multimodal(self.model_config.hf_config):
            raise ValueError(f"{self.model_config.model} takes no images (multi_modal_data)")
        if not isinstance(data, dict) or set(data) - {"image"}:
            raise ValueError("multi_modal_data must be a dict with the key 'image'")
        images = data.get("image")
        images = images if isinstance(images, (list, tuple)) else [images]
        images = [self._checked_image(image) for image in images if image is not None]
        if self._mm_processor is None:
            self._mm_processor = MultiModalProcessor(self.model_config.hf_config,
                                                     self.model_config.path, self.multimodal)
        ids, features = self._mm_processor.process(processed.prompt_token_ids, images)
        return ProcessedPrompt(processed.prompt, ids, processed.token_type_ids, features or None)

    def _dual_encoder_image(self, prompt: dict[str, Any]) -> ProcessedPrompt:
        """CLIP/SigLIP: {"prompt": "", "multi_modal_data": {"image": image}} -> an image
        prompt for the vision tower."""
        from pagedllm.multimodal.dual_encoder import image_prompt

        data = prompt["multi_modal_data"]
        if not isinstance(data, dict) or set(data) - {"image"}:
            raise ValueError("multi_modal_data must be a dict with the key 'image'")
        images = data.get("image")
        images = images if isinstance(images, (list, tuple)) else [images]
        images = [self._checked_image(image) for image in images if image is not None]
        ids, features = image_prompt(prompt.get("prompt") or prompt.get("prompt_token_ids"),
                                     images, self.model_config.path)
        return ProcessedPrompt(None, ids, None, features)

    def _checked_image(self, image: Any) -> Any:
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise ValueError(f"multi_modal_data['image'] must be PIL images, got "
                             f"{type(image).__name__}")
        if image.width * image.height > self.multimodal.max_image_pixels:
            raise ValueError(f"image is {image.width}x{image.height} pixels; the limit is "
                             f"{self.multimodal.max_image_pixels}")
        return image.convert("RGB")

    def tokenize(self, prompt: str | list[int], add_special_tokens: bool = True) -> list[int]:
        """The token ids of a text or token-id prompt, validated against the vocabulary (an
        encoder-decoder's too: the server tokenizes before the prompt is split)."""
        return self._process(prompt, add_special_tokens).prompt_token_ids

    def process_prompt(
        self, prompt: PromptType | ProcessedPrompt, add_special_tokens: bool = True
    ) -> ProcessedPrompt:
        if isinstance(prompt, ProcessedPrompt):
            # the server processed it already, in this process, to refuse a bad request with a
            # 400 before any work (an image is decoded and run through its processor once)
            return prompt
        if self.model_config.is_encoder_decoder:
            from pagedllm.engine.encoder_decoder_prompt import encoder_decoder_prompt

            return encoder_decoder_prompt(prompt, self._process, self.model_config)
        if isinstance(prompt, dict) and prompt.get("multi_modal_data") is not None:
            from pagedllm.multimodal.dual_encoder import is_dual_encoder

            if is_dual_encoder(self.model_config.hf_config):
                return self._dual_encoder_image(prompt)
            text_only = {k: v for k, v in prompt.items() if k != "multi_modal_data"}
            processed = self._process(text_only, add_special_tokens)
            return self._process_multimodal(processed, prompt["multi_modal_data"])
        return self._process(prompt, add_special_tokens)

    def _process(self, prompt: PromptType, add_special_tokens: bool) -> ProcessedPrompt:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                processed = self._from_token_ids(prompt["prompt_token_ids"])
                if prompt.get("token_type_ids") is not None:
                    processed.token_type_ids = self._token_types(prompt["token_type_ids"],
                                                                 processed.prompt_token_ids)
                return processed
            if "prompt" in prompt:
                return self._process(prompt["prompt"], add_special_tokens)
            raise ValueError("prompt dict needs 'prompt' or 'prompt_token_ids'")
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt must not be empty")
            ids = self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
            if not ids:
                raise ValueError("prompt must not be empty (it encodes to no tokens)")
            return ProcessedPrompt(prompt, list(ids))
        if isinstance(prompt, (list, tuple)):
            return self._from_token_ids(prompt)
        raise ValueError(f"prompt must be a string or a list of token ids, got {type(prompt)}")

    def _from_token_ids(self, token_ids: Any) -> ProcessedPrompt:
        if not token_ids:
            raise ValueError("prompt_token_ids must not be empty")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in token_ids):
            raise ValueError("prompt_token_ids must be a list of integers")
        vocab = self.model_config.vocab_size
        bad = [t for t in token_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(
                f"prompt_token_ids contains token id {bad[0]} outside the vocabulary [0, {vocab})"
            )
        return ProcessedPrompt(None, list(token_ids))

    def _token_types(self, token_type_ids: Any, token_ids: list[int]) -> list[int]:
        """vLLM's TokensPrompt.token_type_ids: one segment id per token, within the model's
        type vocabulary (encoders only)."""
        if not self.model_config.is_encoder_only:
            raise ValueError("token_type_ids are for encoder models (BERT-style) only")
        if not isinstance(token_type_ids, (list, tuple)) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in token_type_ids):
            raise ValueError("token_type_ids must be a list of integers")
        if len(token_type_ids) != len(token_ids):
            raise ValueError(f"token_type_ids has {len(token_type_ids)} entries for "
                             f"{len(token_ids)} prompt tokens")
        num_types = getattr(self.model_config.hf_config, "type_vocab_size", 1)
        if any(not 0 <= t < num_types for t in token_type_ids):
            raise ValueError(f"token_type_ids must be in [0, {num_types})")
        return list(token_type_ids)

    def validate(self, prompt: ProcessedPrompt, params: SamplingParams) -> None:
        if not isinstance(params, SamplingParams):
            raise ValueError("sampling_params must be a SamplingParams")
        if self.model_config.task == "embed":
            raise ValueError(
                f"{self.model_config.model} is served for embeddings (task 'embed'): use "
                f"LLM.embed / /v1/embeddings, or start it with --task generate"
            )
        if self.model_config.task == "classify":
            raise ValueError(
                f"{self.model_config.model} is a classifier (task 'classify'): use "
                f"LLM.classify / LLM.score, /classify, /score or /rerank"
            )
        num = len(prompt.prompt_token_ids)
        max_len = self.model_config.max_model_len
        if num >= max_len:
            raise ValueError(
                f"prompt is {num} tokens long; the maximum model length is {max_len}, which must "
                f"leave room for at least one generated token"
            )
        vocab = self.model_config.vocab_size
        for field_name, ids in (
            ("stop_token_ids", params.stop_token_ids or []),
            ("logit_bias", list((params.logit_bias or {}).keys())),
            ("allowed_token_ids", params.allowed_token_ids or []),
        ):
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"{field_name} has token id {bad[0]} outside [0, {vocab})")
        self._validate_constraints(params)
        # Here, once per request (before fan_out copies the params into its n samples): this
        # is where the tokenizer is, and the engine core only ever sees token ids.
        self.tokenize_bad_words(params)

    def validate_priority(self, priority: int) -> None:
        """A priority other than 0 needs the priority policy (vLLM refuses it likewise: under
        fcfs it would be silently ignored)."""
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValueError(f"priority must be an integer, got {priority!r}")
        if priority != 0 and self.scheduling_policy != "priority":
            raise ValueError(f"priority {priority} needs priority scheduling; the engine runs "
                             f"--scheduling-policy {self.scheduling_policy}")

    def validate_placeholders(self, prompt: ProcessedPrompt) -> None:
        """A vision-language model's image token only ever stands for an image's features: a
        prompt holding it without images is refused (the model would read an embedding that
        was never trained as input)."""
        hf_config = getattr(self.model_config, "hf_config", None)
        from pagedllm.multimodal.processor import image_token_id

        image_token = image_token_id(hf_config) if hf_config is not None else None
        if (image_token is not None and not prompt.mm_features
                and image_token in prompt.prompt_token_ids):
            raise ValueError("the prompt holds image placeholder tokens but no images "
                             "(multi_modal_data / image_url content parts)")
        if prompt.mm_features and image_token is not None:
            self._check_encoder_cache_fits(prompt.mm_features)

    def _check_encoder_cache_fits(self, features: list[MultiModalFeature]) -> None:
        """An image whose encoder output exceeds the encoder cache could never be scheduled
        (nor, without chunked prefill, a prompt whose distinct images together do): refused
        here rather than left waiting forever."""
        size = self.scheduler.resolved_encoder_cache_size(self.model_config.max_model_len)
        lengths = {f.identifier: f.length for f in features}
        need = (max(lengths.values()) if self.scheduler.enable_chunked_prefill
                else sum(lengths.values()))
        if need > size:
            raise ValueError(f"the prompt's images need {need} embedding tokens in the encoder "
                             f"cache at once; encoder_cache_size is {size}")

    def validate_lora(self, lora: LoRARequest | None) -> None:
        """A request's adapter: LoRA must be on, and the adapter readable and within the
        limits (its config and tensor shapes are read here; the weights load in the worker)."""
        if lora is None:
            return
        if not isinstance(lora, LoRARequest):
            raise ValueError(f"lora_request must be a LoRARequest, got {type(lora).__name__}")
        if self.lora_config is None:
            raise ValueError(f"LoRA {lora.lora_name!r} requested, but LoRA is not enabled "
                             f"(LLM(enable_lora=True) / --enable-lora)")
        if self.model_config.task != "generate":
            raise ValueError("LoRA adapters serve generation only, not embeddings or "
                             "classification")
        adapter = read_adapter(lora, self.lora_config.max_lora_rank)
        check_adapter_shapes(lora.lora_name, adapter, self.model_config.hf_config)

    def _validate_constraints(self, params: SamplingParams) -> None:
        """Structured outputs compile in the engine core; here they are only parsed, so a bad
        schema, regex or grammar is the caller's error (a 400) and never reaches the engine."""
        if params.structured_outputs is not None:
            from pagedllm.structured_output.validation import validate_structured_outputs

            validate_structured_outputs(params.structured_outputs, self.structured_outputs)
        budget = params.thinking_token_budget
        if budget is not None and not self.structured_outputs.reasoning_parser:
            raise ValueError(
                "thinking_token_budget needs a reasoning model served with --reasoning-parser")

    def tokenize_bad_words(self, params: SamplingParams) -> None:
        """params.bad_words -> params._bad_words_token_ids, as vLLM does: each word (leading
        whitespace stripped) tokenized without special tokens as is, and with a leading space
        where that gives a different first token and the same number of tokens (the form the
        word takes inside text with a byte-level/sentencepiece tokenizer)."""
        if not params.bad_words or params._bad_words_token_ids is not None:
            return
        sequences: list[list[int]] = []
        for word in params.bad_words:
            word = word.lstrip()
            bare = list(self.tokenizer.encode(word, add_special_tokens=False))
            spaced = list(self.tokenizer.encode(" " + word, add_special_tokens=False))
            if not bare:
                raise ValueError(f"bad_words entry {word!r} encodes to no tokens")
            sequences.append(bare)
            if spaced and spaced[0] != bare[0] and len(spaced) == len(bare):
                sequences.append(spaced)
        vocab = self.model_config.vocab_size
        bad = sorted({t for seq in sequences for t in seq if not 0 <= t < vocab})
        if bad:
            raise ValueError(f"bad_words tokenize to token ids {bad} outside [0, {vocab})")
        params._bad_words_token_ids = sequences

    def validate_pooling(self, prompt: ProcessedPrompt, params: PoolingParams) -> None:
        config = self.model_config
        if config.task == "generate":
            raise ValueError(
                f"{config.model} is served for generation: embeddings need a model started "
                f"with --task embed (or an embedding model such as all-MiniLM-L6-v2), "
                f"classification a sequence-classification model"
            )
        if params.task != config.task:
            ask = {"embed": "embeddings", "classify": "classification"}[params.task]
            uses = {"embed": "LLM.embed / /v1/embeddings",
                    "classify": "LLM.classify / LLM.score, /classify, /score or /rerank"}
            use = uses[config.task]
            raise ValueError(f"{config.model} serves task {config.task!r}, not {ask}: use {use}")
        num = len(prompt.prompt_token_ids)
        if num > config.max_model_len:
            raise ValueError(
                f"input is {num} tokens long; the maximum model length is {config.max_model_len}"
            )
        if params.dimensions is not None:
            if config.pooler is None or not config.pooler.matryoshka:
                raise ValueError(
                    f"{config.model} does not support Matryoshka representation: 'dimensions' "
                    f"cannot change its embedding size ({config.hidden_size})"
                )
            if params.dimensions > config.hidden_size:
                raise ValueError(
                    f"dimensions={params.dimensions} is larger than the embedding size "
                    f"{config.hidden_size}"
                )
