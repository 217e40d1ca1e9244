"""The log check the service tests rely on fails on an empty, stale or unrelated log, and on a traceback."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from .logcheck import PROBE, assert_clean_log_since, log_offset


@dataclass
class FakeResponse:
    status_code: int


@dataclass
class FakeServer:
    """Stands in for a running server: ``lines`` is its log, a GET appends its access line."""

    lines: list[str] = field(default_factory=list)
    logs_requests: bool = True

    def log(self) -> str:
        return "".join(self.lines)

    def get(self, path: str, **_) -> FakeResponse:
        if self.logs_requests:
            self.lines.append(f"[INFO] 127.0.0.1:1 (scheme=http,method=GET,path={path}) (status=404)\n")
        return FakeResponse(404)


def test_passes_on_the_access_lines_of_the_requests_and_no_traceback() -> None:
    server = FakeServer(["[INFO] started\n"])
    start = log_offset(server)
    server.lines.append("[INFO] (scheme=http,method=POST,path=/detect) (status=200)\n")
    new = assert_clean_log_since(server, start, ["/detect", "/livez"])  # /livez is never logged
    assert "path=/detect" in new and f"path={PROBE}" in new and "started" not in new


def test_fails_on_a_log_that_records_nothing() -> None:
    server = FakeServer(logs_requests=False)
    with pytest.raises(AssertionError, match="no access line"):
        assert_clean_log_since(server, log_offset(server), ["/detect"], timeout=0.2)


def test_fails_when_the_route_was_not_requested_since_the_start() -> None:
    server = FakeServer(["[INFO] (scheme=http,method=POST,path=/detect) (status=200)\n"])
    with pytest.raises(AssertionError, match="path=/detect"):
        assert_clean_log_since(server, log_offset(server), ["/detect"], timeout=0.2)


def test_fails_on_a_traceback_written_since_the_start() -> None:
    server = FakeServer()
    start = log_offset(server)
    server.lines += ["Traceback (most recent call last):\n", "  ValueError: boom\n"]
    with pytest.raises(AssertionError, match="Traceback"):
        assert_clean_log_since(server, start, [])
