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

from collections.abc import Collection

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse

from ._bearer import TokenScope, says_invalid_token
from ._client import DeviceFlowClient

__all__ = ["BearerAuth"]


class BearerAuth:
    """An aiohttp client middleware that sends ``Authorization: Bearer <token>``.

    The token comes from ``client.get_token(account)`` (cached, refreshed ahead of expiry). When
    the server answers 401 with ``WWW-Authenticate: Bearer error="invalid_token"`` (RFC 6750 3.1),
    the token is refreshed once (shared with every other request that saw the same rejection)
    and the request is retried once.

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
        self._scope = TokenScope(hosts)

    def __repr__(self) -> str:
        return f"BearerAuth(account={self._account!r}, hosts={self._scope.hosts!r})"

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        url = request.url
        if not self._scope.carries_token(url.scheme, url.host, url.port):
            return await handler(request)
        token = await self._client.get_token(self._account)
        request.headers["Authorization"] = token.authorization
        response = await handler(request)
        if not says_invalid_token(response.status, response.headers.getall("WWW-Authenticate", [])):
            return response
        response.release()
        fresh = await self._client.refresh(self._account, stale=token)
        request.headers["Authorization"] = fresh.authorization
        return await handler(request)
