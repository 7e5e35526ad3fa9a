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

from ._bearer import PROOF, AuthorizedRequest, TokenScope
from ._client import DeviceFlowClient

__all__ = ["BearerAuth"]


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

    - by default, only to one origin (scheme, host and port): that of the first request (for
      one in plain http, the https origin of its host). Requests to any other origin, redirects
      included (a CDN, a presigned URL, an open redirect), go without it, and without a DPoP
      proof. aiohttp drops the header on a
      redirect to another origin, but runs the middleware again for the next hop, which must
      not put it back;
    - with ``hosts``, to https requests for those host names (any port), and to no other:
      the way to widen it to an API spread over several hosts, or to bind it before the first
      request;
    - never over plain http (an https -> http redirect included), loopback addresses excepted
      for tests.

    Each hop of a redirect is a request of its own here: aiohttp runs the middleware for it and
    does not copy the headers the middleware added to the hop before, so a hop the token may go
    to gets a DPoP proof made for its own method and URL (RFC 9449 4.2). aiohttp tells the
    middleware nothing of the hops before, so a redirect from another origin back to the bound
    one gets the token too: send requests to other origins through a session without this
    middleware, or with ``allow_redirects=False``.
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
            request.headers.pop(PROOF, None)  # a proof made for another hop goes no further
            return await handler(request)
        attempt, headers = await AuthorizedRequest.start(
            self._client, self._account, request.method, str(url)
        )
        request.headers.update(headers)
        while True:
            response = await handler(request)
            again = await attempt.answered(
                response.status,
                response.headers.getall("WWW-Authenticate", []),
                response.headers.get("DPoP-Nonce"),
            )
            if again is None:
                return response
            response.release()
            request.headers.update(again)
