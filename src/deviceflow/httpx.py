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

Redirects: httpx follows them (``follow_redirects=True``) without calling the auth again, so
every hop gets the first request's headers, a DPoP proof made for the first URL included (httpx
drops only ``Authorization``, and only across origins). ``DeviceFlowAuth(follow_redirects=True)``
follows them in the auth flow instead, each hop through the rules on where the token goes; leave
httpx's own ``follow_redirects`` off then.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Generator
from typing import TYPE_CHECKING, TypeVar

import anyio.to_thread

try:
    import httpx
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError(
        "deviceflow.httpx needs httpx: pip install 'httpx>=0.27' "
        "(or, in a checkout of deviceflow, pip install '.[httpx]')"
    ) from exc

from ._bearer import PROOF, AuthorizedRequest, TokenScope
from ._client import DeviceFlowClient as AsyncDeviceFlowClient

if TYPE_CHECKING:
    from .sync import DeviceFlowClient as SyncDeviceFlowClient

__all__ = ["DeviceFlowAuth"]

log = logging.getLogger("deviceflow")

_T = TypeVar("_T")
_Started = tuple[AuthorizedRequest, dict[str, str]]


class _Chain:
    """The hops of one request, redirects followed by the auth included: once a hop has gone
    without the token, the hops after it go without it too. A redirect from an origin the token
    does not go to is that origin's choice, and may point at the API (a forged request)."""

    __slots__ = ("_left",)

    def __init__(self) -> None:
        self._left = False

    def carries_token(self, auth: DeviceFlowAuth, hop: httpx.Request) -> bool:
        if not self._left and auth._carries_token(hop):
            return True
        hop.headers.pop(PROOF, None)
        self._left = True
        return False


