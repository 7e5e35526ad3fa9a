"""Providers: where an authorization server's endpoints are, and how it bends the protocol."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import attrs

from ._clock import Clock, SystemClock
from ._machine import (
    Request,
    RequestKind,
    discovery_urls,
    is_retryable_status,
    parse_body,
    parse_metadata,
    require_secure_url,
)
from ._models import Dialect, ProviderMetadata
from .exceptions import DiscoveryError, ProtocolError, TransportError

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = ["Provider", "fetch_metadata"]


def _check_url(value: str | None, name: str) -> None:
    if value is not None:
        require_secure_url(value, name)


@attrs.frozen(kw_only=True)
class Provider:
    """An authorization server: its endpoints (known or to discover) and its quirks.

    Build one with :meth:`discover`, with a preset, or by hand::

        provider = Provider(
            device_authorization_endpoint="https://idp.example.com/device",
            token_endpoint="https://idp.example.com/token",
        )

    A provider that has an ``issuer`` but no endpoints is discovered the first time a client
    needs it. ``expected_issuer`` is the issuer the discovery document must name (by default
    ``issuer`` itself, OpenID Connect Discovery 4.3); ``check_issuer=False`` turns that check off.
    """

    name: str = "custom"
    issuer: str | None = None
    device_authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    revocation_endpoint: str | None = None
    expected_issuer: str | None = None
    check_issuer: bool = True
    dialect: Dialect = attrs.field(factory=Dialect)
    default_scope: str | None = None
    device_params: Mapping[str, str] = attrs.field(factory=dict)
    requires_client_secret: bool = False
    extra: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.issuer is None and (
            self.device_authorization_endpoint is None or self.token_endpoint is None
        ):
            raise ValueError(
                "a Provider needs an issuer to discover, or both "
                "device_authorization_endpoint and token_endpoint"
            )
        _check_url(self.issuer, "issuer")
        _check_url(self.device_authorization_endpoint, "device_authorization_endpoint")
        _check_url(self.token_endpoint, "token_endpoint")
        _check_url(self.revocation_endpoint, "revocation_endpoint")

    @property
    def metadata(self) -> ProviderMetadata | None:
        """The endpoints when both are known, else None (discovery is needed)."""
        if self.device_authorization_endpoint is None or self.token_endpoint is None:
            return None
        return ProviderMetadata(
            issuer=self.issuer,
            device_authorization_endpoint=self.device_authorization_endpoint,
            token_endpoint=self.token_endpoint,
            revocation_endpoint=self.revocation_endpoint,
        )

    @property
    def identity(self) -> str:
        """What names this server in store keys: the issuer, else the token endpoint."""
        return self.issuer or self.token_endpoint or ""

    def with_metadata(self, metadata: ProviderMetadata) -> Provider:
        """A copy with discovered endpoints filled in."""
        return attrs.evolve(
            self,
            device_authorization_endpoint=metadata.device_authorization_endpoint,
            token_endpoint=metadata.token_endpoint,
            revocation_endpoint=metadata.revocation_endpoint,
            extra={**self.extra, "metadata": dict(metadata.extra)},
        )

    @classmethod
    async def discover(
        cls,
        issuer: str,
        *,
        check_issuer: bool = True,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 20.0,
        **options: Any,
    ) -> Provider:
        """Fetch the issuer's metadata and return a Provider with its endpoints.

        Tries OpenID Connect Discovery (``{issuer}/.well-known/openid-configuration``), then
        RFC 8414 (``/.well-known/oauth-authorization-server`` inserted before the issuer's
        path). The document's ``issuer`` must equal ``issuer`` exactly unless
        ``check_issuer=False``. Raises DiscoveryError (or TransportError when unreachable).

        >>> provider = await Provider.discover("https://idp.example.com")  # doctest: +SKIP
        """
        from ._transport import AiohttpTransport, ClientAuth

        provider = cls(issuer=issuer, check_issuer=check_issuer, **options)
        transport = AiohttpTransport(
            auth=ClientAuth(client_id=""),
            dialect=provider.dialect,
            session=session,
            timeout=timeout,
        )
        try:
            metadata = await fetch_metadata(transport, provider)
        finally:
            await transport.aclose()
        return provider.with_metadata(metadata)


async def fetch_metadata(
    transport: Transport,
    provider: Provider,
    *,
    clock: Clock | None = None,
    attempts: int = 3,
) -> ProviderMetadata:
    """Discover ``provider``'s endpoints, retrying transient failures a few times."""
    assert provider.issuer is not None
    clock = clock or SystemClock()
    expected = provider.expected_issuer or provider.issuer
    last: Exception | None = None
    for attempt in range(attempts):
        if attempt:
            await clock.sleep(0.5 * 2**attempt)
        try:
            for url in discovery_urls(provider.issuer):
                response = await transport.send(
                    Request(kind=RequestKind.DISCOVERY, method="GET", url=url)
                )
                if response.status == 404:
                    continue
                if is_retryable_status(response.status):
                    raise TransportError(f"discovery answered HTTP {response.status}")
                if response.status != 200:
                    raise DiscoveryError(f"discovery at {url} answered HTTP {response.status}")
                try:
                    fields = parse_body(response, provider.dialect)
                except ProtocolError as exc:
                    raise DiscoveryError(f"the discovery document is unusable: {exc}") from None
                return parse_metadata(
                    fields, expected_issuer=expected, check_issuer=provider.check_issuer
                )
            raise DiscoveryError(
                f"no discovery document for issuer {provider.issuer!r} (tried "
                + ", ".join(discovery_urls(provider.issuer))
                + ")"
            )
        except TransportError as exc:
            if not exc.retryable:
                raise
            last = exc
    raise DiscoveryError(f"discovery failed after {attempts} attempts: {last}") from last
