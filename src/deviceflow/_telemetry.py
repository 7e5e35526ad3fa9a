"""Spans and metrics through OpenTelemetry when the ``otel`` extra is installed; nothing without.

Theory of operation
-------------------

What is recorded, and where (the how-to lists the attributes of each):

- the refresh transaction (_refresh.py): a span ``deviceflow.refresh`` around each refresh
  grant sent and its write to the store, the counter ``deviceflow.refreshes`` by ``outcome`` and
  the histogram ``deviceflow.refresh.duration`` (seconds);
- the device flow driver (_device.py): a span ``deviceflow.device_flow`` from discovery to the
  flow's end, with an event at every change of state, and the counter ``deviceflow.device_flows``
  by ``outcome``;
- the endpoints (_endpoints.py): the counter ``deviceflow.server_busy`` of 429 and 5xx answers
  by ``endpoint`` and ``status``, and ``deviceflow.gate_closures``, each time a Retry-After
  closes the token endpoint's gate;
- the client (_client.py): the observable gauge ``deviceflow.accounts.cached``, the tokens its
  cache holds, read when a metric reader collects.

get_token()'s hot path (a cached token that is not due) records nothing, so costs nothing.

The tracer and the meter come from OpenTelemetry's global providers, fetched once, when the
first client is made. With no SDK configured the API hands out no-op ones (and instruments that
start recording once the application sets its providers); without opentelemetry-api installed,
the one failed import is all this module costs, and every function here returns at once.

Attributes name the client: ``issuer`` (the provider's issuer, else its token endpoint),
``client_id`` and ``provider`` (the preset's name). Never a token, a device or user code, a
client secret, an exception message (it may name an account) or the account: account names may
be personal data, and a service with 100,000 tenants would make as many time series.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Iterable, Mapping, Sized
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

import attrs

from ._models import FlowEvent, FlowState
from ._version import __version__
from .exceptions import ConflictError, DeviceFlowError

if TYPE_CHECKING:
    from opentelemetry.metrics import (
        CallbackOptions,
        Counter,
        Histogram,
        MeterProvider,
        ObservableGauge,
        Observation,
    )
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = ["ClientTelemetry", "Outcome", "use_providers"]

#: What names a client in spans and metrics.
Attributes = Mapping[str, str]

#: Histogram buckets of refresh latency, in seconds: a refresh is one HTTP exchange (tens of
#: milliseconds) plus a store write, with retries up to ``http_timeout`` (20 s by default).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0)

#: The outcome of a device flow that reached an end state.
_FLOW_OUTCOMES = {
    FlowState.GRANTED: "granted",
    FlowState.DENIED: "denied",
    FlowState.EXPIRED: "expired",
    FlowState.FAILED: "failed",
}
#: Outcomes that mark a span as an error (the others are the normal course of things).
_ERRORS = frozenset({"error", "invalid_grant", "unsaved", "conflict", "failed"})


class NamedProvider(Protocol):
    """What telemetry reads of a Provider."""

    @property
    def name(self) -> str: ...

    @property
    def identity(self) -> str: ...


@attrs.frozen
class _Instruments:
    tracer: Tracer
    refreshes: Counter
    refresh_duration: Histogram
    device_flows: Counter
    server_busy: Counter
    gate_closures: Counter
    accounts_cached: ObservableGauge


def _build(
    tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None
) -> _Instruments | None:
    """The instruments, from the given providers or else the global ones; None without the API."""
    try:
        from opentelemetry import metrics, trace
    except ImportError:
        return None
    tracer = trace.get_tracer("deviceflow", __version__, tracer_provider=tracer_provider)
    meter = metrics.get_meter("deviceflow", __version__, meter_provider=meter_provider)
    return _Instruments(
        tracer=tracer,
        refreshes=meter.create_counter(
            "deviceflow.refreshes", unit="{refresh}", description="Refresh grants, by outcome."
        ),
        refresh_duration=meter.create_histogram(
            "deviceflow.refresh.duration",
            unit="s",
            description="Time from a refresh grant's first attempt to its token being stored.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        ),
        device_flows=meter.create_counter(
            "deviceflow.device_flows", unit="{flow}", description="Device flows, by outcome."
        ),
        server_busy=meter.create_counter(
            "deviceflow.server_busy",
            unit="{response}",
            description="429 and 5xx answers from the provider, by endpoint and status.",
        ),
        gate_closures=meter.create_counter(
            "deviceflow.gate_closures",
            unit="{closure}",
            description="Times a Retry-After closed the token endpoint to every account.",
        ),
        accounts_cached=meter.create_observable_gauge(
            "deviceflow.accounts.cached",
            callbacks=[_observe_caches],
            unit="{account}",
            description="Accounts whose token the client holds in memory.",
        ),
    )


_built = False  # True once the instruments below were looked for
_current: _Instruments | None = None


def _instruments() -> _Instruments | None:
    global _built, _current
    if not _built:
        _current = _build(None, None)
        _built = True
    return _current


def use_providers(
    tracer_provider: TracerProvider | None = None, meter_provider: MeterProvider | None = None
) -> None:
    """Record through these providers instead of the global ones (for tests: the global
    providers can be set only once per process); with no arguments, back to the global ones."""
    global _built, _current
    if tracer_provider is None and meter_provider is None:
        _built, _current = False, None
    else:
        _built, _current = True, _build(tracer_provider, meter_provider)


# --- the gauge of cached accounts -----------------------------------------------------------

_watched: weakref.WeakSet[ClientTelemetry] = weakref.WeakSet()
_watched_lock = threading.Lock()  # metric readers collect from threads of their own


def _observe_caches(options: CallbackOptions) -> Iterable[Observation]:
    from opentelemetry.metrics import Observation

    with _watched_lock:
        clients = list(_watched)
    totals: dict[tuple[tuple[str, str], ...], int] = {}
    for client in clients:
        cache = client.cache
        if cache is not None:
            key = tuple(sorted(client.attributes.items()))
            totals[key] = totals.get(key, 0) + len(cache)
    return [Observation(count, dict(key)) for key, count in totals.items()]


# --- one client's telemetry -----------------------------------------------------------------


@attrs.define
class Outcome:
    """How a refresh ended: set by the refresh transaction where it knows (the default is ok;
    an exception that leaves the refresh decides it otherwise)."""

    value: str = "ok"


class ClientTelemetry:
    """The spans and metrics of one client, all carrying the same attributes."""

    __slots__ = ("__weakref__", "attributes", "cache")

    def __init__(self, provider: NamedProvider, client_id: str) -> None:
        self.attributes: Attributes = {
            "issuer": provider.identity,
            "client_id": client_id,
            "provider": provider.name,
        }
        self.cache: Sized | None = None

    def watch(self, cache: Sized) -> None:
        """Report ``len(cache)`` in ``deviceflow.accounts.cached`` (until :meth:`unwatch`)."""
        if _instruments() is None:
            return
        self.cache = cache
        with _watched_lock:
            _watched.add(self)

    def unwatch(self) -> None:
        """Stop reporting the cache (the client is closed)."""
        with _watched_lock:
            _watched.discard(self)
        self.cache = None

    def refreshing(self) -> _Refreshing:
        """Span, count and time one refresh: the request with its retries, and the write.
        ``with telemetry.refreshing() as outcome:``; the block sets ``outcome.value`` where
        it knows how the refresh ended."""
        return _Refreshing(self.attributes, _instruments())

    def device_flow(
        self, events: AsyncGenerator[FlowEvent, None]
    ) -> AsyncGenerator[FlowEvent, None]:
        """``events`` (one device flow), traced and counted; ``events`` itself without the API."""
        instruments = _instruments()
        if instruments is None:
            return events
        return self._traced_flow(instruments, events)

    async def _traced_flow(
        self, instruments: _Instruments, events: AsyncGenerator[FlowEvent, None]
    ) -> AsyncGenerator[FlowEvent, None]:
        from opentelemetry.trace import use_span

        span = instruments.tracer.start_span(
            "deviceflow.device_flow",
            attributes=self.attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        # Stopped before an end state: the caller stopped listening or was cancelled, or the
        # account was signed in elsewhere meanwhile.
        outcome = "abandoned"
        try:
            async with contextlib.aclosing(events):
                while True:
                    # Current only while the flow's own code runs (its requests are children),
                    # never across a yield: the caller's code between events is not the flow's.
                    with use_span(span, record_exception=False, set_status_on_exception=False):
                        try:
                            event = await anext(events)
                        except StopAsyncIteration:
                            break
                    state: dict[str, str | float] = {"state": event.state.value}
                    if event.interval is not None:
                        state["interval"] = event.interval
                    span.add_event("deviceflow.state", state)
                    if event.state.is_terminal:
                        outcome = _FLOW_OUTCOMES[event.state]
                        if event.error is not None:
                            span.set_attribute("error.type", type(event.error).__name__)
                    yield event
        except DeviceFlowError as exc:  # the granted token could not be stored, say
            _failed(span, exc)
            outcome = "failed"
            raise
        finally:
            _ended(span, outcome)
            span.end()
            instruments.device_flows.add(1, {**self.attributes, "outcome": outcome})

    def server_busy(self, endpoint: str, status: int) -> None:
        """Count a 429 or 5xx answer from ``endpoint`` (a RequestKind value)."""
        instruments = _instruments()
        if instruments is not None:
            attributes: dict[str, str | int] = {**self.attributes, "endpoint": endpoint}
            attributes["status"] = status
            instruments.server_busy.add(1, attributes)

    def gate_closed(self) -> None:
        """Count a closure of the token endpoint's gate (a Retry-After while it was open)."""
        instruments = _instruments()
        if instruments is not None:
            instruments.gate_closures.add(1, self.attributes)


