"""Every refusal the API makes: a status code and a JSON body ``{"error": "<what was wrong>"}``."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse


class ApiError(Exception):
    """A request the service refuses; ``message`` is safe to show the client."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.headers)


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))


def one_line(exc: BaseException, limit: int | None = None, with_type: bool = False) -> str:
    """An exception as one line of text (whitespace collapsed), optionally prefixed by its type and
    cut to ``limit`` characters: for logs and client messages."""
    text = " ".join((f"{type(exc).__name__}: {exc}" if with_type else str(exc)).split())
    return text if limit is None else text[:limit]
