"""OpenAI batch files offline (vLLM's run_batch): each input line `{"custom_id", "method": "POST",
"url", "body"}` runs through the same serving objects as the HTTP server (chat completions,
completions, embeddings, responses) and becomes an output line `{"id", "custom_id", "response":
{"status_code", "request_id", "body"}, "error"}`. Lines are written as they finish, so a run that
stops leaves a valid partial output; running again skips the custom_ids already answered."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, ValidationError

from pagedllm.entrypoints.openai.errors import OpenAIError, error_body
from pagedllm.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from pagedllm.entrypoints.openai.protocol_base import random_id
from pagedllm.entrypoints.openai.protocol_responses import ResponsesRequest
from pagedllm.entrypoints.openai.state import ServerSettings, ServerState
from pagedllm.logger import init_logger

logger = init_logger(__name__)


@dataclass
class BatchLine:
    line_number: int
    custom_id: str
    url: str
    body: dict[str, Any]


def parse_input(text: str) -> list[BatchLine]:
    """The input file's requests (blank lines skipped); ValueError naming the lines that are not
    batch requests, or a custom_id used twice (as OpenAI validates a batch file before running
    it: the output is keyed by custom_id, which is how a resumed run knows what is done)."""
    lines: list[BatchLine] = []
    problems: list[str] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            problems.append(f"line {number}: not JSON ({e})")
            continue
        problem = _problem(data, seen)
        if problem:
            problems.append(f"line {number}: {problem}")
            continue
        seen.add(data["custom_id"])
        lines.append(BatchLine(number, data["custom_id"], data["url"], data["body"]))
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise ValueError("the input is not a batch file: " + "; ".join(problems[:10]) + more)
    return lines


def _problem(data: Any, seen: set[str]) -> str | None:
    if not isinstance(data, dict):
        return "not a JSON object"
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "custom_id (a string) is required"
    if custom_id in seen:
        return f"custom_id {custom_id!r} appears twice; custom_ids must be unique"
    if data.get("method", "POST") != "POST":
        return f"method must be POST, got {data.get('method')!r}"
    if not isinstance(data.get("url"), str):
        return "url is required"
    if not isinstance(data.get("body"), dict):
        return "body (an object) is required"
    return None


def answered_ids(output_path: str) -> set[str]:
    """custom_ids already in the output file (a resumed run skips them). A last line cut short
    by an interrupted write is removed so appending continues on a clean line."""
    if not os.path.exists(output_path):
        return set()
    with open(output_path, "rb") as f:
        data = f.read()
    if data and not data.endswith(b"\n"):
        data = data[:data.rfind(b"\n") + 1]
        with open(output_path, "wb") as f:
            f.write(data)
    done = set()
    for raw in data.decode("utf-8").splitlines():
        try:
            custom_id = json.loads(raw).get("custom_id")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(custom_id, str):
            done.add(custom_id)
    return done


def output_line(custom_id: str, status: int, body: Any) -> str:
    """OpenAI's batch output line; a request's own failure is its status and error body
    (`error` is for lines that never ran, which a validated input does not have)."""
    request_id = random_id("batch_req")
    return json.dumps({"id": request_id, "custom_id": custom_id, "response": {
        "status_code": status, "request_id": request_id, "body": body}, "error": None},
        ensure_ascii=False) + "\n"


Handler = tuple[type[BaseModel], Callable[[Any], Awaitable[Any]]]


def _handlers(state: ServerState) -> dict[str, Handler]:
    assert state.chat and state.completion and state.embedding and state.responses
    return {
        "/v1/chat/completions": (ChatCompletionRequest, state.chat.create_chat_completion),
        "/v1/completions": (CompletionRequest, state.completion.create_completion),
        "/v1/embeddings": (EmbeddingRequest, state.embedding.create_embedding),
        "/v1/responses": (ResponsesRequest, state.responses.create_response),
    }


async def run_one(handlers: dict[str, Handler], line: BatchLine) -> str:
    """The output line of one input line: 200 and the endpoint's body, or the status and OpenAI
    error body the server would have answered."""
    handler = handlers.get(line.url)
    if handler is None:
        message = f"url {line.url!r} is not one of: {', '.join(handlers)}"
        return output_line(line.custom_id, HTTPStatus.BAD_REQUEST,
                           error_body(HTTPStatus.BAD_REQUEST, message, param="url"))
    model_cls, create = handler
    try:
        request = model_cls.model_validate(line.body)
        if getattr(request, "stream", False):
            raise OpenAIError("stream is not supported in batch files", param="stream")
        result = await create(request)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        return output_line(line.custom_id, HTTPStatus.BAD_REQUEST, error_body(
            HTTPStatus.BAD_REQUEST, f"{loc}: {message}" if loc else message, param=loc or None))
    except OpenAIError as e:
        return output_line(line.custom_id, e.status_code,
                           error_body(e.status_code, e.message, e.type, e.param, e.code))
    except Exception as e:  # one bad request must not lose the others' answers
        logger.exception("batch line %d failed", line.line_number)
        return output_line(line.custom_id, HTTPStatus.INTERNAL_SERVER_ERROR,
                           error_body(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {e}"))
    body = result.model_dump() if isinstance(result, BaseModel) else result
    return output_line(line.custom_id, HTTPStatus.OK, body)


async def run_batch(settings: ServerSettings, input_path: str, output_path: str,
                    max_concurrency: int, progress: bool = True) -> tuple[int, int]:
    """Answer every input line not yet in the output; (lines answered now, lines skipped)."""
    if input_path == "-":
        import sys

        text = sys.stdin.read()
    else:
        with open(input_path, encoding="utf-8") as f:
            text = f.read()
    lines = parse_input(text)
    done = answered_ids(output_path)
    todo = [line for line in lines if line.custom_id not in done]
    if not todo:
        return 0, len(lines)
    state = ServerState(settings)
    state.start_loading()
    await state.wait_loaded()
    if not state.ready:
        raise RuntimeError(f"the engine failed to start: {state.load_error}")
    from tqdm import tqdm

    handlers = _handlers(state)
    semaphore = asyncio.Semaphore(max_concurrency)
    bar = tqdm(total=len(todo), unit="req", disable=None if progress else True)
    try:
        with open(output_path, "a", encoding="utf-8") as out:

            async def one(line: BatchLine) -> None:
                async with semaphore:
                    text = await run_one(handlers, line)
                out.write(text)
                out.flush()  # whole lines as they finish: an interrupted run resumes
                bar.update(1)

            await asyncio.gather(*(one(line) for line in todo))
    finally:
        bar.close()
        await state.shutdown()
    return len(todo), len(lines) - len(todo)
