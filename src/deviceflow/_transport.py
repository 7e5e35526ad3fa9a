"""The aiohttp edge: encode, authenticate, send, read a bounded body, map errors.

Nothing above this module sees an aiohttp exception: every failure leaves here as a
:class:`~deviceflow.exceptions.TransportError` (or ProtocolError for an oversized body,
InsecureEndpointError for a URL that is not https).
"""

from __future__ import annotations

import asyncio
import base64
import errno
import logging
import socket
import ssl
import urllib.parse
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from ._models import AuthMethod, Dialect, Request, RequestKind, Response
from ._urls import require_secure_url
from ._version import __version__
from .exceptions import ProtocolError, TransportError

if TYPE_CHECKING:  # aiohttp is imported when the first request is made (CLI start-up time)
    import aiohttp

__all__ = ["AiohttpTransport", "ClientAuth", "Transport"]

log = logging.getLogger("deviceflow")

#: Answers larger than this are refused: no OAuth endpoint needs more.
MAX_BODY = 1024 * 1024
_CHUNK = 64 * 1024
_MAX_SECURE_URLS = 64
#: Requests for public documents: no client credentials go with them (a provider's JWKS may be
#: served by another host).
_PUBLIC_KINDS = frozenset({RequestKind.DISCOVERY, RequestKind.JWKS})
_UNREACHABLE = {errno.ENETUNREACH: "network unreachable", errno.EHOSTUNREACH: "host unreachable"}


class Transport(Protocol):
    """Sends protocol requests; the seam between the client and the network."""

    async def send(self, request: Request, *, timeout: float | None = None) -> Response:
        """Send ``request`` and return the response, or raise a DeviceFlowError.

        ``timeout`` (seconds) shortens the transport's own limit for this one exchange.
        """
        ...

    async def aclose(self) -> None:
        """Release connections (only those this transport owns)."""
        ...


@attrs.frozen(kw_only=True)
class ClientAuth:
    """How the client authenticates to the token and device endpoints (RFC 6749 2.3.1)."""

    client_id: str
    client_secret: str | None = attrs.field(default=None, repr=False)
    method: AuthMethod = "none"

    @classmethod
    def choose(
        cls, client_id: str, client_secret: str | None, method: AuthMethod | None
    ) -> ClientAuth:
        """``method=None`` picks client_secret_basic with a secret and none without one.

        RFC 6749 2.3.1: credentials in the request body are NOT RECOMMENDED where HTTP Basic
        can be used.
        """
        if method is None:
            method = "client_secret_basic" if client_secret is not None else "none"
        if method != "none" and client_secret is None:
            raise ValueError(f"client authentication {method!r} needs a client_secret")
        return cls(client_id=client_id, client_secret=client_secret, method=method)

    def apply(self, params: dict[str, str], headers: dict[str, str]) -> None:
        if self.method == "client_secret_post":
            assert self.client_secret is not None
            params["client_secret"] = self.client_secret
        elif self.method == "client_secret_basic":
            assert self.client_secret is not None
            # RFC 6749 2.3.1: form-urlencode id and secret before joining them with ":".
            pair = (
                f"{urllib.parse.quote_plus(self.client_id)}:"
                f"{urllib.parse.quote_plus(self.client_secret)}"
            )
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()


def _transport_error(request: Request, exc: BaseException) -> TransportError:
    """A TransportError in plain words for an aiohttp or OS error."""
    import aiohttp

    where = f"{request.kind.value} request to {_origin(request.url)}"
    cause = getattr(exc, "os_error", None) or exc
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or isinstance(cause, socket.gaierror):
        return TransportError(f"{where} failed: host not found", unreachable=True)
    if isinstance(cause, ConnectionRefusedError):
        return TransportError(f"{where} failed: connection refused", unreachable=True)
    if isinstance(cause, OSError) and cause.errno in _UNREACHABLE:
        return TransportError(f"{where} failed: {_UNREACHABLE[cause.errno]}", unreachable=True)
    if _is_tls_failure(exc):
        return TransportError(
            f"{where} failed: TLS error ({type(exc).__name__}); retrying will not help",
            retryable=False,
        )
    if isinstance(exc, aiohttp.InvalidURL):
        return TransportError(
            f"{where} failed: invalid URL; retrying will not help", retryable=False
        )
    if isinstance(exc, (aiohttp.ServerDisconnectedError, ConnectionResetError)):
        return TransportError(f"{where} failed: the server closed the connection")
    return TransportError(f"{where} failed: {type(exc).__name__}")


def _is_tls_failure(exc: BaseException) -> bool:
    import aiohttp

    return isinstance(
        exc,
        (
            aiohttp.ClientConnectorCertificateError,
            aiohttp.ClientSSLError,
            ssl.SSLError,
        ),
    )


