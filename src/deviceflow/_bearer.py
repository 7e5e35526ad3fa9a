"""The rules every HTTP-client integration follows when it adds a token to a request.

- Where the token goes (:class:`TokenScope`): by default to one origin only (scheme, host and
  port), that of the first request made (for a first request in cleartext, the https origin of
  its host: a redirect answering it cannot pick the origin); with ``hosts``, to https requests
  for those host names; never over plain http, loopback addresses excepted (tests). A request
  that does not get the token loses any ``DPoP`` header too (:data:`PROOF`): a proof made for
  another hop goes no further.
- What one request that carries the token goes through (:class:`AuthorizedRequest`): its
  headers from the client (``Authorization``, and a new DPoP proof for every send), then at
  most one retry: with the server's nonce when it answers 401 ``DPoP error="use_dpop_nonce"``
  (RFC 9449 9), or with a refreshed token when it answers 401 ``error="invalid_token"``
  (:func:`says_invalid_token`; RFC 6750 3.1, RFC 9449 7.1). Any other 401 (a missing
  permission, a wrong audience) is passed on: a new token would not help. A DPoP token's
  ``DPoP-Nonce`` on an answer is kept for that server's next request.

``deviceflow.aiohttp`` and ``deviceflow.httpx`` hold only their library's plumbing: they send,
and hand each answer to :meth:`AuthorizedRequest.answered`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING

from ._dpop import asks_for_nonce
from ._urls import is_loopback_host

if TYPE_CHECKING:
    from ._client import DeviceFlowClient
    from ._models import Token

__all__ = ["PROOF", "AuthorizedRequest", "TokenScope", "says_invalid_token"]

#: The request header of a DPoP proof (RFC 9449 4.1).
PROOF = "DPoP"

# RFC 6750 3: WWW-Authenticate: Bearer realm="...", error="invalid_token", ...
# RFC 9449 7.1: a DPoP-bound token is challenged with the DPoP scheme, same error codes.
_SCHEME = re.compile(r"^\s*(bearer|dpop)\b", re.IGNORECASE)
_INVALID_TOKEN = re.compile(r"""\berror\s*=\s*"?invalid_token"?""", re.IGNORECASE)


def says_invalid_token(status: int, challenges: Iterable[str]) -> bool:
    """True when a response means "this token no longer works": a refresh may help."""
    return status == 401 and any(_SCHEME.match(c) and _INVALID_TOKEN.search(c) for c in challenges)


_DEFAULT_PORTS = {"https": 443, "http": 80}


class TokenScope:
    """Decides which requests carry the token (see the module docstring)."""

    def __init__(self, hosts: Collection[str] | None = None) -> None:
        if isinstance(hosts, str):
            raise TypeError("hosts must be a collection of host names, not one string")
        self.hosts = frozenset(h.lower() for h in hosts) if hosts is not None else None
        self._origin: tuple[str, str, int | None] | None = None  # bound on first use
        self._binding = threading.Lock()

    def carries_token(self, scheme: str, host: str | None, port: int | None) -> bool:
        """True when a request to this origin may carry the token (binds the first origin)."""
        host = (host or "").lower()
        scheme = scheme.lower()
        port = port or _DEFAULT_PORTS.get(scheme)  # httpx says None for a default port
        cleartext = scheme != "https" and not is_loopback_host(host)
        if self.hosts is not None:
            return not cleartext and host in self.hosts
        origin = (scheme, host, port)
        # httpx.Client runs the auth flow in its callers' threads: a compare-and-set, so that
        # two first requests to different origins cannot both bind.
        with self._binding:
            if self._origin is None:
                # The first request binds the token to its origin, in cleartext too: to the
                # https origin of the host it names, so that an answer to it (a redirect
                # anywhere, forged on the way) cannot choose where the token goes.
                self._origin = ("https", host, 443 if port == 80 else port) if cleartext else origin
            bound = self._origin
        return not cleartext and origin == bound


class AuthorizedRequest:
    """One request that carries ``account``'s token, from its first send to its last.

    The integration sends the request with the headers :meth:`start` gives, hands every answer
    to :meth:`answered`, and sends the request again with the headers it returns, until it
    returns None. Both are coroutines of the asyncio client's loop (the blocking client runs
    them on its own).
    """

    def __init__(
        self, client: DeviceFlowClient, token: Token, account: str, method: str, url: str
    ) -> None:
        self._client = client
        self._token = token
        self._account = account
        self._method = method
        self._url = url
        self._retried = False

    @classmethod
    async def start(
        cls, client: DeviceFlowClient, account: str, method: str, url: str
    ) -> tuple[AuthorizedRequest, dict[str, str]]:
        """The request, and the headers of its first send: the token of
        ``get_token(account)``, and for a DPoP token a proof for this request."""
        token, headers = await client._authorize_request(method, url, account)
        return cls(client, token, account, method, url), headers

    async def answered(
        self, status: int, challenges: Sequence[str], nonce: str | None
    ) -> dict[str, str] | None:
        """The headers to send the request once more with, given the answer to the last send
        (its status, ``WWW-Authenticate`` challenges and ``DPoP-Nonce``), or None: the answer
        stands."""
        client, token = self._client, self._token
        nonce = nonce if token.dpop_key is not None else None  # a bearer token has no use for it
        if not self._retried:
            if nonce is not None and asks_for_nonce(status, challenges):
                self._retried = True  # RFC 9449 9: a proof carrying the server's nonce
            elif says_invalid_token(status, challenges):
                self._retried = True  # RFC 6750 3.1: one refresh, shared with every caller
                self._token = token = await client.refresh(self._account, stale=token)
            if self._retried:
                return client._resource_headers(
                    token, self._method, self._url, self._account, nonce
                )
        client._remember_dpop_nonce(self._url, nonce)  # RFC 9449 8.2: for the next request
        return None
