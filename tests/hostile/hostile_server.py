"""A hostile authorization server for tests: every answer is whatever the test wants it to be.

Unlike ``deviceflow.testing.AuthorizationServer`` (a compliant server with faults), this one has
no rules at all. It listens on loopback on a free port, optionally over TLS with a self-signed
certificate, and answers each path with a handler the test chose. By default it behaves just
well enough for a flow to reach the endpoint under test: discovery names itself as issuer, the
device endpoint issues a code, the token endpoint answers ``authorization_pending``.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any

from aiohttp import web

from helpers import self_signed_context

__all__ = [
    "Handler",
    "HostileServer",
    "answer",
    "drip",
    "hang",
    "oversized",
    "redirect",
    "self_signed_context",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DISCOVERY = "/.well-known/openid-configuration"
RFC8414 = "/.well-known/oauth-authorization-server"


def answer(
    body: object,
    *,
    status: int = 200,
    content_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
) -> Handler:
    """Answer ``body``: bytes and str as they are, anything else as JSON."""
    if isinstance(body, bytes):
        raw = body
    elif isinstance(body, str):
        raw = body.encode()
    else:
        raw = json.dumps(body).encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(
            body=raw, status=status, content_type=content_type, headers=dict(headers or {})
        )

    return handler


def oversized(size: int, *, declare_length: bool = True) -> Handler:
    """A JSON-looking body of ``size`` bytes, with or without a Content-Length header."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if declare_length:
            response.content_length = size
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b"{" + b" " * (64 * 1024 - 1)
        sent = 0
        try:
            while sent < size:
                part = chunk[: size - sent]
                await response.write(part)
                sent += len(part)
        except (ConnectionResetError, ConnectionError):
            pass
        return response

    return handler


def drip(*, every: float = 0.05, first: bytes = b'{"access_token": "') -> Handler:
    """A body that never ends: one byte every ``every`` seconds (a slowloris in reverse)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            await response.write(first)
            while True:
                await asyncio.sleep(every)
                await response.write(b"a")
        except (ConnectionResetError, ConnectionError):
            pass
        return response

    return handler


def hang() -> Handler:
    """Never answer (the handler is cancelled when the client goes away or the server stops)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")  # pragma: no cover

    return handler


def redirect(location: str, *, status: int = 302) -> Handler:
    """A redirect to ``location`` (which the client must not follow)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=status, headers={"Location": location})

    return handler


class HostileServer:
    """A loopback aiohttp.web server whose answers are set per path with :meth:`on`.

    ``requests`` lists ``(method, path)`` of everything received, so a test can check that a
    client never went somewhere (a redirect target, a poll after a terminal answer).
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl = ssl_context
        self._handlers: dict[str, Handler] = {}
        self._runner: web.AppRunner | None = None
        self._port = 0
        self.requests: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://127.0.0.1:{self._port}"

    def metadata(self, **overrides: Any) -> dict[str, Any]:
        """A discovery document naming this server; ``None`` values remove entries."""
        document: dict[str, Any] = {
            "issuer": self.url,
            "device_authorization_endpoint": self.url + "/device",
            "token_endpoint": self.url + "/token",
            "revocation_endpoint": self.url + "/revoke",
        }
        document.update(overrides)
        return {k: v for k, v in document.items() if v is not None}

    def code(self, **overrides: Any) -> dict[str, Any]:
        """A valid device authorization answer; ``None`` values remove entries."""
        document: dict[str, Any] = {
            "device_code": "hostile-device-code",
            "user_code": "WDJB-MJHT",
            "verification_uri": self.url + "/verify",
            "verification_uri_complete": self.url + "/verify?user_code=WDJB-MJHT",
            "expires_in": 600,
            "interval": 5,
        }
        document.update(overrides)
        return {k: v for k, v in document.items() if v is not None}

    def on(self, path: str, handler: Handler) -> None:
        """Answer requests to ``path`` with ``handler`` from now on."""
        self._handlers[path] = handler

    def count(self, path: str) -> int:
        """How many requests ``path`` received."""
        return sum(1 for _, p in self.requests if p == path)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        handler = self._handlers.get(request.path)
        if handler is None:
            return web.Response(status=404, text="not found")
        return await handler(request)

    async def __aenter__(self) -> HostileServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=0.1,
            handler_cancellation=True,
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self.on(DISCOVERY, answer(self.metadata()))
        self.on("/device", answer(self.code()))
        self.on("/token", answer({"error": "authorization_pending"}, status=400))
        self.on("/revoke", answer(b"", content_type="text/plain"))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