class DeviceFlowAuth(httpx.Auth):
    """An ``httpx.Auth`` that adds ``account``'s token to requests.

    Give it a :class:`deviceflow.DeviceFlowClient` for ``httpx.AsyncClient``, or a
    :class:`deviceflow.sync.DeviceFlowClient` for ``httpx.Client`` (the sync client works with
    ``httpx.AsyncClient`` too: its calls then run in a worker thread).

    The headers are those of ``client.request_headers(method, url, account)``: the token of
    ``get_token(account)`` (cached, refreshed ahead of expiry, or from a device flow when the
    client has an ``on_code``), and for a DPoP token (``DeviceFlowClient(dpop=True)``)
    ``Authorization: DPoP <token>`` with a new proof for every send. When the server answers
    401 with ``WWW-Authenticate: Bearer error="invalid_token"`` (RFC 6750 3.1; or ``DPoP
    error="invalid_token"``), the token is refreshed once (shared with every other request that
    saw the same rejection) and the request is sent once more; when it answers 401 with ``DPoP
    error="use_dpop_nonce"`` (RFC 9449 9), it is sent once more with a proof carrying the nonce
    the server gave. A ``DPoP-Nonce`` on any other answer is kept for the next request. The
    request's body is read into memory beforehand, so that it can be sent again.

    Where the token goes, as with :class:`deviceflow.aiohttp.BearerAuth`:

    - by default, only to one origin (scheme, host and port): that of the first request (for
      one in plain http, the https origin of its host); requests to any other origin go
      without it (and without a ``DPoP`` header);
    - with ``hosts``, to https requests for those host names (any port), and no other;
    - never over plain http, loopback addresses excepted (tests).

    Redirects: with ``follow_redirects=True`` (and httpx's own ``follow_redirects`` left off,
    its default), the auth follows them: every hop goes through these rules again, so a hop to
    another origin gets neither the token nor a proof, and a hop the token may go to gets a
    proof of its own, for its method and URL (RFC 9449 4.2), with a nonce retry and a refresh
    of its own. httpx counts the hops against its ``max_redirects``. A redirect you follow
    yourself (``send(response.next_request)``) goes through the rules in the same way. A
    redirect httpx follows by itself does not: httpx calls no auth for it and copies the first
    request's headers (it drops ``Authorization`` across origins, but not the ``DPoP`` proof,
    which then goes to the redirect target, made for the first URL); for a DPoP token a
    warning says so, once.
    """

    def __init__(
        self,
        client: AsyncDeviceFlowClient | SyncDeviceFlowClient,
        account: str = "default",
        *,
        hosts: Collection[str] | None = None,
        follow_redirects: bool = False,
    ) -> None:
        if not isinstance(follow_redirects, bool):
            raise TypeError("follow_redirects must be True or False")
        self._client = client
        self._account = account
        self._scope = TokenScope(hosts)
        self._follow = follow_redirects
        self._warned = False  # of a redirect httpx followed with a DPoP proof

    def __repr__(self) -> str:
        return (
            f"DeviceFlowAuth(account={self._account!r}, hosts={self._scope.hosts!r}, "
            f"follow_redirects={self._follow!r})"
        )

    def _carries_token(self, request: httpx.Request) -> bool:
        """True when ``request`` gets the token; one that does not loses any DPoP header."""
        url = request.url
        if self._scope.carries_token(url.scheme, url.host, url.port):
            return True
        request.headers.pop(PROOF, None)  # a proof made for another hop goes no further
        return False

    def _start(self, request: httpx.Request) -> Callable[[], Awaitable[_Started]]:
        client = self._client
        if not isinstance(client, AsyncDeviceFlowClient):
            client = client._client  # the asyncio client it runs on its loop
        return functools.partial(
            AuthorizedRequest.start, client, self._account, request.method, str(request.url)
        )

    @staticmethod
    def _answered(
        attempt: AuthorizedRequest, response: httpx.Response, sent: dict[str, str]
    ) -> Callable[[], Awaitable[dict[str, str] | None]] | None:
        # Only the answer of the request that carried the token counts, not that of a redirect
        # target which got none.
        if response.request.headers.get("Authorization") != sent["Authorization"]:
            return None
        headers = response.headers
        return functools.partial(
            attempt.answered,
            response.status_code,
            headers.get_list("WWW-Authenticate"),
            headers.get("DPoP-Nonce"),
        )

    def _next_hop(
        self, request: httpx.Request, response: httpx.Response, sent: dict[str, str]
    ) -> httpx.Request | None:
        """The redirect to send after ``response`` to ``request`` (sent with the headers
        ``sent``), or None: ``response`` is the answer."""
        if response.request is not request:
            # httpx followed redirects itself, with this request's headers, proof included.
            if PROOF in sent:
                self._warn_followed()
            return None
        hop = response.next_request  # set by httpx when it does not follow
        if not self._follow or hop is None:
            return None
        # httpx copied the headers of this hop (Authorization too, within the origin and on an
        # http -> https upgrade of it): the next hop gets headers of its own, or none.
        hop.headers.pop(PROOF, None)
        if "Authorization" in sent and hop.headers.get("Authorization") == sent["Authorization"]:
            del hop.headers["Authorization"]
        return hop

    def _warn_followed(self) -> None:
        if self._warned:
            return
        self._warned = True
        log.warning(
            "DeviceFlowAuth(account=%r): httpx followed a redirect by itself, so the redirect "
            "target got the DPoP proof made for the first URL; pass follow_redirects=True to "
            "DeviceFlowAuth instead (and leave it off in httpx): each hop then gets a proof of "
            "its own, or none where the token does not go",
            self._account,
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
        hop: httpx.Request | None = request
        chain = _Chain()
        while hop is not None:
            attempt: AuthorizedRequest | None = None
            sent: dict[str, str] = {}
            if chain.carries_token(self, hop):
                hop.read()  # in memory: a request sent again sends its body again
                attempt, sent = client._call(self._start(hop))
                hop.headers.update(sent)
            response = yield hop
            while attempt is not None:
                answered = self._answered(attempt, response, sent)
                again = None if answered is None else client._call(answered)
                if again is None:
                    break
                sent = again
                hop.headers.update(sent)
                response = yield hop
            hop = self._next_hop(hop, response, sent)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """The flow ``httpx.AsyncClient`` runs."""
        hop: httpx.Request | None = request
        chain = _Chain()
        while hop is not None:
            attempt: AuthorizedRequest | None = None
            sent: dict[str, str] = {}
            if chain.carries_token(self, hop):
                await hop.aread()  # in memory: a request sent again sends its body again
                attempt, sent = await self._run(self._start(hop))
                hop.headers.update(sent)
            response = yield hop
            while attempt is not None:
                answered = self._answered(attempt, response, sent)
                again = None if answered is None else await self._run(answered)
                if again is None:
                    break
                sent = again
                hop.headers.update(sent)
                response = yield hop
            hop = self._next_hop(hop, response, sent)

    async def _run(self, step: Callable[[], Awaitable[_T]]) -> _T:
        """``step`` on the asyncio client's loop: this one, or that of the sync client (from
        a worker thread, so that this loop goes on meanwhile)."""
        client = self._client
        if isinstance(client, AsyncDeviceFlowClient):
            return await step()
        return await anyio.to_thread.run_sync(client._call, step)
