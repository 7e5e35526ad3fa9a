"""Helpers shared by test modules (import as ``from helpers import ...``).

Fixtures live in ``conftest.py`` (the built-in server's come from the package's pytest plugin:
``authorization_server`` and ``virtual_clock``); Hypothesis strategies in ``strategies.py``.
"""

from __future__ import annotations

import datetime
import inspect
import ipaddress
import json
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio

from deviceflow import DeviceFlowClient, Provider, Token
from deviceflow.testing import AuthorizationServer

__all__ = [
    "DEVICE_GRANT",
    "eventually",
    "issued_token",
    "make_client",
    "seed",
    "self_signed_context",
    "stored_token",
    "time_factor",
    "wait_until",
]

#: RFC 8628 3.4: the grant_type of a device access token request. Written out, not imported
#: from the package, so that tests check the package's value against the RFC's.
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def time_factor() -> float:
    """How much longer than on an idle machine real-time waits may take (``DEVICEFLOW_TIME_FACTOR``,
    default 1.0): every real-time deadline, timeout and sleep in the tests is multiplied by it.

    A loaded CI runner sets it above 1. Virtual-clock time never needs it.
    """
    factor = float(os.environ.get("DEVICEFLOW_TIME_FACTOR", "1.0"))
    if not factor > 0:
        raise ValueError(f"DEVICEFLOW_TIME_FACTOR must be a positive number, not {factor!r}")
    return factor


async def eventually(
    condition: Callable[[], object | Awaitable[object]], *, within: float = 10.0
) -> None:
    """Wait until ``condition()`` (awaited when it returns an awaitable) is true, checking every
    10 ms; AssertionError once ``within`` real seconds (times :func:`time_factor`) have passed."""
    limit = within * time_factor()
    with anyio.move_on_after(limit):
        while True:
            outcome = condition()
            if inspect.isawaitable(outcome):
                outcome = await outcome
            if outcome:
                return
            await anyio.sleep(0.01)
    raise AssertionError(f"still not true after {limit:g} s: {_name(condition)}")


def wait_until(condition: Callable[[], object], *, within: float = 10.0) -> None:
    """:func:`eventually` for synchronous tests (sleeps the thread)."""
    limit = within * time_factor()
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {limit:g} s: {_name(condition)}")
        time.sleep(0.01)


def _name(condition: Callable[..., object]) -> str:
    return getattr(condition, "__qualname__", repr(condition))


def make_client(server: AuthorizationServer, **kwargs: Any) -> DeviceFlowClient:
    """A DeviceFlowClient for ``server``, on the server's clock, with client id "svc";
    keyword arguments go to DeviceFlowClient and win over these defaults."""
    kwargs.setdefault("client_id", "svc")
    kwargs.setdefault("clock", server.clock)
    provider = kwargs.pop("provider", None) or Provider(issuer=server.issuer)
    return DeviceFlowClient(provider, **kwargs)


def issued_token(
    server: AuthorizationServer, client_id: str, *, scope: str | None = "openid"
) -> Token:
    """A token of a new grant that ``server`` issues directly (no device flow), expiring when the
    server says, on the server's clock."""
    issued = server.issue_tokens(client_id, scope=scope)
    return Token(
        access_token=issued["access_token"],
        refresh_token=issued["refresh_token"],
        expires_at=server.clock.wall() + timedelta(seconds=int(issued["expires_in"])),
    )


async def seed(
    client: DeviceFlowClient,
    server: AuthorizationServer,
    account: str = "default",
    *,
    scope: str | None = "openid",
) -> Token:
    """Store in ``client``'s store, for ``account``, a token of a grant that ``server`` issued
    directly, as a sign-in would have; return the token."""
    token = issued_token(server, client.client_id, scope=scope)
    await client.save_token(account, token)
    return token


async def plant(client: DeviceFlowClient, account: str, token: Token) -> None:
    """Store ``token`` for ``account`` as it is, without the checks save_token() runs on an
    id_token: as a record written by another program, or before those checks, would be."""
    await client._ledger.save(account, token)


async def stored_token(client: DeviceFlowClient, account: str = "default") -> Token | None:
    """The token ``client``'s store holds for ``account``; None when there is none or the
    account was signed out (a tombstone)."""
    current = await client.store.get(client.store_key(account))
    if current is None:
        return None
    token = json.loads(current.value).get("token")
    return None if token is None else Token.from_dict(token)


def self_signed_context(directory: Path) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for 127.0.0.1 and localhost;
    the certificate is also in ``directory / "cert.pem"``, for clients that must trust it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "deviceflow test server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context
