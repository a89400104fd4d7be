"""OpenAI-style errors: exceptions the serving layer raises and the handlers that turn them (and
FastAPI's own validation/HTTP errors) into `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

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

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


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


def error_json(status: int, message: str, type_: str | None = None, param: str | None = None,
               code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, type_, param, code), status_code=status,
                        headers=headers)


def from_exception(error: OpenAIError) -> JSONResponse:
    return error_json(error.status_code, error.message, error.type, error.param, error.code)


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
    async def _openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
        return from_exception(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_json(HTTPStatus.BAD_REQUEST, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        too_large = exc.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
        code = "request_too_large" if too_large else None
        return error_json(exc.status_code, str(exc.detail), code=code,
                          headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return error_json(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {exc}")
