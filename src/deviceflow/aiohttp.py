"""Use deviceflow tokens with your own aiohttp sessions (aiohttp >= 3.12 client middlewares).

::

    from deviceflow.aiohttp import BearerAuth

    async with aiohttp.ClientSession(
        middlewares=(BearerAuth(client, "tenant-42", hosts={"api.example.com"}),)
    ) as session:
        async with session.get("https://api.example.com/me") as response:
            ...
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import TYPE_CHECKING

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse

from ._client import DeviceFlowClient
from ._dpop import asks_for_nonce
from ._urls import is_loopback_host

if TYPE_CHECKING:
    from yarl import URL  # aiohttp's URL type

__all__ = ["BearerAuth"]

# RFC 6750 3: WWW-Authenticate: Bearer realm="...", error="invalid_token", ...
# (RFC 9449 7.1: the same with the DPoP scheme for a DPoP token.)
_BEARER = re.compile(r"^\s*(?:bearer|dpop)\b", re.IGNORECASE)
_INVALID_TOKEN = re.compile(r"""\berror\s*=\s*"?invalid_token"?""", re.IGNORECASE)


def _says_invalid_token(challenges: list[str]) -> bool:
    return any(_BEARER.match(c) and _INVALID_TOKEN.search(c) for c in challenges)


class BearerAuth:
    """An aiohttp client middleware that sends ``Authorization: Bearer <token>``.

    The headers come from ``client.request_headers(method, url, account)``: the token of
    ``client.get_token(account)`` (cached, refreshed ahead of expiry), and for a DPoP token
    (``DeviceFlowClient(dpop=True)``) ``Authorization: DPoP <token>`` with a proof made for
    each request. When the server answers 401 with ``WWW-Authenticate: Bearer
    error="invalid_token"`` (RFC 6750 3.1; or ``DPoP error="invalid_token"``), the token is
    refreshed once (shared with every other request that saw the same rejection) and the
    request is retried once; when it answers 401 with ``DPoP error="use_dpop_nonce"``
    (RFC 9449 9), it is retried once with a proof carrying the nonce the server gave. A
    ``DPoP-Nonce`` on any other answer is kept for the next request.

    Where the token goes:

    - by default, only to one origin (scheme, host and port): that of the first request it is
      added to. Requests to any other origin, redirects included (a CDN, a presigned URL, an
      open redirect), go without it. aiohttp drops the header on a redirect to another origin,
      but runs the middleware again for the next hop, which must not put it back;
    - with ``hosts``, to https requests for those host names (any port), and to no other:
      the way to widen it to an API spread over several hosts, or to bind it before the first
      request;
    - never over plain http (an https -> http redirect included), loopback addresses excepted
      for tests.
    """

    def __init__(
        self,
        client: DeviceFlowClient,
        account: str = "default",
        *,
        hosts: Collection[str] | None = None,
    ) -> None:
        self._client = client
        self._account = account
        self._hosts = frozenset(h.lower() for h in hosts) if hosts is not None else None
        self._origin: tuple[str, str, int | None] | None = None  # bound on first use

    def __repr__(self) -> str:
        return f"BearerAuth(account={self._account!r}, hosts={self._hosts!r})"

    def _carries_token(self, url: URL) -> bool:
        host = (url.host or "").lower()
        if url.scheme != "https" and not is_loopback_host(host):
            return False  # never in cleartext
        if self._hosts is not None:
            return host in self._hosts
        origin = (url.scheme, host, url.port)
        if self._origin is None:
            self._origin = origin  # the first request binds the token to its origin
        return origin == self._origin

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        if not self._carries_token(request.url):
            request.headers.pop("DPoP", None)  # a proof made for another hop goes no further
            return await handler(request)
        client, account = self._client, self._account
        method, url = request.method, str(request.url)
        token, headers = await client._authorize_request(method, url, account)
        request.headers.update(headers)
        response = await handler(request)
        nonce = response.headers.get("DPoP-Nonce") if token.dpop_key is not None else None
        if response.status != 401:
            if nonce is not None:
                client._remember_dpop_nonce(url, nonce)  # RFC 9449 9: for the next request
            return response
        challenges = response.headers.getall("WWW-Authenticate", [])
        if nonce is not None and asks_for_nonce(response.status, challenges):
            headers = client._resource_headers(token, method, url, account, nonce)
        elif _says_invalid_token(challenges):
            fresh = await client.refresh(account, stale=token)
            headers = client._resource_headers(fresh, method, url, account)
        else:
            return response
        response.release()
        request.headers.update(headers)
        return await handler(request)
