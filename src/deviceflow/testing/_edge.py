"""The test server's HTTP edge: requests in, answers out; no protocol rules.

Every request passes through :meth:`HttpEdge.wrap`: it is logged as a :class:`RecordedRequest`,
an injected fault may answer in its place, the body is decoded under the profile's parameter
names, and an ``OAuthFailure`` raised by a handler becomes the profile's error answer.
Handlers build their answers with :meth:`HttpEdge.answer`, :func:`html` and
:func:`bearer_challenge`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode

import attrs
from aiohttp import web
from multidict import CIMultiDict

from deviceflow._clock import Clock

from . import _page
from ._faults import Endpoint, Fault, FaultList
from ._profiles import Profile
from ._state import REFRESH_TOKEN_GRANT, OAuthFailure

__all__ = [
    "MAX_BODY",
    "MAX_FIELDS",
    "REALM",
    "Handler",
    "HttpEdge",
    "RecordedRequest",
    "bearer_challenge",
    "dpop_challenge",
    "html",
]

#: Request bodies above this size are refused (413): nothing the protocol sends comes close.
MAX_BODY = 64 * 1024
#: Most parameters a request may carry.
MAX_FIELDS = 64
#: The realm of the server's WWW-Authenticate challenges.
REALM = "deviceflow test server"

#: A handler: the aiohttp request and its decoded parameters in, an answer out.
Handler = Callable[[web.Request, dict[str, str]], Awaitable[web.StreamResponse]]


@attrs.define(kw_only=True)
class RecordedRequest:
    """One request the server received, in ``server.requests``.

    - ``at``: the server clock's monotonic time when the request arrived.
    - ``endpoint``: ``"discovery"``, ``"registration"``, ``"device"``, ``"token"``,
      ``"revoke"``, ``"resource"``, ``"verification"`` or ``"unknown"``.
    - ``form``: the body's parameters (form-encoded, or JSON for a ``request_format="json"``
      profile) under their RFC names; empty for a body that could not be parsed.
    - ``query``: the query string's parameters.
    - ``headers``: the request headers (case-insensitive lookup).
    - ``status``: the answer's HTTP status, filled in once answered; None while the request is in
      flight or when a fault dropped the connection.
    - ``fault``: the injected fault that applied to this request, if any.
    """

    at: float
    method: str
    path: str
    endpoint: str
    form: dict[str, str] = attrs.Factory(dict)
    query: dict[str, str] = attrs.Factory(dict)
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    status: int | None = None
    fault: Fault | None = None


@attrs.define(kw_only=True)
class HttpEdge:
    """Logs requests, applies faults, decodes bodies and encodes answers in the profile's format.

    ``requests`` is the request log and ``faults`` the armed faults; the server hands both out.
    """

    _profile: Profile
    _clock: Clock
    faults: FaultList = attrs.Factory(FaultList)
    requests: list[RecordedRequest] = attrs.Factory(list)

    # -- requests in --------------------------------------------------------------------------

    def wrap(
        self, endpoint: Endpoint | Mapping[str, Endpoint], handler: Handler
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """An aiohttp handler that logs the request, applies faults, parses, then answers.

        ``endpoint`` is a mapping from path to endpoint name for the catch-all route, which
        answers 404 or 405 without reading the body.
        """

        async def handle(request: web.Request) -> web.StreamResponse:
            if isinstance(endpoint, str):
                name, parse = endpoint, True
            else:
                name, parse = endpoint.get(request.path, "unknown"), False
            record = RecordedRequest(
                at=self._clock.monotonic(),
                method=request.method,
                path=request.path,
                endpoint=name,
                query=dict(request.query),
                headers=CIMultiDict(request.headers),
            )
            self.requests.append(record)
            response = await self._respond(request, record, handler, parse=parse)
            dropped = record.fault is not None and record.fault.drop
            record.status = None if dropped else response.status
            return response

        return handle

    async def _respond(
        self, request: web.Request, record: RecordedRequest, handler: Handler, *, parse: bool
    ) -> web.StreamResponse:
        problem: OAuthFailure | None = None
        params: dict[str, str] = {}
        api = record.endpoint != "verification"
        if parse and request.method == "POST":
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return self.error(
                    request, OAuthFailure("invalid_request", "request body too large"), status=413
                )
            try:
                raw = self._decode(request, body, api=api)
            except OAuthFailure as failure:
                problem = failure
            else:
                record.form = dict(raw)
                # RFC 6749 3.1: a parameter sent without a value is treated as omitted.
                params = {key: value for key, value in raw.items() if value}
        fault = self.faults.take(record.endpoint)
        if fault is not None:
            record.fault = fault
            response = await _fault_response(request, fault)
            if response is not None:
                return response
        try:
            if problem is not None:
                raise problem
            return await handler(request, params)
        except OAuthFailure as failure:
            return self.error(request, failure)

    def _decode(self, request: web.Request, body: bytes, *, api: bool) -> dict[str, str]:
        """The body's parameters under their RFC names; OAuthFailure when it is malformed."""
        if api and self._profile.request_format == "json":
            if request.content_type != "application/json":
                raise OAuthFailure("invalid_request", "the body must be application/json")
            pairs = _json_pairs(body)
        else:
            if request.content_type != "application/x-www-form-urlencoded":
                raise OAuthFailure(
                    "invalid_request", "the body must be application/x-www-form-urlencoded"
                )
            pairs = _form_pairs(body)
        params: dict[str, str] = {}
        names = self._profile.request_field_names if api else {}
        rename = {v: k for k, v in names.items()}
        for key, value in pairs:
            if key in names and key not in rename:
                # The provider has its own name for this parameter (AWS: clientId): the RFC's
                # is unknown to it.
                raise OAuthFailure(
                    "invalid_request", f"unknown parameter {key!r}; use {names[key]!r}"
                )
            name = rename.get(key, key)
            if name in params:
                # RFC 6749 3.1: parameters MUST NOT be included more than once.
                raise OAuthFailure("invalid_request", f"parameter {name!r} is repeated")
            params[name] = value
        return params

    # -- answers out --------------------------------------------------------------------------

    def _wants_json(self, request: web.Request) -> bool:
        fmt = self._profile.response_format
        if fmt == "negotiate":
            return "application/json" in request.headers.get("Accept", "").lower()
        return fmt == "json"

    def answer(
        self,
        request: web.Request,
        payload: Mapping[str, Any],
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        """``payload`` under the profile's field names, as JSON or form-encoded, not cached."""
        names = self._profile.response_field_names
        renamed = {names.get(key, key): value for key, value in payload.items()}
        if self._wants_json(request):
            response = web.json_response(renamed, status=status)
        else:
            response = web.Response(
                text=urlencode(renamed, doseq=True),
                status=status,
                content_type="application/x-www-form-urlencoded",
            )
        # RFC 6749 5.1: answers with tokens or codes must not be cached.
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
        response.headers.update(headers or {})
        return response

    def error(
        self, request: web.Request, failure: OAuthFailure, *, status: int | None = None
    ) -> web.Response:
        """The OAuth error answer (RFC 6749 5.2) for ``failure``, with the profile's aliases."""
        profile = self._profile
        code = failure.error
        if failure.grant_type == REFRESH_TOKEN_GRANT and code in profile.refresh_error_aliases:
            code = profile.refresh_error_aliases[code]
        else:
            code = profile.error_aliases.get(code, code)
        payload: dict[str, Any] = {
            "error": code,
            "error_description": failure.description,
        }
        if failure.interval is not None and profile.slow_down_includes_interval:
            payload["interval"] = self.number(failure.interval)
        payload.update(profile.error_extra.get(failure.error, {}))
        headers = {}
        if failure.error == "invalid_client":
            # RFC 6749 5.2 and RFC 7235: a 401 names the scheme the client may use.
            headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
        headers.update(failure.headers)
        if status is None:
            status = profile.status_for(failure.error)
        return self.answer(request, payload, status=status, headers=headers)

    def number(self, value: float) -> float | str:
        """``value`` as the profile sends numbers (some send them as strings)."""
        return str(value) if self._profile.numbers_as_strings else value


async def _fault_response(request: web.Request, fault: Fault) -> web.Response | None:
    """The injected answer, None to carry on with the real one (a fault with only a delay)."""
    if fault.delay > 0:
        # Real time on purpose: aiohttp's client timeouts are real time.
        await asyncio.sleep(fault.delay)
    if fault.drop:
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=503)  # never written: the connection is closed
    if fault.status is None:
        return None
    body = fault.body if fault.body is not None else f"injected fault: HTTP {fault.status}"
    response = web.Response(
        body=body.encode() if isinstance(body, str) else body, status=fault.status
    )
    response.headers["Content-Type"] = fault.content_type or "text/plain; charset=utf-8"
    if fault.retry_after is not None:
        response.headers["Retry-After"] = str(fault.retry_after)
    response.headers.update(fault.headers)
    return response


