"""Each provider preset paired with the built-in server running that provider's profile."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs

from deviceflow import DeviceCode, DeviceFlowClient, Provider
from deviceflow.testing import AuthorizationServer, VirtualClock

START_URL = "https://d-1234567890.awsapps.com/start"


def base(server: AuthorizationServer) -> str:
    """The server's scheme, host and port, without its issuer path."""
    return f"http://127.0.0.1:{server.port}"


@attrs.frozen(kw_only=True)
class Case:
    """How to run one preset against the server: server options, the preset, client options."""

    name: str
    server: Mapping[str, Any] = attrs.field(factory=dict)
    provider: Callable[[AuthorizationServer], Provider]
    client: Mapping[str, Any] = attrs.field(factory=dict)
    rotates: bool = True  # the provider's refresh answers carry a new refresh token

    @asynccontextmanager
    async def running(
        self, clock: VirtualClock, **server_options: Any
    ) -> AsyncIterator[AuthorizationServer]:
        """The server with this case's profile and options (overridden by ``server_options``)."""
        options = {"profile": self.name, **self.server, **server_options}
        async with AuthorizationServer(clock=clock, **options) as server:
            yield server

    def client_for(
        self, server: AuthorizationServer, clock: VirtualClock, **options: Any
    ) -> DeviceFlowClient:
        """A DeviceFlowClient for this case's preset, on the shared virtual clock."""
        settings = {"client_id": "cli", "clock": clock, **self.client, **options}
        return DeviceFlowClient(self.provider(server), **settings)


CASES = [
    Case(
        name="devolutions",
        server={"issuer_path": "/dvls"},
        provider=lambda s: Provider.devolutions(s.issuer),
    ),
    Case(
        name="entra",
        server={"issuer_path": "/organizations/v2.0", "code_lifetime": 900},
        provider=lambda s: Provider.entra(authority=base(s)),
        client={"scope": "openid profile offline_access User.Read"},
    ),
    Case(
        name="google",
        server={"clients": {"gcli": "gsecret"}, "rotate_refresh_tokens": False},
        provider=lambda s: Provider.google(base_url=s.issuer),
        client={"client_id": "gcli", "client_secret": "gsecret"},
        rotates=False,
    ),
    Case(
        name="github",
        server={"code_lifetime": 900, "access_token_lifetime": 28800},
        provider=lambda s: Provider.github(base_url=s.issuer),
        client={"scope": "repo read:org"},
    ),
    Case(
        name="auth0",
        provider=lambda s: Provider.auth0(s.issuer, audience="https://api.example.com"),
    ),
    Case(
        name="okta",
        server={"issuer_path": "/oauth2/default"},
        provider=lambda s: Provider.okta(s.issuer),
    ),
    Case(
        name="keycloak",
        server={"issuer_path": "/realms/demo"},
        provider=lambda s: Provider.keycloak(base(s), "demo"),
    ),
    Case(
        name="aws_sso",
        provider=lambda s: Provider.aws_sso("us-east-1", START_URL, base_url=s.issuer),
        client={"client_id": "deviceflow-tests"},
    ),
]
CASE_IDS = [case.name for case in CASES]


def deciding(
    server: AuthorizationServer, action: Callable[[str], None] | None = None
) -> Callable[[DeviceCode, str], None]:
    """An on_code callback that applies ``action`` (default: approve) to the shown code."""

    def on_code(code: DeviceCode, account: str) -> None:
        (action or server.approve)(code.user_code)

    return on_code
