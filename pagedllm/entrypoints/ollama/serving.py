"""Ollama's endpoints over the chat and embedding paths: /api/chat and /api/generate answer in
NDJSON lines (streamed by default, as Ollama) ending with a `done` line that carries the counts
and durations; /api/embed, /api/tags, /api/show, /api/ps describe the served model in Ollama's
shapes."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import datetime, timezone
from typing import Any

from pagedllm.entrypoints.ollama.protocol import (
    OllamaChatRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    OllamaShowRequest,
    chat_messages,
    chat_tools,
    response_format,
    sampling_fields,
    think_fields,
)
from pagedllm.entrypoints.openai.chat_output import ChoiceStream
from pagedllm.entrypoints.openai.errors import BadRequestError, OpenAIError
from pagedllm.entrypoints.openai.protocol import ChatMessage, EmbeddingRequest
from pagedllm.entrypoints.openai.protocol_base import random_id
from pagedllm.entrypoints.openai.serving_chat import (
    ChatRun,
    OpenAIServingChat,
    chat_request,
    final_output,
)
from pagedllm.entrypoints.openai.serving_embedding import OpenAIServingEmbedding

FAR_FUTURE = "2999-01-01T00:00:00Z"
"""/api/ps's expires_at: the model stays loaded for the server's life."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _line(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False) + "\n"


