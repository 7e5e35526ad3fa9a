"""The RFC 8628 device flow as a sans-IO state machine.

Theory of operation
-------------------
The machine knows the protocol and nothing else: no sockets, no event loop, no clock. Its driver
(``DeviceFlowClient``) feeds it *inputs* and carries out the *actions* it returns:

- ``start(now, wall)`` begins a flow;
- ``receive_response(response, now, wall)`` hands it an HTTP answer (status, headers, body);
- ``receive_failure(error, now, wall)`` tells it a request failed in transport (connection
  refused, reset, timeout).

Each input returns one action: :class:`Send` (send this request, not before monotonic time
``at``), :class:`Done` (the flow is GRANTED: here is the token) or :class:`Fail` (EXPIRED, DENIED
or FAILED, with a typed error). ``now`` is a monotonic reading used for every wait; ``wall`` is
the current aware UTC time, used only to stamp ``expires_at`` on codes and tokens.

States are :class:`FlowState` values and every move between them is a row of ``TRANSITIONS``
(the docs draw their state diagram from it). Inputs are first classified into a :class:`Signal`
by the pure parsing functions below, then the table decides the next state, so no state changes
anywhere else. Any exception inside the machine poisons it: it moves to FAILED, answers with
``Fail`` and refuses every later input. So does any input after a terminal state: there is never a
poll after GRANTED (RFC 8628 3.5; some servers revoke the grant when a redeemed code is polled).

The parsers of what servers send live in ``_parse.py`` and the URL rules in ``_urls.py``: the
client uses the same ones for refreshes and discovery, so every answer from a server is judged by
one set of rules.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, NoReturn

import attrs

from ._models import (
    DeviceCode,
    Dialect,
    FlowState,
    ProviderMetadata,
    Request,
    RequestKind,
    Response,
    Token,
)
from ._parse import (
    DEFAULT_INTERVAL,
    ENDPOINT_NAMES,
    RETRYABLE_ERRORS,
    is_retryable_status,
    oauth_error,
    parse_body,
    parse_device_code,
    parse_metadata,
    parse_seconds,
    parse_token,
    retry_after,
)
from ._urls import discovery_urls
from .exceptions import (
    DeviceFlowError,
    DiscoveryError,
    ExpiredTokenError,
    OAuthError,
    ProtocolError,
    TransportError,
)

__all__ = [
    "DEVICE_CODE_GRANT",
    "TRANSITIONS",
    "Action",
    "DeviceFlowMachine",
    "Done",
    "Fail",
    "Send",
    "Signal",
]

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
#: Setting up a flow (discovery, the device code request) gives up on a server that does not
#: answer at all (connection refused, host not found) after this many tries (about 1.5 s).
UNREACHABLE_TRIES = 3
#: RFC 8628 3.5: slow_down adds 5 seconds to the interval, for this and all later polls.
SLOW_DOWN_STEP = 5.0


@attrs.frozen
class Send:
    """Send ``request`` once the monotonic clock reads ``at`` or later."""

    request: Request
    at: float


@attrs.frozen
class Done:
    """The flow is GRANTED."""

    token: Token


@attrs.frozen
class Fail:
    """The flow ended in EXPIRED, DENIED or FAILED."""

    error: DeviceFlowError


Action = Send | Done | Fail


class Signal(enum.Enum):
    """What an input signals, once classified (the public FlowEvent is something else: what
    the driver yields to applications): the table maps (state, signal) to the next state."""

    METADATA = "metadata accepted"
    NEXT_DISCOVERY_URL = "no document here: try the next URL"
    CODE_ISSUED = "device code issued"
    AUTHORIZATION_PENDING = "authorization_pending"
    SLOW_DOWN = "slow_down"
    TOKEN_ISSUED = "token issued"
    ACCESS_DENIED = "access_denied"
    CODE_EXPIRED = "expired_token or deadline"
    RETRY = "transport failure, 5xx or 429"
    ERROR = "other error"


_S = FlowState
_E = Signal
#: The whole protocol: one row per (state, signal) -> next state. A pair not in the table is a
#: bug in the machine and poisons it. Terminal states have no rows: nothing follows them.
TRANSITIONS: Mapping[FlowState, Mapping[Signal, FlowState]] = {
    _S.DISCOVER: {
        _E.METADATA: _S.REQUEST_CODE,
        _E.NEXT_DISCOVERY_URL: _S.DISCOVER,
        _E.RETRY: _S.DISCOVER,
        _E.ERROR: _S.FAILED,
    },
    _S.REQUEST_CODE: {
        _E.CODE_ISSUED: _S.PENDING,
        _E.RETRY: _S.REQUEST_CODE,
        _E.ERROR: _S.FAILED,
    },
    _S.PENDING: {
        _E.AUTHORIZATION_PENDING: _S.PENDING,
        _E.SLOW_DOWN: _S.SLOW_DOWN,
        _E.TOKEN_ISSUED: _S.GRANTED,
        _E.ACCESS_DENIED: _S.DENIED,
        _E.CODE_EXPIRED: _S.EXPIRED,
        _E.RETRY: _S.PENDING,
        _E.ERROR: _S.FAILED,
    },
    _S.SLOW_DOWN: {
        _E.AUTHORIZATION_PENDING: _S.PENDING,
        _E.SLOW_DOWN: _S.SLOW_DOWN,
        _E.TOKEN_ISSUED: _S.GRANTED,
        _E.ACCESS_DENIED: _S.DENIED,
        _E.CODE_EXPIRED: _S.EXPIRED,
        _E.RETRY: _S.SLOW_DOWN,
        _E.ERROR: _S.FAILED,
    },
}


# --- The machine --------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class _Classified:
    """What one input taught the machine: its signal, and what came with it."""

    signal: Signal
    error: DeviceFlowError | None = None
    delay: float | None = None
    fields: Mapping[str, Any] = attrs.Factory(dict)
    metadata: ProviderMetadata | None = None


class DeviceFlowMachine:
    """One device flow, from discovery (when needed) to a token or a typed error.

    >>> from datetime import datetime, timezone
    >>> m = DeviceFlowMachine(client_id="cli", scope="openid", metadata=ProviderMetadata(
    ...     issuer=None, device_authorization_endpoint="https://idp.example/device",
    ...     token_endpoint="https://idp.example/token"))
    >>> action = m.start(now=0.0, wall=datetime(2030, 1, 1, tzinfo=timezone.utc))
    >>> action.request.url, m.state
    ('https://idp.example/device', <FlowState.REQUEST_CODE: 'request_code'>)
    """

    def __init__(
        self,
        *,
        client_id: str,
        scope: str | None = None,
        metadata: ProviderMetadata | None = None,
        issuer: str | None = None,
        expected_issuer: str | None = None,
        check_issuer: bool = True,
        dialect: Dialect | None = None,
        device_params: Mapping[str, str] | None = None,
        poll_margin: float = 0.1,
        max_backoff: float = 60.0,
        setup_timeout: float = 60.0,
        endpoints: Mapping[str, str] | None = None,
    ) -> None:
        if metadata is None and issuer is None:
            raise ValueError("give the provider's metadata or an issuer to discover")
        # Endpoints given by hand: discovery fills in only the others (Provider.endpoints).
        self._given = {k: v for k, v in (endpoints or {}).items() if k in ENDPOINT_NAMES}
        self._client_id = client_id
        self._scope = scope
        self._dialect = dialect or Dialect()
        self._device_params = dict(device_params or {})
        self._issuer = issuer
        self._expected_issuer = expected_issuer if expected_issuer is not None else issuer
        self._check_issuer = check_issuer
        self._poll_margin = max(0.0, poll_margin)
        self._max_backoff = max_backoff
        self._setup_timeout = setup_timeout
        self._discovery_urls = discovery_urls(issuer) if issuer else []

        self.metadata = metadata
        self.state = FlowState.REQUEST_CODE if metadata is not None else FlowState.DISCOVER
        self.code: DeviceCode | None = None
        self.token: Token | None = None
        self.error: DeviceFlowError | None = None
        #: The polling interval in force (seconds); grows with every slow_down, never shrinks.
        self.interval = DEFAULT_INTERVAL
        self._failures = 0
        self._deadline = math.inf
        self._setup_deadline = math.inf
        self._started = False
        self._discovery_index = 0

    # Inputs ---------------------------------------------------------------------------------

    def start(self, *, now: float, wall: datetime) -> Action:
        """Begin the flow: the first request to send."""
        if self._started:
            self._refuse()
        self._started = True
        return self._guard(lambda: self._begin(now))

    def receive_response(self, response: Response, *, now: float, wall: datetime) -> Action:
        """Feed the answer to the last Send; returns the next action."""
        if not self._started or self.state.is_terminal:
            self._refuse()
        return self._guard(lambda: self._step(self._classify(response, wall), now, wall))

    def receive_failure(self, error: DeviceFlowError, *, now: float, wall: datetime) -> Action:
        """The last Send failed before an answer could be used.

        A retryable TransportError (connection refused, reset, timeout) is retried with backoff;
        anything else (a TLS failure, an oversized body, an insecure URL) ends the flow.
        """
        if not self._started or self.state.is_terminal:
            self._refuse()
        retry = isinstance(error, TransportError) and error.retryable
        signal = Signal.RETRY if retry else Signal.ERROR
        return self._guard(lambda: self._step(_Classified(signal=signal, error=error), now, wall))

    # Internals ------------------------------------------------------------------------------

    def _refuse(self) -> NoReturn:
        raise ProtocolError(
            f"this device flow is {self.state.value}; it takes no more input (start a new flow)"
        )

    def _guard(self, step: Callable[[], Action]) -> Action:
        try:
            return step()
        except Exception as exc:
            # Any exception poisons the machine: it is FAILED and refuses further input.
            error = (
                exc
                if isinstance(exc, DeviceFlowError)
                else ProtocolError(f"internal error in the device flow ({type(exc).__name__})")
            )
            self.state = FlowState.FAILED
            self.error = error
            return Fail(error)

    def _begin(self, now: float) -> Action:
        self._setup_deadline = now + self._setup_timeout
        return Send(self._request_for_state(), now)

    def _request_for_state(self) -> Request:
        if self.state is FlowState.DISCOVER:
            return Request(
                kind=RequestKind.DISCOVERY,
                method="GET",
                url=self._discovery_urls[self._discovery_index],
            )
        assert self.metadata is not None
        if self.state is FlowState.REQUEST_CODE:
            params = {"client_id": self._client_id, **self._device_params}
            if self._scope:
                params["scope"] = self._dialect.scope_separator.join(self._scope.split())
            return Request(
                kind=RequestKind.DEVICE_AUTHORIZATION,
                method="POST",
                url=self.metadata.device_authorization_endpoint,
                params=params,
            )
        assert self.code is not None
        # RFC 8628 3.4: the device access token request.
        return Request(
            kind=RequestKind.TOKEN,
            method="POST",
            url=self.metadata.token_endpoint,
            params={
                "grant_type": DEVICE_CODE_GRANT,
                "device_code": self.code.device_code,
                "client_id": self._client_id,
            },
        )

    def _classify(self, response: Response, wall: datetime) -> _Classified:
        """Turn an HTTP response into an Signal (the only place that reads responses)."""
        status = response.status
        if self.state is FlowState.DISCOVER and status == 404:
            if self._discovery_index + 1 < len(self._discovery_urls):
                return _Classified(signal=Signal.NEXT_DISCOVERY_URL)
            return _Classified(
                signal=Signal.ERROR,
                error=DiscoveryError(
                    f"no discovery document for issuer {self._issuer!r} (tried "
                    + ", ".join(self._discovery_urls)
                    + ")"
                ),
            )
        if 300 <= status < 400:
            return _Classified(
                signal=Signal.ERROR,
                error=ProtocolError(f"HTTP {status}: redirects are not followed"),
            )
        try:
            fields = parse_body(response, self._dialect)
        except ProtocolError as exc:
            if is_retryable_status(status):
                return self._retry(response, wall, TransportError(f"HTTP {status}"))
            if self.state is FlowState.DISCOVER:
                raise DiscoveryError(f"the discovery document is unusable: {exc}") from None
            raise
        if self.state is FlowState.DISCOVER:
            return self._classify_discovery(response, fields, wall)
        error = oauth_error(fields, self._dialect, status)
        if error is not None:
            return self._classify_error(error, response, fields, wall)
        if is_retryable_status(status):
            return self._retry(response, wall, TransportError(f"HTTP {status}"))
        if not 200 <= status < 300:
            raise ProtocolError(f"HTTP {status} without an OAuth error")
        if self.state is FlowState.REQUEST_CODE:
            return _Classified(signal=Signal.CODE_ISSUED, fields=fields)
        return _Classified(signal=Signal.TOKEN_ISSUED, fields=fields)

    def _classify_discovery(
        self, response: Response, fields: Mapping[str, Any], wall: datetime
    ) -> _Classified:
        if is_retryable_status(response.status):
            return self._retry(response, wall, TransportError(f"HTTP {response.status}"))
        if response.status != 200:
            raise DiscoveryError(f"discovery answered HTTP {response.status}")
        metadata = parse_metadata(
            fields,
            expected_issuer=self._expected_issuer,
            check_issuer=self._check_issuer,
            given=self._given,
        )
        return _Classified(signal=Signal.METADATA, metadata=metadata)

    def _classify_error(
        self,
        error: OAuthError,
        response: Response,
        fields: Mapping[str, Any],
        wall: datetime,
    ) -> _Classified:
        code = error.error
        if code in RETRYABLE_ERRORS:
            return self._retry(response, wall, error)
        polling = self.state in (FlowState.PENDING, FlowState.SLOW_DOWN)
        if polling and code == "authorization_pending":
            return _Classified(signal=Signal.AUTHORIZATION_PENDING, fields=fields)
        if polling and code == "slow_down":
            return _Classified(signal=Signal.SLOW_DOWN, fields=fields)
        if polling and code == "access_denied":
            return _Classified(signal=Signal.ACCESS_DENIED, error=error)
        if polling and code == "expired_token":
            return _Classified(signal=Signal.CODE_EXPIRED, error=error)
        if not polling and code == "slow_down":
            return self._retry(response, wall, error)
        return _Classified(signal=Signal.ERROR, error=error)

    def _retry(self, response: Response, wall: datetime, error: DeviceFlowError) -> _Classified:
        return _Classified(signal=Signal.RETRY, error=error, delay=retry_after(response, wall))

    def _step(self, classified: _Classified, now: float, wall: datetime) -> Action:
        signal = classified.signal
        try:
            next_state = TRANSITIONS[self.state][signal]
        except KeyError:
            raise ProtocolError(f"no transition from {self.state} on {signal}") from None
        if signal is Signal.RETRY:
            return self._after_retry(classified, next_state, now)
        if signal is Signal.NEXT_DISCOVERY_URL:  # not a failure: no backoff, no count
            self._discovery_index += 1
            self.state = next_state
            return Send(self._request_for_state(), now)
        self._failures = 0
        if signal is Signal.METADATA:
            self.metadata = classified.metadata
            self.state = next_state
            return Send(self._request_for_state(), now)
        if signal is Signal.CODE_ISSUED:
            self.code = parse_device_code(classified.fields, wall)
            self.interval = self.code.interval
            lifetime = (self.code.expires_at - wall).total_seconds()
            self._deadline = now + lifetime
            self.state = next_state
            return self._schedule_poll(now + self.interval)
        if signal is Signal.TOKEN_ISSUED:
            self.token = parse_token(classified.fields, wall)
            self.state = next_state
            return Done(self.token)
        if signal is Signal.AUTHORIZATION_PENDING:
            self._adopt_server_interval(classified.fields)
            self.state = next_state
            return self._schedule_poll(now + self.interval)
        if signal is Signal.SLOW_DOWN:
            # RFC 8628 3.5: add 5 s for this and all later polls; a larger interval sent by the
            # server (GitHub) wins.
            self.interval += SLOW_DOWN_STEP
            self._adopt_server_interval(classified.fields)
            self.state = next_state
            return self._schedule_poll(now + self.interval)
        assert classified.error is not None
        self.state = next_state
        self.error = classified.error
        return Fail(classified.error)

    def _adopt_server_interval(self, fields: Mapping[str, Any]) -> None:
        server_interval = parse_seconds(fields.get("interval"))
        if server_interval is not None and server_interval > self.interval:
            self.interval = server_interval

    def _after_retry(self, classified: _Classified, next_state: FlowState, now: float) -> Action:
        self._failures += 1
        polling = next_state in (FlowState.PENDING, FlowState.SLOW_DOWN)
        if polling:
            # RFC 8628 3.5: on a connection failure the client MUST slow down before retrying;
            # doubling the interval on each one is RECOMMENDED. Never below the interval.
            base = self.interval
            backoff = min(self._max_backoff, base * 2**self._failures)
            delay = max(base, backoff)
        else:
            delay = min(self._max_backoff, 0.5 * 2 ** (self._failures - 1))
        if classified.delay is not None:
            delay = max(delay, classified.delay)
        self.state = next_state
        if polling:
            return self._schedule_poll(now + delay, cause=classified.error)
        error = classified.error
        # Connection refused, host not found: a mistyped or stopped server does not come back in
        # a minute; give up after a couple of quick tries, in plain words.
        unreachable = isinstance(error, TransportError) and error.unreachable
        if unreachable and self._failures >= UNREACHABLE_TRIES:
            return self._fail(TransportError(str(error), retryable=False, unreachable=True))
        if now + delay > self._setup_deadline:
            error = classified.error or ProtocolError("the server did not answer usefully")
            if not isinstance(error, (OAuthError, DiscoveryError)):
                error = TransportError(
                    f"gave up after {self._failures} failed attempts: {error}", retryable=False
                )
            return self._fail(error)
        return Send(self._request_for_state(), now + delay)

    def _schedule_poll(self, at: float, *, cause: DeviceFlowError | None = None) -> Action:
        at += self._poll_margin
        if at > self._deadline:
            # The device code dies before the next poll is allowed: stop now (RFC 8628 3.5).
            why = f"; last error: {cause}" if cause is not None else ""
            self.state = TRANSITIONS[self.state][Signal.CODE_EXPIRED]
            return self._fail(
                ExpiredTokenError(
                    "expired_token",
                    "the device code expired before the user approved it" + why,
                )
            )
        return Send(self._request_for_state(), at)

    def _fail(self, error: DeviceFlowError) -> Fail:
        if not self.state.is_terminal:
            self.state = TRANSITIONS[self.state][Signal.ERROR]
        self.error = error
        return Fail(error)
