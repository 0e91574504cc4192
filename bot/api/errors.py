"""The API's refusals in A1111's shape, `{"error", "detail", "body", "errors"}`, with its
status codes: 422 for a bad field, 404 for an unknown sampler, model or upscaler, 401/403
for access, 409 for a cancelled job, 429 for a full queue, 503 while shutting down."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from engine.errors import EngineClosed, InvalidRequest, JobCancelled, ModelNotFound, QueueFull

log = logging.getLogger(__name__)

_SAMPLER_FIELDS = ("sampler", "hr_sampler")


class ApiError(Exception):
    """A refusal: `status`, a short `detail` for people, `errors` for programs."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str = "HTTPException",
        errors: str | list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.errors = detail if errors is None else errors
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = {"error": self.kind, "detail": self.detail, "body": "", "errors": self.errors}
        return web.json_response(body, status=self.status, headers=self.headers)


def invalid(detail: str) -> ApiError:
    """A field the API cannot honour (422)."""
    return ApiError(422, detail, kind="RequestValidationError")


def from_validation(error: ValidationError) -> ApiError:
    """pydantic's complaint as one short line naming the fields and what they take."""
    problems = [
        {"loc": [str(part) for part in item["loc"]], "msg": item["msg"], "type": item["type"]}
        for item in error.errors(include_url=False, include_input=False)
    ]
    said = "; ".join(f"{'.'.join(p['loc']) or 'body'}: {p['msg']}" for p in problems[:3])
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return ApiError(422, said + more, kind="RequestValidationError", errors=problems)


def from_engine(error: Exception) -> ApiError | None:
    """An engine refusal as the API answers it (None: not a refusal, a failure)."""
    said = str(error)
    if isinstance(error, ModelNotFound) or (
        isinstance(error, InvalidRequest) and error.field in _SAMPLER_FIELDS
    ):
        return ApiError(404, said, kind=type(error).__name__)
    if isinstance(error, InvalidRequest):
        return ApiError(422, said, kind=type(error).__name__)
    if isinstance(error, QueueFull):
        return ApiError(429, said, kind="QueueFull")
    if isinstance(error, JobCancelled):
        return ApiError(409, said, kind="JobCancelled")
    if isinstance(error, EngineClosed):
        return ApiError(503, said, kind="EngineClosed")
    return None


def failure(error: Exception) -> ApiError:
    """Anything else: logged with its traceback; the client gets the kind only."""
    log.exception("API: %s failed", type(error).__name__, exc_info=error)
    return ApiError(500, "The server failed to answer; see its log.", kind=type(error).__name__)
