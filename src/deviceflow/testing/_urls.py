"""Where the test server's endpoints are: the issuer and every endpoint's URL.

The base URL is known once the server is bound; the issuer path comes from the server's
arguments and each endpoint's path from the provider profile.
"""

from __future__ import annotations

import attrs

from ._profiles import Profile

__all__ = ["ServerUrls"]

_NOT_STARTED = "the server is not started; use 'async with' or await start()"


@attrs.define(kw_only=True)
class ServerUrls:
    """The issuer and endpoint URLs; reading one before the server is bound is a RuntimeError.

    ``base`` (``http://127.0.0.1:41873``) and the port are set by :meth:`bound` and kept after
    the server closes.
    """

    _profile: Profile
    _issuer_path: str
    base: str | None = None
    _port: int | None = None

    def bound(self, host: str, port: int) -> None:
        """The server listens on ``host`` and ``port`` now."""
        self._port = port
        host = f"[{host}]" if ":" in host else host
        self.base = f"http://{host}:{port}"

    def started_base(self) -> str:
        """The base URL; RuntimeError before the server was started."""
        if self.base is None:
            raise RuntimeError(_NOT_STARTED)
        return self.base

    @property
    def port(self) -> int:
        """The TCP port the server listens on; RuntimeError before the server was started."""
        if self._port is None:
            raise RuntimeError(_NOT_STARTED)
        return self._port

    @property
    def issuer(self) -> str:
        """The issuer identifier (no trailing slash)."""
        return self.started_base() + self._issuer_path

    @property
    def registration_endpoint(self) -> str | None:
        """The client registration endpoint, when the profile has one."""
        path = self._profile.registration_path
        return None if path is None else self.issuer + path

    @property
    def device_authorization_endpoint(self) -> str:
        """The device authorization endpoint (RFC 8628 3.1)."""
        return self.issuer + self._profile.device_authorization_path

    @property
    def token_endpoint(self) -> str:
        """The token endpoint (RFC 6749 3.2)."""
        return self.issuer + self._profile.token_path

    @property
    def revocation_endpoint(self) -> str:
        """The revocation endpoint (RFC 7009)."""
        return self.issuer + self._profile.revocation_path

    @property
    def jwks_uri(self) -> str:
        """The JWK set of the keys id_tokens are signed with."""
        return self.issuer + self._profile.jwks_path

    @property
    def verification_uri(self) -> str:
        """The HTML verification page (RFC 8628 3.2)."""
        return self.issuer + self._profile.verification_path

    @property
    def resource_url(self) -> str:
        """The protected resource."""
        return self.issuer + self._profile.resource_path

    @property
    def openid_configuration_url(self) -> str:
        """The OpenID Connect Discovery document."""
        return self.issuer + "/.well-known/openid-configuration"

    @property
    def oauth_metadata_url(self) -> str:
        """The RFC 8414 metadata document (the well-known part before the issuer path)."""
        return f"{self.started_base()}/.well-known/oauth-authorization-server{self._issuer_path}"
