"""Mix-up defence (RFC 9700 4.4) for a client of several authorization servers sharing a store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from deviceflow import DeviceFlowClient, DeviceFlowError, Provider, ReauthorizationRequiredError
from deviceflow.stores import MemoryStore
from deviceflow.testing import AuthorizationServer, VirtualClock

SECRET_FIELDS = ("refresh_token", "device_code", "token", "client_secret")


@pytest.fixture
async def two_servers(
    virtual_clock: VirtualClock,
) -> AsyncIterator[tuple[AuthorizationServer, AuthorizationServer]]:
    async with (
        AuthorizationServer(clock=virtual_clock, auto_approve_after=0) as a,
        AuthorizationServer(clock=virtual_clock, auto_approve_after=0) as b,
    ):
        yield a, b


def sent_to(server: AuthorizationServer) -> set[str]:
    """Every secret-bearing value the server received."""
    return {
        value
        for record in server.requests
        for name, value in record.form.items()
        if name in SECRET_FIELDS
    }


async def test_tokens_of_one_issuer_never_go_to_another(
    two_servers: tuple[AuthorizationServer, AuthorizationServer], virtual_clock: VirtualClock
) -> None:
    """Same store, client_id and account name at two issuers: records and refreshes stay apart."""
    a, b = two_servers
    store = MemoryStore()

    def client(server: AuthorizationServer, *, sign_in: bool) -> DeviceFlowClient:
        return DeviceFlowClient(
            Provider(issuer=server.issuer),
            client_id="same-client",
            store=store,
            clock=virtual_clock,
            on_code=(lambda code, account: None) if sign_in else None,
        )

    async with client(a, sign_in=True) as at_a, client(b, sign_in=False) as at_b:
        token = await at_a.get_token("same-account")
        # B does not see A's record: its key names B's issuer.
        with pytest.raises(ReauthorizationRequiredError):
            await at_b.get_token("same-account")
        # A's refresh goes to A only, with A's refresh token.
        a.expire_access_tokens()
        virtual_clock.advance(3600)
        refreshed = await at_a.get_token("same-account")
        assert await at_b.logout("same-account") is False  # nothing of B's to revoke
        assert token.refresh_token is not None
    assert refreshed.access_token != token.access_token
    assert token.refresh_token in sent_to(a)  # the refresh went to the issuer that issued it
    assert [] == b.requests  # B never got a request, let alone one of A's secrets


async def test_discovery_of_one_issuer_naming_another_is_refused(
    two_servers: tuple[AuthorizationServer, AuthorizationServer], virtual_clock: VirtualClock
) -> None:
    """A discovery document elsewhere that names A as issuer (a mix-up attempt) is not used."""
    a, _ = two_servers
    async with AuthorizationServer(
        clock=virtual_clock, metadata_overrides={"issuer": a.issuer}
    ) as impostor:
        client = DeviceFlowClient(
            Provider(issuer=impostor.issuer), client_id="c", clock=virtual_clock
        )
        async with client:
            events = [event async for event in client.authorize("x")]
    assert isinstance(events[-1].error, DeviceFlowError)
    assert "is not the issuer asked for" in str(events[-1].error)
    assert {"discovery"} == {r.endpoint for r in impostor.requests}
