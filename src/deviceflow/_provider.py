"""Providers: where an authorization server's endpoints are, and how it bends the protocol."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from ._checks import (
    auth_method,
    flag,
    optional_printable_text,
    positive_finite,
    printable_text,
    scope_text,
    string_map,
)
from ._clock import Clock, SystemClock
from ._identity import TENANT_METADATA
from ._machine import DeviceFlowMachine, Fail, Send
from ._models import AuthMethod, ClientRegistration, Dialect, FlowState, ProviderMetadata
from ._urls import require_secure_url
from .exceptions import (
    DeviceFlowError,
    InsecureEndpointError,
    ProtocolError,
)

if TYPE_CHECKING:
    import aiohttp

    from ._transport import Transport

__all__ = ["Provider", "fetch_metadata"]


def _url_arg(value: object, what: str) -> str:
    """``value`` if it is an https URL (http only to a loopback host), given by the caller.

    TypeError for a value that is not a string, ValueError for one that is not an absolute http(s)
    URL, InsecureEndpointError for plain http to a host that is not loopback.
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a URL string, not {type(value).__name__}")
    try:
        return require_secure_url(value, what)
    except InsecureEndpointError:
        raise
    except ProtocolError as exc:  # the caller's value, not a server's answer
        raise ValueError(str(exc)) from None


def _optional_url(what: str) -> Callable[[Any, attrs.Attribute[Any], object], None]:
    def check(_: Any, __: attrs.Attribute[Any], value: object) -> None:
        if value is not None:
            _url_arg(value, what)

    return check