def _form_pairs(body: bytes) -> list[tuple[str, str]]:
    try:
        return parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except UnicodeDecodeError:
        raise OAuthFailure("invalid_request", "the body is not valid form-encoded UTF-8") from None
    except ValueError:  # more than max_num_fields
        raise OAuthFailure("invalid_request", "too many parameters") from None


def _json_pairs(body: bytes) -> list[tuple[str, str]]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise OAuthFailure("invalid_request", "the body is not valid JSON") from None
    if not isinstance(data, dict) or len(data) > MAX_FIELDS:
        raise OAuthFailure("invalid_request", "the body must be a JSON object")
    pairs = []
    for key, value in data.items():
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            value = " ".join(value)  # AWS sends scopes as a list
        if not isinstance(value, str):
            raise OAuthFailure("invalid_request", f"parameter {key!r} must be a string")
        pairs.append((key, value))
    return pairs


def bearer_challenge(description: str | None) -> web.Response:
    """A 401 with a Bearer challenge (RFC 6750 3); ``description`` says why the token failed."""
    challenge = f'Bearer realm="{REALM}"'
    body: dict[str, str] = {}
    if description is not None:
        # RFC 6750 3.1: the token is not good; say so with error="invalid_token".
        challenge += f', error="invalid_token", error_description="{description}"'
        body = {"error": "invalid_token", "error_description": description}
    return web.json_response(body, status=401, headers={"WWW-Authenticate": challenge})


def dpop_challenge(
    error: str | None, description: str, *, algorithms: Sequence[str], nonce: str | None = None
) -> web.Response:
    """A 401 with a DPoP challenge (RFC 9449 7.1): ``invalid_token``, ``invalid_dpop_proof``
    or ``use_dpop_nonce`` (then with the nonce in ``DPoP-Nonce``, RFC 9449 9)."""
    challenge = f'DPoP realm="{REALM}", algs="{" ".join(algorithms)}"'
    body: dict[str, str] = {}
    if error is not None:
        challenge += f', error="{error}", error_description="{description}"'
        body = {"error": error, "error_description": description}
    headers = {"WWW-Authenticate": challenge}
    if nonce is not None:
        headers["DPoP-Nonce"] = nonce
    return web.json_response(body, status=401, headers=headers)


def html(text: str, *, status: int = 200) -> web.Response:
    """An HTML page with the verification page's security headers (no scripts, no framing)."""
    response = web.Response(text=text, status=status, content_type="text/html")
    response.headers["Content-Security-Policy"] = _page.CONTENT_SECURITY_POLICY
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
