"""Pydantic models of the OpenAI API (field for field, so the official client parses them) plus
vLLM's extra sampling parameters, and the error body."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import Field, model_serializer, model_validator

from pagedllm.entrypoints.openai.protocol_base import MAX_INT32, OpenAIBaseModel, random_id
from pagedllm.entrypoints.openai.protocol_tools import (
    ChatCompletionToolsParam,
    DeltaToolCallModel,
    NamedToolChoice,
    ResponseFormat,
    StructuredOutputsRequest,
    ToolCallModel,
    ToolCallParam,
    ToolChoice,
)

MAX_N = 128
"""Most samples one request may ask for (n); more is rejected as a likely mistake."""
MAX_LOGPROBS = 20
"""Most alternatives per position (logprobs / top_logprobs / prompt_logprobs), as vLLM."""



# ---- errors -------------------------------------------------------------------------------------


class ErrorInfo(OpenAIBaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(OpenAIBaseModel):
    error: ErrorInfo


# ---- shared -------------------------------------------------------------------------------------


class StreamOptions(OpenAIBaseModel):
    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class PromptTokensDetails(OpenAIBaseModel):
    cached_tokens: int = 0


class UsageInfo(OpenAIBaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class SamplingExtras(OpenAIBaseModel):
    """Sampling fields shared by completions and chat (OpenAI's, then vLLM's extras)."""

    model: str | None = None
    frequency_penalty: float | None = 0.0
    presence_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    user: str | None = None
    # vLLM extras
    top_k: int | None = Field(None, ge=-1, le=MAX_INT32)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0)
    min_tokens: int = Field(0, ge=0, le=MAX_INT32)
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    return_tokens_as_token_ids: bool = False
    """Logprob tokens as "token_id:<id>" (exact, whatever the detokenizer makes of them)."""
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputsRequest | None = None
    # vLLM's legacy guided decoding fields (same meaning as structured_outputs' keys)
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_whitespace_pattern: str | None = None
    guided_decoding_backend: str | None = None
    """Accepted and ignored: the backend is the server's (--structured-outputs-config)."""
    use_beam_search: bool = False
    """Beam search with `n` as the beam width; the n best beams are the choices."""
    length_penalty: float = 1.0
    """Beam search: finished beams score cum_logprob / generated_len ** length_penalty."""
    truncate_prompt_tokens: int | None = Field(None, ge=-1, le=MAX_INT32)
    """Keep only the prompt's last k tokens (-1: the last max_model_len), as vLLM."""
    cache_salt: str | None = Field(None, min_length=1, max_length=1024)
    """vLLM's: only requests with the same salt share prefix-cache blocks (tenant isolation)."""
    priority: int = Field(0, ge=-(2**63), le=2**63 - 1)
    """vLLM's: lower runs first under --scheduling-policy priority (a 400 otherwise, unless 0)."""

    @model_validator(mode="after")
    def _check_stream_options(self) -> SamplingExtras:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options can only be set when stream is true")
        # vLLM's choice: prompt logprobs arrive with the first output, which a stream would
        # have to hold back; it refuses the combination instead.
        if self.stream and self.prompt_logprobs:
            raise ValueError("`prompt_logprobs` are not available when `stream=True`.")
        if self.logit_bias:
            for key, value in self.logit_bias.items():
                if not key.lstrip("-").isdigit():
                    raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
                if not -100.0 <= value <= 100.0:
                    raise ValueError(f"logit_bias values must be in [-100, 100], got {value}")
        return self


# ---- completions --------------------------------------------------------------------------------


class CompletionRequest(SamplingExtras):
    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = Field(None, ge=1, le=MAX_N)
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    max_tokens: int | None = Field(16, ge=1, le=MAX_INT32)
    suffix: str | None = None
    add_special_tokens: bool = True
    """vLLM extra: add the tokenizer's special tokens (BOS) to text prompts."""


