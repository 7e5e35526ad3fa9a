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

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse

from ._client import DeviceFlowClient
from ._machine import is_loopback_host

__all__ = ["BearerAuth"]

# RFC 6750 3: WWW-Authenticate: Bearer realm="...", error="invalid_token", ...
_BEARER = re.compile(r"^\s*bearer\b", re.IGNORECASE)
_INVALID_TOKEN = re.compile(r"""\berror\s*=\s*"?invalid_token"?""", re.IGNORECASE)


def _says_invalid_token(challenges: list[str]) -> bool:
    return any(_BEARER.match(c) and _INVALID_TOKEN.search(c) for c in challenges)


class BearerAuth:
    """An aiohttp client middleware that sends ``Authorization: Bearer <token>``.

    The token comes from ``client.get_token(account)`` (cached, refreshed ahead of expiry). When
    the server answers 401 with ``WWW-Authenticate: Bearer error="invalid_token"`` (RFC 6750 3.1),
    the token is refreshed once (shared with every other request that saw the same rejection)
    and the request is retried once.

    ``hosts`` limits the header to those host names; without it every https request of the
    session carries the token, so give ``hosts`` when the session talks to more than your API.
    Plain http requests never carry it (loopback hosts excepted, for tests).
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

    def __repr__(self) -> str:
        return f"BearerAuth(account={self._account!r}, hosts={self._hosts!r})"

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        host = (request.url.host or "").lower()
        if (self._hosts is not None and host not in self._hosts) or (
            request.url.scheme != "https" and not is_loopback_host(host)
        ):
            # Never to other hosts, and never in cleartext (an https -> http redirect included).
            return await handler(request)
        token = await self._client.get_token(self._account)
        request.headers["Authorization"] = token.authorization
        response = await handler(request)
        if response.status != 401 or not _says_invalid_token(
            response.headers.getall("WWW-Authenticate", [])
        ):
            return response
        response.release()
        fresh = await self._client.refresh(self._account, stale=token)
        request.headers["Authorization"] = fresh.authorization
        return await handler(request)