def _calls(message: ChatMessage) -> list[dict[str, Any]]:
    """Chat tool calls -> Ollama's (arguments as an object)."""
    return [{"function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}
            for c in message.tool_calls]


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {"_raw_arguments": text}
    return value if isinstance(value, dict) else {"_value": value}


class _Timer:
    """Ollama's durations (nanoseconds): prompt evaluation until the first output, then
    generation until the last."""

    def __init__(self) -> None:
        self.start = time.monotonic_ns()
        self.first: int | None = None

    def output(self) -> None:
        if self.first is None:
            self.first = time.monotonic_ns()

    def fields(self, num_prompt_tokens: int, num_output_tokens: int) -> dict[str, Any]:
        end = time.monotonic_ns()
        first = self.first or end
        return {"total_duration": end - self.start, "load_duration": 0,
                "prompt_eval_count": num_prompt_tokens, "prompt_eval_duration": first - self.start,
                "eval_count": num_output_tokens, "eval_duration": end - first}


class OllamaServing:
    def __init__(self, chat: OpenAIServingChat, embedding: OpenAIServingEmbedding) -> None:
        self.chat = chat
        self.embedding = embedding
        self.models = chat.models
        self.config = chat.engine.model_config

    # ---- models ------------------------------------------------------------------------------

    def model_name(self, model: str | None) -> str:
        """A served name; Ollama clients may add the default tag (`name:latest`)."""
        names = self.models.served_model_names
        if model and model not in names and model.endswith(":latest"):
            model = model.removesuffix(":latest")
        return self.models.check_model(model)

    def _family(self) -> str:
        arch = self.config.architecture
        for suffix in ("ForCausalLM", "ForConditionalGeneration", "Model", "ForMaskedLM"):
            arch = arch.removesuffix(suffix)
        return arch.lower() or "unknown"

    def _details(self) -> dict[str, Any]:
        family = self._family()
        return {"parent_model": "", "format": self.config.format if self.config.format == "gguf"
                else "safetensors", "family": family, "families": [family],
                "parameter_size": "", "quantization_level": (self.config.quantization
                                                             or self.config.dtype).upper()}

    def _size(self) -> int:
        path = self.config.path
        if os.path.isfile(path):
            return os.path.getsize(path)
        total = 0
        for root, _, files in os.walk(path):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
        return total

    def _entry(self, name: str) -> dict[str, Any]:
        digest = hashlib.sha256(f"{name}\0{self.config.path}".encode()).hexdigest()
        return {"name": name, "model": name, "size": self._size(), "digest": digest,
                "details": self._details()}

    def _capabilities(self) -> list[str]:
        if self.config.task == "embed":
            return ["embedding"]
        capabilities = ["completion"]
        if self.chat.settings.tools.enable_auto_tool_choice:
            capabilities.append("tools")
        if self.chat.reasoning_parser is not None:
            capabilities.append("thinking")
        return capabilities

    def tags(self) -> dict[str, Any]:
        modified = datetime.fromtimestamp(self.models.created, timezone.utc).isoformat()
        return {"models": [{**self._entry(n), "modified_at": modified}
                           for n in self.models.served_model_names]}

    def ps(self) -> dict[str, Any]:
        return {"models": [{**self._entry(n), "expires_at": FAR_FUTURE, "size_vram": 0,
                            "context_length": self.config.max_model_len}
                           for n in self.models.served_model_names]}

    def show(self, request: OllamaShowRequest) -> dict[str, Any]:
        name = self.model_name(request.model or request.name)
        family = self._family()
        template = self.chat.chat_template or getattr(self.chat.tokenizer, "chat_template", None)
        return {
            "modelfile": f"FROM {self.config.path}\n", "parameters": "",
            "template": template if isinstance(template, str) else "",
            "details": self._details(), "capabilities": self._capabilities(),
            "modified_at": datetime.fromtimestamp(self.models.created, timezone.utc).isoformat(),
            "model_info": {
                "general.architecture": family, "general.basename": name,
                f"{family}.context_length": self.config.max_model_len,
                f"{family}.embedding_length": self.config.hidden_size,
                f"{family}.block_count": self.config.num_hidden_layers,
                f"{family}.attention.head_count": self.config.num_attention_heads,
                f"{family}.attention.head_count_kv": self.config.num_kv_heads,
                "tokenizer.vocab_size": self.config.vocab_size,
            },
        }

    # ---- generation --------------------------------------------------------------------------

    async def chat_request(self, request: OllamaChatRequest
                           ) -> dict[str, Any] | AsyncIterator[str]:
        name = self.model_name(request.model)
        if not request.messages:  # Ollama's "load the model" request
            return self._loaded(name, request.stream, {"message": {"role": "assistant",
                                                                    "content": ""}})
        fields = {"model": name, "messages": chat_messages(request.messages),
                  "tools": chat_tools(request.tools),
                  "response_format": response_format(request.format),
                  "stream": request.stream, **sampling_fields(request.options),
                  **think_fields(request.think)}
        run = self.chat.start(chat_request(_without_none(fields)), random_id("chat"))
        return await self._answer(run, name, request.stream, chat=True)

    async def generate(self, request: OllamaGenerateRequest
                       ) -> dict[str, Any] | AsyncIterator[str]:
        name = self.model_name(request.model)
        for field in ("suffix", "template", "images"):
            if getattr(request, field):
                raise BadRequestError(f"{field} is not supported", param=field)
        if not request.prompt and not request.context:
            return self._loaded(name, request.stream, {"response": ""})
        fields = {"model": name, "response_format": response_format(request.format),
                  "stream": request.stream, "messages": [{"role": "user",
                                                          "content": request.prompt or ""}],
                  **sampling_fields(request.options), **think_fields(request.think)}
        if request.system and not request.raw:
            fields["messages"].insert(0, {"role": "system", "content": request.system})
        chat = chat_request(_without_none(fields))
        context = list(request.context or [])
        prompt_ids = None
        if request.raw:
            prompt_ids = context + self.chat.tokenize(request.prompt or "",
                                                      add_special_tokens=not context)
        elif context:
            prompt_ids = context + self.chat.render_prompt(
                chat.conversation(), None, True, False, False, None, chat.chat_template_kwargs)
        run = self.chat.start(chat, random_id("gen"), prompt_ids)
        return await self._answer(run, name, request.stream, chat=False)

    def _loaded(self, name: str, stream: bool, body: dict[str, Any]
                ) -> dict[str, Any] | AsyncIterator[str]:
        data = {"model": name, "created_at": now_iso(), **body, "done": True,
                "done_reason": "load"}
        if not stream:
            return data

        async def one() -> AsyncIterator[str]:
            yield _line(data)

        return one()

    async def _answer(self, run: ChatRun, name: str, stream: bool,
                      chat: bool) -> dict[str, Any] | AsyncIterator[str]:
        if stream:
            return self._stream(run, name, chat)
        timer = _Timer()
        final = await final_output(run.stream)
        timer.output()
        completion = final.outputs[0]
        message, _ = run.options.message(completion.text, self.chat.tokenizer)
        body: dict[str, Any] = {"model": name, "created_at": now_iso()}
        if chat:
            body["message"] = _chat_message(message.content or "", message.reasoning,
                                            _calls(message))
        else:
            body["response"] = message.content or ""
            if message.reasoning:
                body["thinking"] = message.reasoning
        body.update(done=True, done_reason=completion.finish_reason or "stop",
                    **timer.fields(run.num_prompt_tokens, len(completion.token_ids)))
        if not chat:
            body["context"] = [*run.prompt_ids, *completion.token_ids]
        return body

    async def _stream(self, run: ChatRun, name: str, chat: bool) -> AsyncIterator[str]:
        timer = _Timer()
        choice = ChoiceStream(run.options, self.chat.tokenizer)
        output_ids: list[int] = []
        calls: dict[int, dict[str, str]] = {}
        finish = None
        try:
            async with aclosing(run.stream):  # type: ignore[type-var]
                async for output in run.stream:
                    timer.output()
                    completion = output.outputs[0]
                    output_ids.extend(completion.token_ids)
                    finish = completion.finish_reason
                    delta = choice.step(completion.text, completion.token_ids,
                                        final=finish is not None)
                    if delta is None:
                        continue
                    for call in delta.tool_calls or []:
                        # Ollama sends each call whole: gather the fragments until the end.
                        entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
                        if call.function is not None:
                            entry["name"] += call.function.name or ""
                            entry["arguments"] += call.function.arguments or ""
                    if delta.content or delta.reasoning:
                        yield _line(self._chunk(name, chat, delta.content or "",
                                                delta.reasoning))
        except OpenAIError as e:
            yield _line({"error": e.message})
            return
        last = self._chunk(name, chat, "", None, [
            {"function": {"name": c["name"], "arguments": _arguments(c["arguments"])}}
            for _, c in sorted(calls.items())])
        last.update(done=True, done_reason=finish or "stop",
                    **timer.fields(run.num_prompt_tokens, len(output_ids)))
        if not chat:
            last["context"] = [*run.prompt_ids, *output_ids]
        yield _line(last)

    @staticmethod
    def _chunk(name: str, chat: bool, content: str, thinking: str | None,
               calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": name, "created_at": now_iso()}
        if chat:
            body["message"] = _chat_message(content, thinking, calls or [])
        else:
            body["response"] = content
            if thinking:
                body["thinking"] = thinking
        body["done"] = False
        return body

    # ---- embeddings --------------------------------------------------------------------------

    async def embed(self, request: OllamaEmbedRequest) -> dict[str, Any]:
        name = self.model_name(request.model)
        start = time.monotonic_ns()
        inputs = [request.input] if isinstance(request.input, str) else request.input
        out = await self.embedding.create_embedding(EmbeddingRequest(
            model=name, input=inputs, dimensions=request.dimensions))
        return {"model": name, "embeddings": [d.embedding for d in out.data],
                "total_duration": time.monotonic_ns() - start, "load_duration": 0,
                "prompt_eval_count": out.usage.prompt_tokens}


def _chat_message(content: str, thinking: str | None,
                  calls: list[dict[str, Any]]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = calls
    return message


def _without_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}
