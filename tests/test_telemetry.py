"""Telemetry (the ``otel`` extra): spans and metrics of refreshes, device flows, busy servers and
the cache, recorded through the OpenTelemetry SDK's in-memory exporters by a real client against
the built-in server; no attribute carries a token, a code, a secret or an account name."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from deviceflow import (
    DeviceCode,
    DeviceFlowClient,
    FlowState,
    ReauthorizationRequiredError,
    Token,
    _telemetry,
)
from deviceflow.stores import MemoryStore
from deviceflow.testing import AuthorizationServer, Fault, FaultyStore, VirtualClock
from helpers import make_client, seed

CLIENT_ID = "otel-app"
SECRET = "s3cret-client-value"
LIFETIME = 600


@attrs.define
class Recorded:
    """What the SDK's in-memory exporters hold for one test."""

    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.name == name]

    def points(self, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
        """The data points of metric ``name`` (this test's client only), by attributes."""
        found: dict[frozenset[tuple[str, Any]], Any] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        attributes = dict(point.attributes or {})
                        if attributes.get("client_id") == CLIENT_ID:
                            attributes.pop("client_id")
                            attributes.pop("issuer")
                            attributes.pop("provider")
                            found[frozenset(attributes.items())] = point
        return found

    def names(self) -> set[str]:
        """The metrics with at least one data point."""
        data = self.reader.get_metrics_data()
        return {
            metric.name
            for resource in (data.resource_metrics if data is not None else [])
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if list(metric.data.data_points)
        }

    def counts(self, name: str) -> dict[frozenset[tuple[str, Any]], int]:
        return {key: point.value for key, point in self.points(name).items()}

    def attribute_values(self) -> list[str]:
        """Every attribute value and status text recorded: of spans, span events, metrics."""
        values: list[str] = []
        for span in self.exporter.get_finished_spans():
            values += [str(v) for v in (span.attributes or {}).values()]
            values += [str(v) for e in span.events for v in (e.attributes or {}).values()]
            values.append(str(span.status.description))
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        values += [str(v) for v in (point.attributes or {}).values()]
        return values


def outcome(value: str, **more: Any) -> frozenset[tuple[str, Any]]:
    return frozenset({"outcome": value, **more}.items())


@pytest.fixture
def otel() -> Iterator[Recorded]:
    """Per-test SDK providers with in-memory exporters (the global ones can be set only once)."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    _telemetry.use_providers(tracer_provider, meter_provider)
    yield Recorded(exporter, reader)
    _telemetry.use_providers()
    meter_provider.shutdown()
    tracer_provider.shutdown()


pytestmark = pytest.mark.authorization_server(
    access_token_lifetime=LIFETIME, clients={CLIENT_ID: SECRET}
)


def client_for(server: AuthorizationServer, **options: Any) -> DeviceFlowClient:
    """A confidential client of ``server``, on its clock."""
    return make_client(server, client_id=CLIENT_ID, client_secret=SECRET, **options)


async def test_a_refresh_is_a_span_a_count_and_a_duration(
    otel: Recorded, authorization_server: AuthorizationServer
) -> None:
    """A refresh makes one deviceflow.refresh span naming the client, one count of outcome ok
    and one duration in seconds."""
    async with client_for(authorization_server) as client:
        await seed(client, authorization_server, "alice")
        await client.refresh("alice")
    [span] = otel.spans("deviceflow.refresh")
    expected = {
        "issuer": authorization_server.issuer,
        "client_id": CLIENT_ID,
        "provider": "custom",
        "outcome": "ok",
    }
    assert expected == dict(span.attributes or {})
    assert StatusCode.UNSET == span.status.status_code
    assert {outcome("ok"): 1} == otel.counts("deviceflow.refreshes")
    [duration] = otel.points("deviceflow.refresh.duration").items()
    assert outcome("ok") == duration[0]
    assert 1 == duration[1].count
    assert 0 < duration[1].sum < 20


async def test_the_hot_path_records_nothing(
    otel: Recorded, authorization_server: AuthorizationServer
) -> None:
    """get_token() on a cached token that is not due makes no span and counts nothing."""
    async with client_for(authorization_server) as client:
        await seed(client, authorization_server, "alice")
        for _ in range(1000):
            await client.get_token("alice")
        assert [] == list(otel.exporter.get_finished_spans())
        assert {"deviceflow.accounts.cached"} == otel.names()  # read when collected, no more


async def test_a_refused_refresh_counts_as_invalid_grant(
    otel: Recorded, authorization_server: AuthorizationServer
) -> None:
    """A refresh token the server refuses: outcome invalid_grant, and the span is an error."""
    async with client_for(authorization_server) as client:
        await seed(client, authorization_server, "alice")
        authorization_server.revoke_all()
        with pytest.raises(ReauthorizationRequiredError):
            await client.refresh("alice")
    [span] = otel.spans("deviceflow.refresh")
    assert "invalid_grant" == (span.attributes or {})["outcome"]
    assert StatusCode.ERROR == span.status.status_code
    assert {outcome("invalid_grant"): 1} == otel.counts("deviceflow.refreshes")


async def test_retry_after_is_a_busy_server_a_gate_closure_and_busy_refreshes(
    otel: Recorded, authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """A 429 with Retry-After on the token endpoint: one busy answer, one gate closure, busy
    refreshes that are tried again, then one ok refresh per account."""
    async with client_for(authorization_server) as client:
        for n in range(3):
            await seed(client, authorization_server, f"tenant-{n}")
        virtual_clock.advance(LIFETIME + 1)
        authorization_server.faults.add(
            Fault(endpoint="token", status=429, retry_after=30, times=1)
        )
        await asyncio.gather(*(client.get_token(f"tenant-{n}") for n in range(3)))
    busy = frozenset({"endpoint": "token", "status": 429}.items())
    assert {busy: 1} == otel.counts("deviceflow.server_busy")
    assert {frozenset(): 1} == otel.counts("deviceflow.gate_closures")
    refreshes = otel.counts("deviceflow.refreshes")
    assert 3 == refreshes[outcome("ok")]
    assert 1 <= refreshes[outcome("busy")] <= 3
    spans = [dict(span.attributes or {}) for span in otel.spans("deviceflow.refresh")]
    busy_spans = [span for span in spans if "busy" == span["outcome"]]
    assert refreshes[outcome("busy")] == len(busy_spans)
    assert all("GateClosed" == span["error.type"] for span in busy_spans)


async def test_5xx_answers_are_counted_by_status(
    otel: Recorded, authorization_server: AuthorizationServer
) -> None:
    """Two 503s without Retry-After: counted by endpoint and status; the retried refresh is one
    refresh, ok."""
    async with client_for(authorization_server) as client:
        await seed(client, authorization_server, "alice")
        authorization_server.faults.add(Fault(endpoint="token", status=503, times=2))
        await client.refresh("alice")
    busy = frozenset({"endpoint": "token", "status": 503}.items())
    assert {busy: 2} == otel.counts("deviceflow.server_busy")
    assert {} == otel.counts("deviceflow.gate_closures")
    assert {outcome("ok"): 1} == otel.counts("deviceflow.refreshes")


async def test_a_refresh_the_store_refuses_counts_as_unsaved(
    otel: Recorded, authorization_server: AuthorizationServer
) -> None:
    """A refreshed token the store cannot take: outcome unsaved, an error span."""
    store = FaultyStore(MemoryStore())
    async with client_for(authorization_server, store=store) as client:
        await seed(client, authorization_server, "alice")
        store.fail("put", times=None)
        await client.refresh("alice")
        store.heal()  # aclose() stores it
    [span] = otel.spans("deviceflow.refresh")
    assert "unsaved" == (span.attributes or {})["outcome"]
    assert StatusCode.ERROR == span.status.status_code
    assert {outcome("unsaved"): 1} == otel.counts("deviceflow.refreshes")


@pytest.mark.parametrize(
    ("decide", "expected"),
    [("approve", "granted"), ("deny", "denied"), ("expire", "expired")],
)
async def test_a_device_flow_is_a_span_with_its_states(
    otel: Recorded,
    authorization_server: AuthorizationServer,
    decide: str,
    expected: str,
) -> None:
    """A device flow makes one deviceflow.device_flow span with an event per state, and one
    count of its outcome: granted, denied or expired."""
    async with client_for(authorization_server) as client:
        async for event in client.authorize("alice"):
            if event.state is FlowState.PENDING and event.code is not None:
                getattr(authorization_server, decide)(event.code.user_code)
    [span] = otel.spans("deviceflow.device_flow")
    assert expected == (span.attributes or {})["outcome"]
    states = [(e.attributes or {})["state"] for e in span.events]
    assert ["discover", "request_code", "pending", expected] == states
    assert {outcome(expected): 1} == otel.counts("deviceflow.device_flows")


async def test_a_flow_left_before_its_end_counts_as_abandoned(
    otel: Recorded, authorization_server: AuthorizationServer
) -> None:
    """A caller that stops listening at PENDING: outcome abandoned, and the span is ended."""
    async with client_for(authorization_server) as client:
        async for event in client.authorize("alice"):
            if event.state is FlowState.PENDING:
                break
    [span] = otel.spans("deviceflow.device_flow")
    assert "abandoned" == (span.attributes or {})["outcome"]
    assert {outcome("abandoned"): 1} == otel.counts("deviceflow.device_flows")


async def test_a_granted_flow_whose_token_the_store_refuses_is_still_granted(
    otel: Recorded, authorization_server: AuthorizationServer
) -> None:
    """A flow granted by the server whose token the store cannot take yet: the token is kept
    (unsaved, written later), so the flow counts as granted."""
    store = FaultyStore(MemoryStore())
    authorization_server.configure(auto_approve_after=0)
    async with client_for(authorization_server, store=store) as client:
        store.fail("put", times=None)
        states = [event.state async for event in client.authorize("alice")]
        assert FlowState.GRANTED == states[-1]
        assert {"alice"} == client.unsaved_accounts()
        store.heal()  # aclose() stores it
    [span] = otel.spans("deviceflow.device_flow")
    assert "granted" == (span.attributes or {})["outcome"]
    assert {outcome("granted"): 1} == otel.counts("deviceflow.device_flows")


async def test_the_gauge_counts_cached_accounts_until_the_client_closes(
    otel: Recorded, authorization_server: AuthorizationServer
) -> None:
    """deviceflow.accounts.cached reads the client's cache: 5 accounts, then none once closed."""
    client = client_for(authorization_server)
    async with client:
        for n in range(5):
            await seed(client, authorization_server, f"tenant-{n}")
        assert {frozenset(): 5} == otel.counts("deviceflow.accounts.cached")
    assert {} == otel.counts("deviceflow.accounts.cached")


async def test_no_attribute_carries_a_token_a_code_a_secret_or_an_account(
    otel: Recorded, authorization_server: AuthorizationServer
) -> None:
    """After device flows, refreshes, a refused refresh and busy answers, no recorded attribute
    value contains a token, a device or user code, the client secret or an account name."""
    accounts = ["alice@example.com", "tenant-4711"]
    codes: list[DeviceCode] = []

    def on_code(code: DeviceCode, account: str) -> None:
        codes.append(code)
        authorization_server.approve(code.user_code)

    tokens: list[Token] = []
    async with client_for(authorization_server, on_code=on_code) as client:
        for account in accounts:
            tokens.append(await client.get_token(account))  # a device flow each
        authorization_server.faults.add(Fault(endpoint="token", status=503, times=1))
        tokens.append(await client.refresh(accounts[0]))
        authorization_server.faults.add(Fault(endpoint="token", status=429, retry_after=5, times=1))
        tokens.append(await client.refresh(accounts[1]))
        authorization_server.revoke_all()
        tokens.append(await client.refresh(accounts[0]))  # refused: a new device flow
    secrets = {SECRET, *accounts}
    for token in tokens:
        secrets |= {token.access_token, token.refresh_token or "", token.id_token or ""}
    for code in codes:
        secrets |= {code.user_code, code.device_code, code.verification_uri_complete or ""}
    for request in authorization_server.requests:
        for name in ("refresh_token", "device_code", "client_secret", "token"):
            secrets.add(request.form.get(name, ""))
    secrets.discard("")
    assert len(codes) >= 3
    assert len(otel.spans("deviceflow.refresh")) >= 3
    values = otel.attribute_values()
    assert [] == [(secret, v) for v in values for secret in secrets if secret in v]


async def test_without_opentelemetry_the_client_works_and_records_nothing(
    monkeypatch: pytest.MonkeyPatch,
    authorization_server: AuthorizationServer,
) -> None:
    """With opentelemetry not importable, device flows, refreshes and busy answers are handled
    as before, and nothing is recorded."""
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.setitem(sys.modules, name, None)
    _telemetry.use_providers()
    try:
        authorization_server.configure(auto_approve_after=0)
        async with client_for(authorization_server, on_code=lambda code, account: None) as c:
            first = await c.get_token("alice")
            authorization_server.faults.add(Fault(endpoint="token", status=503, times=1))
            authorization_server.faults.add(
                Fault(endpoint="token", status=429, retry_after=5, times=1)
            )
            second = await c.refresh("alice")
        assert first.access_token != second.access_token
        assert [503, 429, 200] == [
            r.status for r in authorization_server.requests if r.endpoint == "token"
        ][1:]
        assert _telemetry._instruments() is None
    finally:
        _telemetry.use_providers()
