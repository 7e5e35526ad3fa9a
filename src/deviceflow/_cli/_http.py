"""The CLI's view of the HTTP exchange: ``--debug`` lines, and progress while retrying.

The CLI hands the client a transport that wraps the real one. For each request it logs, at
DEBUG on the ``deviceflow.http`` logger, one line: the method, the URL without its query (a
query may carry a code), the status and the time in milliseconds, plus the OAuth error fields
(``error``, ``error_description``, ``error_uri``) of an error answer. It never logs a body, a
header or a request parameter, so no token, code or secret can reach the log.

When a request fails in a way the client retries (no answer in time, a dropped connection,
HTTP 5xx, 429 or 408), it tells the person at once, so a slow server is not a silent wait.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
from collections.abc import Callable

from deviceflow._models import Request, Response
from deviceflow._transport import Transport
from deviceflow.exceptions import TransportError

__all__ = ["WatchedTransport", "safe_url"]

log = logging.getLogger("deviceflow.http")

_RETRIED_STATUSES = frozenset({408, 429})
_ERROR_FIELDS = ("error", "error_description", "error_uri")


def safe_url(url: str) -> str:
    """``url`` without credentials, query or fragment."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def error_fields(response: Response) -> dict[str, str]:
    """The OAuth error fields of ``response``'s body (JSON or form-encoded), nothing else."""
    body = response.body
    fields: dict[str, object] = {}
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        try:
            form = urllib.parse.parse_qs(body.decode("utf-8"), max_num_fields=50)
        except (UnicodeDecodeError, ValueError):
            return {}
        fields = {k: v[0] for k, v in form.items() if v}
    else:
        if isinstance(document, dict):
            fields = document
    return {
        name: " ".join(value.split())[:300]
        for name in _ERROR_FIELDS
        if isinstance(value := fields.get(name), str)
    }


class WatchedTransport:
    """A :class:`~deviceflow.Transport` that reports on every request of the one it wraps."""

    def __init__(self, inner: Transport, *, on_retry: Callable[[str], None]) -> None:
        self._inner = inner
        self._on_retry = on_retry

    async def send(self, request: Request, *, timeout: float | None = None) -> Response:
        url = safe_url(request.url)
        start = time.perf_counter()
        try:
            response = await self._inner.send(request, timeout=timeout)
        except TransportError as exc:
            elapsed = (time.perf_counter() - start) * 1000
            log.debug("%s %s failed after %.0f ms: %s", request.method, url, elapsed, exc)
            if exc.retryable and not exc.unreachable:
                self._on_retry(f"{exc}; trying again")
            raise
        elapsed = (time.perf_counter() - start) * 1000
        fields = error_fields(response)
        details = "".join(f" {name}={value!r}" for name, value in fields.items())
        log.debug("%s %s %d %.0f ms%s", request.method, url, response.status, elapsed, details)
        if response.status >= 500 or response.status in _RETRIED_STATUSES:
            self._on_retry(f"{url} answered HTTP {response.status}; trying again")
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