def _https(value: object, what: str) -> str:
    """An absolute URL from a URL or a bare host name (``example.com`` -> https).

    TypeError for a value that is not a string, ValueError for an empty one; InsecureEndpointError
    for plain http to a host that is not loopback (tests point presets at
    ``http://127.0.0.1:PORT``).
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, not {type(value).__name__}")
    value = value.strip()
    if not value:
        raise ValueError(f"{what} is empty")
    if "://" not in value:
        value = "https://" + value
    return _url_arg(value, what)


def _segment(value: object, what: str) -> str:
    """One path segment (an Entra tenant, a Keycloak realm), percent-encoded."""
    value = printable_text(what, value).strip()
    if not value or value in (".", ".."):
        raise ValueError(f"{what} is empty")
    return urllib.parse.quote(value, safe="")


# --- Provider presets: data, one place per provider ------------------------------------------

#: Entra ID: bad_verification_code means the device_code is unknown (RFC 6749 5.2 invalid_grant);
#: authorization_declined is a denial (a default alias of every dialect).
ENTRA = Dialect(error_aliases={"bad_verification_code": "invalid_grant"})
#: The tenant that personal Microsoft accounts belong to; its documents name it, not "consumers".
ENTRA_CONSUMERS_TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
_ENTRA_ALIASES = frozenset({"common", "organizations"})
_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

#: GitHub's own error codes for RFC ones; errors come with HTTP 200, which parsing ignores.
GITHUB = Dialect(
    error_aliases={
        "incorrect_client_credentials": "invalid_client",
        "incorrect_device_code": "invalid_grant",
        "bad_refresh_token": "invalid_grant",
        "device_flow_disabled": "unauthorized_client",
    }
)

#: AWS SSO OIDC: JSON bodies with camelCase names; error codes are the RFC's.
AWS_SSO = Dialect(
    request_format="json",
    request_names={
        "client_id": "clientId",
        "client_secret": "clientSecret",
        "device_code": "deviceCode",
        "grant_type": "grantType",
        "refresh_token": "refreshToken",
    },
    response_aliases={
        "clientId": "client_id",
        "clientSecret": "client_secret",
        "clientSecretExpiresAt": "client_secret_expires_at",
        "deviceCode": "device_code",
        "userCode": "user_code",
        "verificationUri": "verification_uri",
        "verificationUriComplete": "verification_uri_complete",
        "expiresIn": "expires_in",
        "accessToken": "access_token",
        "refreshToken": "refresh_token",
        "tokenType": "token_type",
        "idToken": "id_token",
    },
    list_params=frozenset({"scopes"}),
)
_AWS_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")


# --- checks of the constructor's arguments (TypeError or ValueError naming the argument) ------


def _text(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    printable_text(attribute.name, value)


def _optional_text(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    optional_printable_text(attribute.name, value)


def _flag(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    flag(attribute.name, value)


def _auth_method(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    auth_method(attribute.name, value)


def _mapping(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(f"{attribute.name} must be a mapping, not {type(value).__name__}")


def _default_scope(value: str | Iterable[str] | None) -> str | None:
    return scope_text("default_scope", value)


def _device_params(value: Mapping[str, str]) -> Mapping[str, str]:
    return string_map("device_params", value)


def _issuers(value: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    return tuple(printable_text("id_token_issuers", issuer) for issuer in value)


#: Google signs its id_tokens with the keys published here, and names its issuer both ways
#: (https://developers.google.com/identity/openid-connect/openid-connect#validatinganidtoken).
GOOGLE_JWKS = "https://www.googleapis.com/oauth2/v3/certs"
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")


@attrs.frozen(kw_only=True)
class Provider:
    """An authorization server: its endpoints (known or to discover) and its quirks.

    Build one with :meth:`discover`, with a preset, or by hand::

        provider = Provider(
            device_authorization_endpoint="https://idp.example.com/device",
            token_endpoint="https://idp.example.com/token",
        )

    A provider that has an ``issuer`` but not both endpoints is discovered the first time a
    client needs it; endpoints given explicitly win over discovered ones, and discovery fills
    in the rest (a server whose metadata does not list its device endpoint, as
    django-oauth-toolkit's does not, works with ``device_authorization_endpoint=`` given).
    ``expected_issuer`` is the issuer the discovery document must name (by default ``issuer``
    itself, OpenID Connect Discovery 4.3); ``check_issuer=False`` turns that check off.
    ``registration`` describes a client registration the provider needs first (AWS SSO OIDC).
    ``client_auth`` is how a client with a secret authenticates when the client does not say
    (default: HTTP Basic, as RFC 6749 2.3.1 recommends).

    For the verified identity (``DeviceFlowClient.identity()``), id_tokens are checked against
    the keys at ``jwks_uri`` (by default the discovery document's) and must name one of
    ``id_token_issuers`` (by default the discovered issuer) as their ``iss``; an issuer with a
    ``{tenantid}`` placeholder matches the token's own ``tid`` claim (Entra's multi-tenant
    endpoints). ``issues_id_tokens=False`` says the provider is not an OpenID provider (GitHub).

    Presets build the Provider of a known authorization server: :meth:`devolutions`,
    :meth:`entra`, :meth:`google`, :meth:`github`, :meth:`auth0`, :meth:`okta`,
    :meth:`keycloak` and :meth:`aws_sso`. Each takes its host as an argument (with the public
    default where there is one), so it also reaches a private deployment or a test server.
    """

    name: str = attrs.field(default="custom", validator=_text)
    issuer: str | None = attrs.field(default=None, validator=_optional_url("issuer"))
    device_authorization_endpoint: str | None = attrs.field(
        default=None, validator=_optional_url("device_authorization_endpoint")
    )
    token_endpoint: str | None = attrs.field(
        default=None, validator=_optional_url("token_endpoint")
    )
    revocation_endpoint: str | None = attrs.field(
        default=None, validator=_optional_url("revocation_endpoint")
    )
    expected_issuer: str | None = attrs.field(default=None, validator=_optional_text)
    check_issuer: bool = attrs.field(default=True, validator=_flag)
    dialect: Dialect = attrs.field(factory=Dialect, validator=attrs.validators.instance_of(Dialect))
    default_scope: str | None = attrs.field(default=None, converter=_default_scope)
    device_params: Mapping[str, str] = attrs.field(factory=dict, converter=_device_params)
    requires_client_secret: bool = attrs.field(default=False, validator=_flag)
    client_auth: AuthMethod | None = attrs.field(default=None, validator=_auth_method)
    registration: ClientRegistration | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(attrs.validators.instance_of(ClientRegistration)),
    )
    extra: Mapping[str, Any] = attrs.field(factory=dict, repr=False, validator=_mapping)
    jwks_uri: str | None = attrs.field(default=None, validator=_optional_url("jwks_uri"))
    id_token_issuers: tuple[str, ...] = attrs.field(default=(), converter=_issuers)
    issues_id_tokens: bool = attrs.field(default=True, validator=_flag)

    def __attrs_post_init__(self) -> None:
        if self.issuer is None and (
            self.device_authorization_endpoint is None or self.token_endpoint is None
        ):
            raise ValueError(
                "a Provider needs an issuer to discover, or both "
                "device_authorization_endpoint and token_endpoint"
            )
        if self.registration is not None:
            _url_arg(self.registration.endpoint, "registration endpoint")

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
    def endpoints(self) -> dict[str, str]:
        """The endpoints this Provider was given (by name): they win over discovered ones.

        >>> Provider(issuer="https://idp.example",
        ...          device_authorization_endpoint="https://idp.example/device").endpoints
        {'device_authorization_endpoint': 'https://idp.example/device'}
        """
        given = {
            "device_authorization_endpoint": self.device_authorization_endpoint,
            "token_endpoint": self.token_endpoint,
            "revocation_endpoint": self.revocation_endpoint,
        }
        return {name: url for name, url in given.items() if url is not None}

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
        ``check_issuer=False``. Endpoints given in ``options``
        (``device_authorization_endpoint=``, ...) win over the document's. Raises
        DiscoveryError (or TransportError when unreachable).

        >>> provider = await Provider.discover("https://idp.example.com")  # doctest: +SKIP
        """
        from ._transport import AiohttpTransport, ClientAuth

        positive_finite("timeout", timeout)
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

    # --- presets ---------------------------------------------------------------------------

    @classmethod
    def devolutions(cls, base_url: str) -> Provider:
        """Devolutions Server, discovered at ``{base_url}/.well-known/openid-configuration``.

        ``base_url`` is the server's address as users open it, with its instance path if it
        has one (``https://dvls.example.com/dvls``); the discovery document must name it as its
        issuer. Use the client id your Devolutions Server gives its device-flow clients; the
        scope defaults to ``openid offline_access`` (offline_access brings a refresh token).

        >>> Provider.devolutions("https://dvls.example.com/dvls").issuer
        'https://dvls.example.com/dvls'
        """
        return cls(
            name="devolutions",
            issuer=_https(base_url, "base_url"),
            default_scope="openid offline_access",
        )

    @classmethod
    def entra(
        cls, tenant: str = "organizations", *, authority: str = "https://login.microsoftonline.com"
    ) -> Provider:
        """Microsoft Entra ID (v2.0 endpoints) for ``tenant``, on ``authority``'s cloud.

        Register the app under App registrations, then under Authentication set "Allow public
        client flows" to Yes; ``client_id`` is its "Application (client) ID". The scope
        defaults to ``openid profile offline_access`` (offline_access brings a refresh token);
        add the API's scopes, e.g. ``User.Read``. ``tenant`` is ``organizations`` (work and
        school accounts), ``common``, ``consumers``, a tenant id or a domain name; ``authority``
        selects a national cloud (``https://login.microsoftonline.us``, ...).

        The discovery document must name its issuer exactly, except that the multi-tenant
        ``common`` and ``organizations`` documents name ``{authority}/{tenantid}/v2.0`` with that
        literal placeholder, and ``consumers`` names the personal-accounts tenant's id. A tenant
        given by domain name has a document naming its tenant id, which cannot be known here, so
        its documented endpoints are used without discovery; its id_tokens must name exactly
        the issuer that document gives (read when an identity is first checked). Show
        ``DeviceCode.message``: Entra sends ready-made instructions and no
        ``verification_uri_complete``.

        id_tokens name ``{authority}/{tid}/v2.0`` as their issuer, ``tid`` being the directory
        (tenant) of the person who signed in: with ``common`` and ``organizations`` any
        directory's people may sign in, so bind an account to its directory with
        ``verify_identity`` (see the multi-tenant how-to).

        >>> Provider.entra("common").expected_issuer
        'https://login.microsoftonline.com/{tenantid}/v2.0'
        """
        root = _https(authority, "authority").rstrip("/")
        tenant = _segment(tenant, "tenant")
        alias = tenant.lower()
        if alias in _ENTRA_ALIASES or alias == "consumers" or _GUID.fullmatch(alias):
            tenant = alias  # as Entra's documents spell them
        provider = cls(
            name="entra",
            issuer=f"{root}/{tenant}/v2.0",
            dialect=ENTRA,
            default_scope="openid profile offline_access",
        )
        if alias in _ENTRA_ALIASES:
            return attrs.evolve(provider, expected_issuer=f"{root}/{{tenantid}}/v2.0")
        if alias == "consumers":
            return attrs.evolve(provider, expected_issuer=f"{root}/{ENTRA_CONSUMERS_TENANT}/v2.0")
        if _GUID.fullmatch(alias):
            return provider
        return attrs.evolve(
            provider,
            issuer=None,
            device_authorization_endpoint=f"{root}/{tenant}/oauth2/v2.0/devicecode",
            token_endpoint=f"{root}/{tenant}/oauth2/v2.0/token",
            jwks_uri=f"{root}/{tenant}/discovery/v2.0/keys",
            # Its id_tokens must name the issuer of the tenant's own document, the tenant id
            # (Entra signs every directory's tokens with the same keys).
            extra={TENANT_METADATA: f"{root}/{tenant}/v2.0/.well-known/openid-configuration"},
        )

    @classmethod
    def google(cls, *, base_url: str = "https://oauth2.googleapis.com") -> Provider:
        """Google ("OAuth 2.0 for TV and Limited-Input Device Applications").

        In the Google Cloud console, create an OAuth client ID of the application type "TVs and
        Limited Input devices"; pass its client id and client secret (the token endpoint
        requires the secret, so DeviceFlowClient refuses to start without one). Only some
        scopes are allowed in this flow (``openid email profile``, Drive's ``drive.file``,
        YouTube's, ...); the default is ``openid email profile``. Google answers
        ``verification_url`` (read as verification_uri), pending with HTTP 428, and slow_down
        and denials with HTTP 403. ``base_url`` only changes for tests.

        id_tokens are checked against Google's published keys and may name their issuer
        ``https://accounts.google.com`` or ``accounts.google.com``; with another ``base_url``
        (a test server) the keys are looked for at ``{base_url}/oauth2/v3/certs``.
        """
        root = _https(base_url, "base_url").rstrip("/")
        default = root == "https://oauth2.googleapis.com"
        return cls(
            name="google",
            jwks_uri=GOOGLE_JWKS if default else f"{root}/oauth2/v3/certs",
            id_token_issuers=GOOGLE_ISSUERS,
            device_authorization_endpoint=f"{root}/device/code",
            token_endpoint=f"{root}/token",
            revocation_endpoint=f"{root}/revoke",
            default_scope="openid email profile",
            requires_client_secret=True,
            client_auth="client_secret_post",  # what Google's device-flow guide documents
        )

    @classmethod
    def github(cls, *, base_url: str = "https://github.com") -> Provider:
        """GitHub, or GitHub Enterprise Server at ``base_url``; there is no discovery.

        Register an OAuth app or a GitHub App and tick "Enable Device Flow" in its settings;
        ``client_id`` is its Client ID, and no secret is needed. Scopes (OAuth apps only, e.g.
        ``repo read:org``) are sent space-separated and come back comma-separated in
        ``Token.scope``. GitHub App user tokens expire after 8 hours and their refresh tokens
        rotate. GitHub's own error codes map to the RFC's (``incorrect_device_code`` and
        ``bad_refresh_token`` to invalid_grant, ``incorrect_client_credentials`` to
        invalid_client, ``device_flow_disabled`` to unauthorized_client). GitHub is not an
        OpenID provider: it issues no id_token, so there is no verified identity.
        """
        root = _https(base_url, "base_url").rstrip("/")
        return cls(
            name="github",
            device_authorization_endpoint=f"{root}/login/device/code",
            token_endpoint=f"{root}/login/oauth/access_token",
            dialect=GITHUB,
            issues_id_tokens=False,
        )

    @classmethod
    def auth0(cls, domain: str, *, audience: str | None = None) -> Provider:
        """Auth0 tenant ``domain`` (``example.us.auth0.com`` or a custom domain).

        Register a Native application with the "Device Code" grant type (Advanced Settings >
        Grant Types) and the OIDC Conformant toggle on; ``client_id`` is its Client ID.
        ``audience`` (the API's identifier) selects the API the token is for. Refresh tokens
        come only with "Allow Offline Access" on in that API's settings, the "Refresh Token"
        grant type on the application and ``offline_access`` in the scope (the default is
        ``openid profile offline_access``). Auth0 answers pending and denials with HTTP 403,
        slow_down with 429, and expired_token once, then invalid_grant. Its id_tokens name
        ``https://{domain}/`` (with the slash) as their issuer and are signed with the keys at
        ``/.well-known/jwks.json``.
        """
        root = _https(domain, "domain").rstrip("/")
        optional_printable_text("audience", audience)
        return cls(
            name="auth0",
            jwks_uri=f"{root}/.well-known/jwks.json",
            id_token_issuers=(f"{root}/",),
            device_authorization_endpoint=f"{root}/oauth/device/code",
            token_endpoint=f"{root}/oauth/token",
            revocation_endpoint=f"{root}/oauth/revoke",
            default_scope="openid profile offline_access",
            device_params={"audience": audience} if audience else {},
        )

    @classmethod
    def okta(cls, issuer: str) -> Provider:
        """Okta: the org authorization server (``https://{domain}``) or a custom one
        (``https://{domain}/oauth2/{id}``, e.g. ``/oauth2/default``), discovered.

        Create an OIDC Native Application with the "Device Authorization" (and "Refresh Token")
        grant types, and on a custom authorization server allow "Device Authorization" in the
        access policy rule. Pass ``issuer`` exactly as the authorization server's metadata
        names it: with a custom domain the issuer is the Okta URL or the custom URL depending
        on the server's "Issuer" setting, and a mismatch is refused. The scope defaults to
        ``openid profile offline_access``.
        """
        return cls(
            name="okta",
            issuer=_https(issuer, "issuer"),
            default_scope="openid profile offline_access",
        )

    @classmethod
    def keycloak(cls, base_url: str, realm: str) -> Provider:
        """Keycloak realm ``realm`` at ``base_url`` (issuer ``{base_url}/realms/{realm}``).

        The client needs "OAuth 2.0 Device Authorization Grant" ticked in its capability
        config; a public client ("Client authentication" off) needs no secret. Keycloak before
        version 17 serves below ``/auth``: include it in ``base_url``. Whether refresh tokens
        rotate is the realm's "Revoke Refresh Token" setting. The scope defaults to ``openid``.
        """
        root = _https(base_url, "base_url").rstrip("/")
        return cls(
            name="keycloak",
            issuer=f"{root}/realms/{_segment(realm, 'realm')}",
            default_scope="openid",
        )

    @classmethod
    def aws_sso(cls, region: str, start_url: str, *, base_url: str | None = None) -> Provider:
        """AWS IAM Identity Center (SSO OIDC) in ``region``, for the portal at ``start_url``.

        Nothing is registered in a console: the client registers itself (RegisterClient) on
        first use, names itself with the ``client_id`` given to DeviceFlowClient (e.g. your
        tool's name), keeps the registration in its store and renews it before it expires.
        The scope (default ``sso:account:access``, which brings refresh tokens) is registered
        then. Requests are JSON with camelCase names. ``base_url`` overrides
        ``https://oidc.{region}.amazonaws.com`` (other partitions, tests).
        """
        region = printable_text("region", region).strip()
        if not _AWS_REGION.fullmatch(region):
            raise ValueError(f"{region!r} is not an AWS region name such as 'us-east-1'")
        _url_arg(start_url, "start_url")
        root = _https(base_url or f"https://oidc.{region}.amazonaws.com", "base_url").rstrip("/")
        return cls(
            name="aws_sso",
            device_authorization_endpoint=f"{root}/device_authorization",
            token_endpoint=f"{root}/token",
            dialect=AWS_SSO,
            default_scope="sso:account:access",
            device_params={"startUrl": start_url},
            issues_id_tokens=False,  # CreateToken's idToken is documented as not supported
            registration=ClientRegistration(
                endpoint=f"{root}/client/register",
                params={"clientType": "public"},
                name_param="clientName",
                scope_param="scopes",
            ),
        )


async def fetch_metadata(
    transport: Transport,
    provider: Provider,
    *,
    clock: Clock | None = None,
    setup_timeout: float = 60.0,
) -> ProviderMetadata:
    """Discover ``provider``'s endpoints by running the device-flow machine's DISCOVER state, so
    that discovery here and inside a flow follow one set of rules: both discovery URLs in turn,
    Retry-After honoured, backoff on 5xx and timeouts for up to ``setup_timeout`` seconds, and a
    quick, plain failure when nothing answers at all (connection refused, host not found).

    Raises DiscoveryError for a document that is missing or unusable, TransportError when the
    server could not be reached (``retryable`` False once the retries are spent).
    """
    assert provider.issuer is not None
    clock = clock or SystemClock()
    machine = DeviceFlowMachine(
        client_id="",
        issuer=provider.issuer,
        expected_issuer=provider.expected_issuer,
        check_issuer=provider.check_issuer,
        dialect=provider.dialect,
        endpoints=provider.endpoints,
        setup_timeout=setup_timeout,
    )
    action = machine.start(now=clock.monotonic(), wall=clock.wall())
    while machine.state is FlowState.DISCOVER and isinstance(action, Send):
        delay = action.at - clock.monotonic()
        if delay > 0:
            await clock.sleep(delay)
        try:
            response = await transport.send(action.request)
        except DeviceFlowError as exc:
            action = machine.receive_failure(exc, now=clock.monotonic(), wall=clock.wall())
        else:
            action = machine.receive_response(response, now=clock.monotonic(), wall=clock.wall())
    if isinstance(action, Fail):
        raise action.error
    assert machine.metadata is not None
    return machine.metadata
