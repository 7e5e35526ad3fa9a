"""Use deviceflow tokens with httpx (the ``httpx`` extra): ``DeviceFlowAuth``, an ``httpx.Auth``.

::

    from deviceflow.httpx import DeviceFlowAuth

    # asyncio: the async client
    async with httpx.AsyncClient(auth=DeviceFlowAuth(client, "tenant-42")) as http:
        response = await http.get("https://api.example.com/me")

    # blocking code: the client of deviceflow.sync
    with deviceflow.sync.DeviceFlowClient(provider, client_id="cli") as client:
        with httpx.Client(auth=DeviceFlowAuth(client)) as http:
            response = http.get("https://api.example.com/me")
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection, Generator
from typing import TYPE_CHECKING

import anyio.to_thread

try:
    import httpx
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError(
        "deviceflow.httpx needs httpx: pip install 'httpx>=0.27' "
        "(or, in a checkout of deviceflow, pip install '.[httpx]')"
    ) from exc

from ._bearer import TokenScope, says_invalid_token
from ._client import DeviceFlowClient as AsyncDeviceFlowClient
from ._models import Token

if TYPE_CHECKING:
    from .sync import DeviceFlowClient as SyncDeviceFlowClient

__all__ = ["DeviceFlowAuth"]


def _headers(token: Token, request: httpx.Request) -> dict[str, str]:
    # The one place a request's auth headers are made (both flows call it once per send).
    # Sender-constrained tokens (DPoP) turn it into the client's
    # request_headers(request.method, str(request.url), account=...), which adds the proof.
    return {"Authorization": token.authorization}


class DeviceFlowAuth(httpx.Auth):
    """An ``httpx.Auth`` that adds ``account``'s token to requests.

    Give it a :class:`deviceflow.DeviceFlowClient` for ``httpx.AsyncClient``, or a
    :class:`deviceflow.sync.DeviceFlowClient` for ``httpx.Client`` (the sync client works with
    ``httpx.AsyncClient`` too: each token is then fetched in a worker thread).

    The token comes from ``get_token(account)``: cached, refreshed ahead of expiry, or from a
    device flow when the client has an ``on_code``. When the server answers 401 with
    ``WWW-Authenticate: Bearer error="invalid_token"`` (RFC 6750 3.1), the token is refreshed
    once (shared with every other request that saw the same rejection) and the request is sent
    once more; its body is read into memory beforehand so that it can be.

    Where the token goes, as with :class:`deviceflow.aiohttp.BearerAuth`:

    - by default, only to one origin (scheme, host and port): that of the first request it is
      added to; requests to any other origin go without it. httpx removes the header when it
      follows a redirect to another origin, and a redirect you follow yourself
      (``follow_redirects=False``, then ``send(response.next_request)``) goes through these
      rules again;
    - with ``hosts``, to https requests for those host names (any port), and no other;
    - never over plain http, loopback addresses excepted (tests).
    """

    def __init__(
        self,
        client: AsyncDeviceFlowClient | SyncDeviceFlowClient,
        account: str = "default",
        *,
        hosts: Collection[str] | None = None,
    ) -> None:
        self._client = client
        self._account = account
        self._scope = TokenScope(hosts)

    def __repr__(self) -> str:
        return f"DeviceFlowAuth(account={self._account!r}, hosts={self._scope.hosts!r})"

    def _carries_token(self, request: httpx.Request) -> bool:
        url = request.url
        return self._scope.carries_token(url.scheme, url.host, url.port)

    @staticmethod
    def _rejected(response: httpx.Response, sent: dict[str, str]) -> bool:
        # The answer of the request that carried the token (not of a redirect target that got
        # none), saying that this token no longer works.
        carried = response.request.headers.get("Authorization") == sent["Authorization"]
        return carried and says_invalid_token(
            response.status_code, response.headers.get_list("WWW-Authenticate")
        )

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """The flow ``httpx.Client`` runs: needs the client of :mod:`deviceflow.sync`."""
        client = self._client
        if isinstance(client, AsyncDeviceFlowClient):
            raise TypeError(
                "httpx.Client is blocking: give DeviceFlowAuth a deviceflow.sync.DeviceFlowClient "
                "(or use httpx.AsyncClient with this asyncio client)"
            )
        if not self._carries_token(request):
            yield request
            return
        request.read()  # in memory: a request retried after a refresh sends its body again
        token = client.get_token(self._account)
        sent = _headers(token, request)
        request.headers.update(sent)
        response = yield request
        if self._rejected(response, sent):
            fresh = client.refresh(self._account, stale=token)
            request.headers.update(_headers(fresh, request))
            yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """The flow ``httpx.AsyncClient`` runs."""
        if not self._carries_token(request):
            yield request
            return
        await request.aread()  # in memory: a retried request sends its body again
        token = await self._get_token()
        sent = _headers(token, request)
        request.headers.update(sent)
        response = yield request
        if self._rejected(response, sent):
            fresh = await self._refresh(token)
            request.headers.update(_headers(fresh, request))
            yield request

    async def _get_token(self) -> Token:
        client = self._client
        if isinstance(client, AsyncDeviceFlowClient):
            return await client.get_token(self._account)
        return await anyio.to_thread.run_sync(client.get_token, self._account)

    async def _refresh(self, stale: Token) -> Token:
        client = self._client
        if isinstance(client, AsyncDeviceFlowClient):
            return await client.refresh(self._account, stale=stale)
        return await anyio.to_thread.run_sync(lambda: client.refresh(self._account, stale=stale))