class AiohttpTransport:
    """The real transport: one aiohttp ClientSession, the caller's or its own.

    - ``Accept: application/json`` on every request (GitHub answers form-encoded otherwise);
    - bodies form-encoded, or JSON for dialects that want it, with the dialect's parameter names;
    - client authentication added to device, token and revocation requests;
    - redirects never followed; responses larger than ``max_body`` refused;
    - ``connect_timeout`` for the connection, ``timeout`` for the whole exchange.
    """

    def __init__(
        self,
        *,
        auth: ClientAuth,
        dialect: Dialect | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 20.0,
        connect_timeout: float = 10.0,
        max_body: int = MAX_BODY,
        connection_limit: int = 100,
    ) -> None:
        self._auth = auth
        self._dialect = dialect or Dialect()
        self._session = session
        self._owns_session = session is None
        self._timeouts = (timeout, connect_timeout)
        self._client_timeout: aiohttp.ClientTimeout | None = None
        self._max_body = max_body
        self._limit = connection_limit
        # URLs that passed require_secure_url (a pure check): every poll and refresh goes to
        # the same few endpoints, and parsing the URL again each time costs more than the rest
        # of the request's own preparation.
        self._secure_urls: set[str] = set()

    @property
    def _timeout(self) -> aiohttp.ClientTimeout:
        if self._client_timeout is None:
            import aiohttp

            total, connect = self._timeouts
            # No sock_read: ``total`` already bounds the reading of the answer (aiohttp ends
            # its timer when the body has been read), and a read timer would be set again on
            # every chunk received.
            self._client_timeout = aiohttp.ClientTimeout(total=total, sock_connect=connect)
        return self._client_timeout

    def _get_session(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None or (self._owns_session and self._session.closed):
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit),
                headers={"User-Agent": f"deviceflow/{__version__}"},
            )
        return self._session

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()

    def _encode(self, request: Request) -> tuple[dict[str, str], dict[str, str]]:
        params = dict(request.params)
        headers = {"Accept": "application/json", **request.headers}
        if request.kind not in _PUBLIC_KINDS:
            self._auth.apply(params, headers)
        names = self._dialect.request_names
        if names:
            params = {names.get(k, k): v for k, v in params.items()}
        return params, headers

    async def send(self, request: Request, *, timeout: float | None = None) -> Response:
        if request.url not in self._secure_urls:
            require_secure_url(request.url, f"the {request.kind.value} endpoint")
            if len(self._secure_urls) < _MAX_SECURE_URLS:
                self._secure_urls.add(request.url)
        params, headers = self._encode(request)
        kwargs: dict[str, Any] = {}
        if request.method == "POST":
            if self._dialect.request_format == "json":
                kwargs["json"] = self._dialect.json_body(params)
            else:
                # The bytes aiohttp's FormData would send for this dict, without building a
                # FormData (and its multipart writer) for every request.
                headers["Content-Type"] = "application/x-www-form-urlencoded"
                kwargs["data"] = urllib.parse.urlencode(params).encode()
        session = self._get_session()
        import aiohttp

        try:
            async with session.request(
                request.method,
                request.url,
                headers=headers,
                allow_redirects=False,
                timeout=self._timeout if timeout is None else self._shorter(timeout),
                **kwargs,
            ) as resp:
                body = await self._read(resp)
                # aiohttp's own headers: looked up case-insensitively, the first of a repeated
                # name winning, as Response.header() asks; no copy made.
                return Response(status=resp.status, headers=resp.headers, body=body)
        except (ProtocolError, TransportError):
            raise
        except asyncio.TimeoutError:
            raise TransportError(
                f"{request.kind.value} request to {_origin(request.url)} timed out"
            ) from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise _transport_error(request, exc) from exc

    def _shorter(self, seconds: float) -> aiohttp.ClientTimeout:
        import aiohttp

        seconds = max(0.001, seconds)
        total = self._timeout.total
        if total is not None and total <= seconds:
            return self._timeout
        connect = self._timeout.sock_connect
        return aiohttp.ClientTimeout(
            total=seconds,
            sock_connect=min(connect, seconds) if connect is not None else seconds,
        )

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        length = resp.content_length
        if length is not None and length > self._max_body:
            raise ProtocolError(f"the response body ({length} bytes) exceeds {self._max_body}")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await resp.content.read(_CHUNK)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self._max_body:
                raise ProtocolError(f"the response body exceeds {self._max_body} bytes")
            chunks.append(chunk)


def _origin(url: str) -> str:
    """The URL without credentials, query or fragment: safe for messages."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
