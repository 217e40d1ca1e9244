"""ASGI middleware in front of the API routes: checks that need no body, done before it is read.

Order: API key (401), method (405), Content-Type (415; this is also what keeps BentoML from ever
seeing an ``application/vnd.bentoml+pickle`` body), declared Content-Length (413). Anything else
(health, metrics, docs, CORS preflight requests) passes through untouched.

Added with ``Service.add_asgi_middleware``: BentoML places it inside its traffic middlewares (so
MT_MAX_CONCURRENCY and MT_TIMEOUT_S apply first) and outside its CORS and context middlewares.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.datastructures import Headers

from mtdefect.serving.errors import ApiError
from mtdefect.serving.upload import check_content_length, check_content_type

ARRIVED = "mtdefect.arrived"  # scope key: time.monotonic() when the request reached the guard


class ApiGuard:
    def __init__(
        self,
        app: Any,
        paths: Iterable[str],
        max_body_bytes: int,
        api_key: str | None = None,
        body_limits: Mapping[str, int] | None = None,
    ) -> None:
        """``body_limits``: per path, a body limit other than ``max_body_bytes`` (the multi-view
        endpoint takes several images)."""
        self.app = app
        self.paths = frozenset(paths)
        self.max_body_bytes = max_body_bytes
        self.body_limits = dict(body_limits or {})
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        scope[ARRIVED] = time.monotonic()  # the deadline counts from here (admission.Deadline)
        headers = Headers(scope=scope)
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            return await self.app(scope, receive, send)  # CORS preflight: BentoML's CORS middleware answers
        try:
            self.check(scope["method"], headers, self.body_limits.get(scope["path"], self.max_body_bytes))
        except ApiError as exc:
            return await exc.response()(scope, receive, send)
        return await self.app(scope, receive, send)

    def check(self, method: str, headers: Headers, max_body_bytes: int | None = None) -> None:
        if self.api_key is not None:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key):
                raise ApiError(
                    401,
                    "missing or wrong API key: send 'Authorization: Bearer <key>'",
                    {"WWW-Authenticate": "Bearer"},
                )
        if method != "POST":
            raise ApiError(405, f"method {method} not allowed: use POST", {"Allow": "POST"})
        check_content_type(headers.get("content-type"))
        check_content_length(headers.get("content-length"), max_body_bytes or self.max_body_bytes)
