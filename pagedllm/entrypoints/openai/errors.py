"""OpenAI-style errors: exceptions the serving layer raises and the handlers that turn them (and
FastAPI's own validation/HTTP errors) into `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pagedllm.entrypoints.openai.protocol import ErrorInfo, ErrorResponse
from pagedllm.logger import init_logger

logger = init_logger(__name__)


class OpenAIError(Exception):
    status_code = HTTPStatus.BAD_REQUEST
    type = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers
        """Extra response headers (Retry-After on a 503 or 429)."""


class BadRequestError(OpenAIError):
    pass


class AuthenticationError(OpenAIError):
    status_code = HTTPStatus.UNAUTHORIZED


class NotFoundError(OpenAIError):
    status_code = HTTPStatus.NOT_FOUND


class PayloadTooLargeError(OpenAIError):
    status_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class ServiceUnavailableError(OpenAIError):
    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    type = "server_error"


class InternalServerError(OpenAIError):
    status_code = HTTPStatus.INTERNAL_SERVER_ERROR
    type = "server_error"


def error_body(status: int, message: str, type_: str | None = None, param: str | None = None,
               code: str | None = None) -> dict:
    if type_ is None:
        type_ = "server_error" if status >= 500 else "invalid_request_error"
    info = ErrorInfo(message=message, type=type_, param=param, code=code)
    return ErrorResponse(error=info).model_dump()


ErrorRenderer = Callable[[int, str, str | None, str | None, str | None], dict]
"""(status, message, type, param, code) -> another dialect's error body."""

_DIALECT_ERRORS: dict[str, ErrorRenderer] = {}
"""Path prefix -> renderer: the Anthropic and Ollama routes answer errors in their own shape
(their clients read nothing else); every other path gets OpenAI's."""


def register_error_dialect(path_prefix: str, renderer: ErrorRenderer) -> None:
    _DIALECT_ERRORS[path_prefix] = renderer


def dialect_error_body(path: str, status: int, message: str, type_: str | None = None,
                       param: str | None = None, code: str | None = None) -> dict:
    """The error body in the dialect of the route at `path`."""
    for prefix, renderer in _DIALECT_ERRORS.items():
        if path.startswith(prefix):
            return renderer(status, message, type_, param, code)
    return error_body(status, message, type_, param, code)


def error_json(status: int, message: str, type_: str | None = None, param: str | None = None,
               code: str | None = None, headers: dict | None = None,
               path: str = "") -> JSONResponse:
    return JSONResponse(dialect_error_body(path, status, message, type_, param, code),
                        status_code=status, headers=headers)


def from_exception(error: OpenAIError, path: str = "") -> JSONResponse:
    return error_json(error.status_code, error.message, error.type, error.param, error.code,
                      headers=error.headers, path=path)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """First pydantic error as "field: message" (400, never 422)."""
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"malformed JSON body: {first.get('msg', '')}", None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error(s))"
    return message, param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return from_exception(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_json(HTTPStatus.BAD_REQUEST, message, param=param, path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        too_large = exc.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
        code = "request_too_large" if too_large else None
        return error_json(exc.status_code, str(exc.detail), code=code,
                          headers=getattr(exc, "headers", None), path=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return error_json(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {exc}",
                          path=request.url.path)
