"""Server-log checks that cannot pass on an empty or unrelated log.

A bare ``"Traceback" not in server.log()`` passes when the test runs alone (nothing was sent yet) or
when the log is not the server's (nothing written there). These helpers read only what the server
wrote after a given offset, and first require that part to hold the access-log lines of the
requests the test sent; only then does "no traceback" mean something.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from .svc_support import Server


def log_offset(server: Server) -> int:
    """Where the server's log ends now: pass it to ``assert_clean_log_since`` after the requests."""
    return len(server.log())


# BentoML writes no access line for these (api_server.logging.access.skip_paths)
UNLOGGED = ("/metrics", "/healthz", "/livez", "/readyz")
PROBE = "/logcheck-probe"  # an unknown route: answered 404 (401 with an API key), and logged


def assert_clean_log_since(
    server: Server, start: int, paths: Iterable[str] = (), timeout: float = 10.0
) -> str:
    """The log written since ``start`` records a request to each of ``paths`` (BentoML's access log:
    ``path=/detect``; paths it never logs are left out) and to a probe sent now, after the test's own
    requests, so the log read is the live log of this server; and it holds no traceback. Returns that
    part of the log."""
    assert server.get(PROBE).status_code in (401, 404)
    wanted = {f"path={path}" for path in (*paths, PROBE) if not path.startswith(UNLOGGED)}
    deadline = time.monotonic() + timeout
    while True:
        new = server.log()[start:]
        missing = sorted(w for w in wanted if w not in new)
        if not missing:
            break
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the server log has no access line for {missing} since the test began: it is not the "
                f"log of the server the requests went to, so 'no traceback' would prove nothing.\n"
                f"{new[-2000:]}"
            )
        time.sleep(0.1)
    assert "Traceback" not in new, new[-4000:]
    return new