class _Refreshing:
    """The telemetry of one refresh (:meth:`ClientTelemetry.refreshing`). A class rather than
    a generator: a storm runs one per refresh, and without an SDK it records nothing."""

    __slots__ = ("_attributes", "_current", "_instruments", "_span", "_started", "outcome")

    def __init__(self, attributes: Attributes, instruments: _Instruments | None) -> None:
        self._attributes = attributes
        self._instruments = instruments
        self.outcome = Outcome()
        self._current: AbstractContextManager[object] | None = None

    def __enter__(self) -> Outcome:
        instruments = self._instruments
        if instruments is not None:
            self._started = time.perf_counter()
            span = self._span = instruments.tracer.start_span(
                "deviceflow.refresh",
                attributes=self._attributes,
                record_exception=False,  # its message may name the account
                set_status_on_exception=False,
            )
            # With no SDK configured the API hands out the invalid span: making it current
            # would cost more than the rest of this class, on every refresh, and change nothing.
            if span.get_span_context().is_valid:
                from opentelemetry.trace import use_span

                self._current = use_span(
                    span, end_on_exit=True, record_exception=False, set_status_on_exception=False
                )
                self._current.__enter__()
        return self.outcome

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        instruments = self._instruments
        if instruments is None:
            return
        outcome, span, current = self.outcome, self._span, self._current
        try:
            if isinstance(exc, ConflictError):  # signed out while refreshing
                _failed(span, exc)
                outcome.value = "conflict"
            elif isinstance(exc, Exception):
                _failed(span, exc)
                if outcome.value == "ok":
                    outcome.value = "error"
            elif exc is not None:
                outcome.value = "cancelled"
            if current is not None:
                _ended(span, outcome.value)
            attributes = {**self._attributes, "outcome": outcome.value}
            instruments.refreshes.add(1, attributes)
            instruments.refresh_duration.record(time.perf_counter() - self._started, attributes)
        finally:
            if current is not None:
                current.__exit__(exc_type, exc, tb)


def _failed(span: Span, exc: BaseException) -> None:
    span.set_attribute("error.type", type(exc).__name__)


def _ended(span: Span, outcome: str) -> None:
    from opentelemetry.trace import StatusCode

    span.set_attribute("outcome", outcome)
    if outcome in _ERRORS:
        span.set_status(StatusCode.ERROR, outcome)