class CompletionLogProbs(OpenAIBaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionResponseChoice(OpenAIBaseModel):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    """vLLM extra: the stop string or token id that ended the choice."""
    prompt_logprobs: list[dict[int, dict[str, Any]] | None] | None = None


class CompletionResponse(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: random_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionResponseChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


class CompletionStreamResponse(CompletionResponse):
    pass


# ---- chat ---------------------------------------------------------------------------------------


class ImageURL(OpenAIBaseModel):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ChatContentPart(OpenAIBaseModel):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None
    """An image: a data URL (base64), a file: URL under --allowed-local-media-path, or an
    http(s) URL from --allowed-media-domains."""

    @model_validator(mode="after")
    def _check_part(self) -> ChatContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a text content part needs 'text'")
        if self.type == "image_url" and self.image_url is None:
            raise ValueError("an image_url content part needs 'image_url'")
        return self


class ChatMessageParam(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ChatContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallParam] | None = None
    """An assistant's earlier calls (its content may then be null)."""
    tool_call_id: str | None = None
    """A tool message: the call it answers."""
    reasoning: str | None = None
    reasoning_content: str | None = None
    """An assistant's earlier thinking (the llama.cpp/SGLang name; templates such as Qwen3's
    read it)."""

    @model_validator(mode="after")
    def _check_tool_fields(self) -> ChatMessageParam:
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a message with role 'tool' needs a 'tool_call_id'")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages can carry 'tool_calls'")
        if self.reasoning_content is None:
            self.reasoning_content = self.reasoning
        return self


class ChatCompletionRequest(SamplingExtras):
    messages: list[ChatMessageParam] = Field(min_length=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    max_tokens: int | None = Field(None, ge=1, le=MAX_INT32)
    """Deprecated by OpenAI in favour of max_completion_tokens; still honoured."""
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_INT32)
    tools: list[ChatCompletionToolsParam] | None = None
    tool_choice: ToolChoice | None = None
    """None: "auto" when tools are given, else "none" (as OpenAI and vLLM)."""
    parallel_tool_calls: bool | None = True
    # vLLM extras
    include_reasoning: bool = True
    thinking_token_budget: int | None = Field(None, ge=0, le=MAX_INT32)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    add_special_tokens: bool = False

    @model_validator(mode="after")
    def _check_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        if self.continue_final_message and self.add_generation_prompt:
            raise ValueError(
                "continue_final_message and add_generation_prompt cannot both be true")
        return self

    @model_validator(mode="after")
    def _check_tools(self) -> ChatCompletionRequest:
        """vLLM's check_tool_usage, in its words."""
        if self.tools is not None and not self.tools:
            raise ValueError("`tools` must not be an empty array. Either provide at least one "
                             "tool or omit the field entirely.")
        if self.tool_choice is None:
            self.tool_choice = "auto" if self.tools else "none"
        if self.tool_choice == "none":
            return self
        if self.tools is None:
            raise ValueError("When using `tool_choice`, `tools` must be set.")
        if isinstance(self.tool_choice, NamedToolChoice):
            name = self.tool_choice.function.name
            if all(tool.function.name != name for tool in self.tools):
                raise ValueError("The tool specified in `tool_choice` does not match any of "
                                 f"the specified `tools` ({name!r})")
        return self

    def conversation(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        """The tools as OpenAI-shaped dicts (what templates and tool parsers read)."""
        if not self.tools:
            return None
        return [t.model_dump(exclude_none=True) for t in self.tools]


class ChatMessage(OpenAIBaseModel):
    role: str
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallModel] = Field(default_factory=list)
    reasoning: str | None = None
    """vLLM's field for the thinking (with --reasoning-parser)."""
    reasoning_content: str | None = None
    """The same text under the name llama.cpp and SGLang clients read."""

    @model_serializer(mode="wrap")
    def _drop_empty_tool_calls(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if not data.get("tool_calls"):
            data.pop("tool_calls", None)  # as vLLM: no calls, no key
        return data


class ChatTopLogprob(OpenAIBaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatLogprobContent(ChatTopLogprob):
    top_logprobs: list[ChatTopLogprob] = Field(default_factory=list)


class ChatCompletionLogProbs(OpenAIBaseModel):
    content: list[ChatLogprobContent] | None = None
    refusal: list[ChatLogprobContent] | None = None


class ChatCompletionResponseChoice(OpenAIBaseModel):
    index: int
    message: ChatMessage
    logprobs: ChatCompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: random_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionResponseChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


class DeltaMessage(OpenAIBaseModel):
    role: str | None = None
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[DeltaToolCallModel] | None = None


class ChatCompletionStreamChoice(OpenAIBaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatCompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionStreamResponse(OpenAIBaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionStreamChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


# ---- embeddings ---------------------------------------------------------------------------------


class EmbeddingRequest(OpenAIBaseModel):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]] | None = None
    messages: list[dict[str, Any]] | None = None
    """vLLM's chat-style embedding request (instead of `input`): for CLIP/SigLIP, the messages'
    text, or their one `image_url` part, is embedded."""
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=MAX_INT32)
    user: str | None = None
    add_special_tokens: bool = True
    """vLLM extra: add the tokenizer's special tokens ([CLS]/[SEP], BOS) to text inputs."""
    truncate_prompt_tokens: int | None = Field(None, ge=-1, le=MAX_INT32)
    """Keep only each input's last k tokens (-1: the last max_model_len), as vLLM."""

    @model_validator(mode="after")
    def _one_of_input_and_messages(self) -> EmbeddingRequest:
        if (self.input is None) == (self.messages is None):
            raise ValueError("pass exactly one of input and messages")
        return self


class EmbeddingData(OpenAIBaseModel):
    index: int
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str
    """Floats, or base64 of their little-endian float32 bytes (encoding_format "base64")."""


class EmbeddingResponse(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: random_id("embd"))
    object: Literal["list"] = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[EmbeddingData]
    usage: UsageInfo


# ---- models, tokenize -------------------------------------------------------------------------


class ModelCard(OpenAIBaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "pagedllm"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None


class LoadLoRAAdapterRequest(OpenAIBaseModel):
    lora_name: str
    lora_path: str


class UnloadLoRAAdapterRequest(OpenAIBaseModel):
    lora_name: str
    lora_int_id: int | None = Field(None, ge=1, le=MAX_INT32)


class ModelList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)


class TokenizeCompletionRequest(OpenAIBaseModel):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(OpenAIBaseModel):
    model: str | None = None
    messages: list[ChatMessageParam] = Field(min_length=1)
    tools: list[ChatCompletionToolsParam] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    chat_template: str | None = None
    return_token_strs: bool = False

    def conversation(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None


TokenizeRequest = TokenizeCompletionRequest | TokenizeChatRequest


class TokenizeResponse(OpenAIBaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(OpenAIBaseModel):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(OpenAIBaseModel):
    prompt: str
