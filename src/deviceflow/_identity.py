"""Verified identity: who signed in, from the OpenID Connect id_token.

Theory of operation
-------------------

An id_token is checked in two steps, because its ``exp`` is short by design (minutes) while
the grant it came with lives for months:

1. **At receipt** (the end of a device flow, every refresh): its claims are read and ``exp``
   and ``iat`` checked against the client's clock with ``SKEW`` seconds of leeway (OpenID
   Connect Core 3.1.3.7 steps 9 and 10). One that has expired, was issued in the future or is
   no JWT is not kept, and a warning names the account. An id_token that a refresh brings
   replaces the one held only if it names the same ``iss`` and ``sub`` (Core 12.2); otherwise
   the one held stays and a warning names the account. A refresh without an id_token keeps the
   one held. No network here: a refresh runs under the store's lock.
2. **On use** (``identity()``): the signature is checked against the provider's JWKS, and
   ``iss``, ``aud`` and ``azp`` (steps 1 to 8), every time. ``exp`` is not checked again: it
   applies at receipt, and an account's identity stays what it was while its grant lives.
   ``verify_identity`` runs at receipt, so there both steps apply.

An id_token given to ``save_token()`` gets both steps; one that fails is dropped, the rest of
the token stored. ``verify_identity`` accepts only when it answers True.

Keys: the JWKS (``jwks_uri``) is fetched when first needed and kept for ``JWKS_MAX_AGE``
seconds. An id_token signed with a key the cached set does not have fetches the set again. A
fetch is tried at most once every ``JWKS_REFETCH`` seconds, whether it worked or not, so that a
stream of tokens naming unknown key ids, or a provider that is down, cannot make the client
hammer it; when fetching the set again fails, the keys held stay in use. Only asymmetric
signatures are accepted: an id_token signed with ``none`` or with the client secret (HS256) is
refused.

joserfc (and through it cryptography) is imported when a signature is first checked.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import json
import logging
import re
import warnings
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs

from ._clock import Clock
from ._models import Request, RequestKind, Token
from .exceptions import DeviceFlowError, IdentityError, TransportError

if TYPE_CHECKING:
    from joserfc.jwk import Key

    from ._endpoints import Endpoints

__all__ = ["SKEW", "Identities", "Identity", "VerifyIdentity", "receive"]

log = logging.getLogger("deviceflow")

#: Leeway, in seconds, for ``exp`` and ``iat`` at receipt (clocks of client and server differ).
SKEW = 60.0
#: How long a fetched JWKS is used before it is fetched again.
JWKS_MAX_AGE = 3600.0
#: The least time between two fetches of the JWKS caused by unknown key ids.
JWKS_REFETCH = 60.0

#: The signature algorithms accepted, with the key type (and curve) each needs.
ALGORITHMS: Mapping[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "Ed25519": ("OKP", "Ed25519"),
}

#: ``Provider.extra`` key: the discovery document whose issuer id_tokens must name, when the
#: provider's own endpoints are used without discovery (an Entra tenant given by domain name).
TENANT_METADATA = "id_token_issuer_metadata"

#: Entra's tenant ids, which replace ``{tenantid}`` in a multi-tenant issuer.
_TENANT_ID = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")

#: ``check(identity, account)``, sync or async: True accepts who signed in.
VerifyIdentity = Callable[["Identity", str], "bool | Awaitable[bool]"]


def _text(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    return value if isinstance(value, str) and value else None


@attrs.frozen(kw_only=True)
class Identity:
    """Who signed in, from a verified id_token (OpenID Connect Core 2 and 5.1).

    ``subject`` (``sub``) and ``issuer`` (``iss``) together name the person for good; ``name``
    and ``email`` are for display (they may change, and an email is not always verified: see
    ``claims["email_verified"]``). ``claims`` holds every claim of the id_token, e.g. Entra's
    ``tid`` (the directory) or Google's ``hd`` (the Workspace domain).

    >>> str(Identity(subject="248289761001", issuer="https://accounts.google.com",
    ...              name="alice", email="alice@example.com"))
    'alice (alice@example.com)'
    """

    subject: str
    issuer: str
    name: str | None = None
    email: str | None = None
    claims: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Identity:
        """The identity an id_token's (verified) claims describe."""
        subject, issuer = _text(claims, "sub"), _text(claims, "iss")
        assert subject is not None
        assert issuer is not None
        return cls(
            subject=subject,
            issuer=issuer,
            name=_text(claims, "name"),
            email=_text(claims, "email"),
            claims=dict(claims),
        )

    def __str__(self) -> str:
        """The name (else preferred_username, email or subject), then the email in brackets."""
        label = self.name or _text(self.claims, "preferred_username") or self.email or self.subject
        if self.email and self.email != label:
            return f"{label} ({self.email})"
        return label


# --- at receipt: no network ------------------------------------------------------------------


def read_claims(id_token: str) -> dict[str, Any] | None:
    """The claims of a compact JWS, not verified; None when it is not one."""
    parts = id_token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    return _json_object(payload)


def _json_object(part: str) -> dict[str, Any] | None:
    """The JSON object a base64url part of a JWS holds; None for anything else, including
    JSON nested too deeply to read (RecursionError)."""
    try:
        value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, TypeError, binascii.Error, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float: no time at all
        return None


def _receipt_problem(claims: dict[str, Any] | None, now: datetime) -> str | None:
    """Why an id_token received at ``now`` is not kept (OpenID Connect Core 2, 3.1.3.7 steps 9
    and 10), or None."""
    if claims is None:
        return "the id_token is not a JWT"
    if _text(claims, "iss") is None or _text(claims, "sub") is None:
        return "the id_token has no iss or no sub"
    exp, iat = _number(claims, "exp"), _number(claims, "iat")
    if exp is None or iat is None:
        return "the id_token has no exp or no iat"
    moment = now.timestamp()
    if moment > exp + SKEW:
        return "the id_token had expired when it was received"
    if iat > moment + SKEW:
        return "the id_token was issued in the future (check the clocks)"
    return None


def _same_issuer(held: object, new: object, issuers: tuple[str, ...]) -> bool:
    """Whether two ``iss`` values name one issuer: the same text, or two spellings of one
    accepted issuer (Google's ``https://accounts.google.com`` and ``accounts.google.com``)."""
    if held == new:
        return True
    if not isinstance(held, str) or not isinstance(new, str):
        return False
    if held not in issuers or new not in issuers:
        return False
    return _plain(held) == _plain(new)


def _plain(issuer: str) -> str:
    return issuer.removeprefix("https://").rstrip("/")


def receive(
    previous: Token | None,
    token: Token,
    *,
    account: str,
    now: datetime,
    issuers: tuple[str, ...] = (),
) -> Token:
    """``token`` with the id_token to keep, received at ``now`` (rule 1 of the module
    docstring); ``previous`` is the token a refresh replaces, ``issuers`` the provider's
    accepted issuers (two spellings of one of them name the same issuer)."""
    new = token.id_token
    old = previous.id_token if previous is not None else None
    if new is None or new == old:
        return token
    claims = read_claims(new)
    problem = _receipt_problem(claims, now)
    if problem is None and old is not None and (held := read_claims(old)) is not None:
        assert claims is not None
        same_sub = held.get("sub") == claims.get("sub")
        if not (same_sub and _same_issuer(held.get("iss"), claims.get("iss"), issuers)):
            # OpenID Connect Core 12.2: a refreshed id_token speaks for the same person.
            problem = "the refresh brought an id_token for another iss or sub"
    if problem is None:
        return token
    kept = "the id_token held is kept" if old is not None else "it is not kept"
    log.warning("account %r: %s; %s", account, problem, kept)
    return attrs.evolve(token, id_token=old)


# --- on use: the signature, iss, aud, azp ----------------------------------------------------


def _json_document(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _header(id_token: str) -> dict[str, Any] | None:
    return _json_object(id_token.split(".", 1)[0])


@attrs.frozen
class _Key:
    """One usable key of the provider's JWKS."""

    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    key: Key

    def fits(self, kid: str | None, alg: str) -> bool:
        kty, crv = ALGORITHMS[alg]
        return (
            (kid is None or self.kid == kid)
            and self.kty == kty
            and (crv is None or self.crv == crv)
            and self.alg in (None, alg)
        )


def _import_keys(document: object) -> list[_Key]:
    """The signature keys of a JWKS document (RFC 7517 5) that can be used; others are
    skipped (encryption keys, symmetric keys, unknown types, weak keys)."""
    from joserfc import jwk
    from joserfc.errors import JoseError

    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("not a JWK set")
    keys = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        public = {k: v for k, v in entry.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                key = jwk.import_key(public)
            except (JoseError, ValueError, TypeError):
                continue
        if caught:  # joserfc warns of keys too weak to trust (e.g. RSA below 2048 bits)
            continue
        kid, crv, alg = (entry.get(name) for name in ("kid", "crv", "alg"))
        keys.append(
            _Key(
                kid=kid if isinstance(kid, str) else None,
                kty=entry["kty"],
                crv=crv if isinstance(crv, str) else None,
                alg=alg if isinstance(alg, str) else None,
                key=key,
            )
        )
    return keys


def _issuer_matches(expected: str, claims: Mapping[str, Any]) -> bool:
    iss = claims.get("iss")
    if "{tenantid}" in expected:
        # Entra's multi-tenant metadata names {tenantid}: the token's own directory fills it.
        tid = claims.get("tid")
        if not isinstance(tid, str) or not _TENANT_ID.fullmatch(tid):
            return False
        expected = expected.replace("{tenantid}", tid)
    return iss == expected


class Identities:
    """The id_tokens of one client: checked at receipt, verified on use, and the
    ``verify_identity`` check of a new grant."""

    def __init__(
        self, *, endpoints: Endpoints, clock: Clock, check: VerifyIdentity | None = None
    ) -> None:
        self.endpoints = endpoints
        self.clock = clock
        self.check = check
        self._keys: list[_Key] = []
        # The client clock's monotonic time of the last fetch that worked, and of the last try.
        self._fetched_at: float | None = None
        self._tried_at: float | None = None
        self._issuer: str | None = None  # from the tenant's discovery document (TENANT_METADATA)
        self._fetches = 0
        self._lock = asyncio.Lock()

    # --- a new grant ----------------------------------------------------------------------

    async def admit(self, account: str, token: Token) -> Token:
        """The token of a device flow as it may be kept, once ``verify_identity`` (if set)
        has accepted who signed in; IdentityError otherwise, after the grant was revoked."""
        from ._device import complete_despite_cancellation  # _device imports this module

        now = self.clock.wall()
        if self.check is None:
            return receive(None, token, account=account, now=now)
        try:
            identity = await self._identity_of(account, token, at=now)
            # Typed as object: a check may answer anything, and only True accepts.
            accepted: object = self.check(identity, account)
            if inspect.isawaitable(accepted):
                accepted = await accepted
        except BaseException:
            # Even when cancelled: the grant must not outlive a check that did not pass. The
            # revocation is one request, bounded by the HTTP timeout.
            await complete_despite_cancellation(self._revoke(account, token))
            raise
        if accepted is not True:  # only True accepts: a truthy "no" or a Mock fails closed
            # As above: a refused grant is revoked even if the caller gives up meanwhile.
            revoked = await complete_despite_cancellation(self._revoke(account, token))
            why = (
                "verify_identity refused who signed in"
                if accepted is False
                else "verify_identity returned a "
                f"{type(accepted).__name__}, not True or False, so who signed in is refused"
            )
            raise IdentityError(
                f"account {account!r}: {why}; "
                + (
                    "the grant was revoked and nothing was stored"
                    if revoked
                    else "nothing was stored (the provider did not confirm a revocation)"
                )
            )
        return token

    async def admitted_id_token(self, account: str, token: Token) -> Token:
        """``token`` as ``save_token`` stores it: its id_token checked as at receipt (signature,
        ``iss``, ``aud``, ``azp``, ``exp``, ``iat``), else dropped with a warning."""
        assert token.id_token is not None
        try:
            await self.verify(token.id_token, account=account, at=self.clock.wall())
        except DeviceFlowError as exc:
            log.warning(
                "account %r: save_token drops the id_token, storing the rest: %s", account, exc
            )
            return attrs.evolve(token, id_token=None)
        return token

    async def _identity_of(self, account: str, token: Token, *, at: datetime) -> Identity:
        self.require_provider(account)
        if token.id_token is None:
            raise IdentityError(
                f"account {account!r}: the provider gave no id_token, so verify_identity cannot "
                "tell who signed in; ask for the 'openid' scope"
            )
        return await self.verify(token.id_token, account=account, at=at)

    async def _revoke(self, account: str, token: Token) -> bool:
        revoked = await self.endpoints.revoke(token)
        # The caller gets an IdentityError either way; a grant that outlives the refusal is
        # worth a warning of its own, a revoked one is not.
        if revoked:
            log.info("account %r: the new grant was not accepted; it was revoked", account)
        else:
            log.warning(
                "account %r: the new grant was not accepted and could not be revoked", account
            )
        return revoked

    # --- verification ---------------------------------------------------------------------

    def require_provider(self, account: str) -> None:
        """IdentityError when the provider issues no id_tokens at all."""
        provider = self.endpoints.provider
        if not provider.issues_id_tokens:
            raise IdentityError(
                f"account {account!r}: the {provider.name} provider issues no id_token (it is "
                "not an OpenID Connect provider), so there is no verified identity"
            )

    async def verify(self, id_token: str, *, account: str, at: datetime | None) -> Identity:
        """The identity ``id_token`` names, once its signature, ``iss``, ``aud`` and ``azp``
        have been checked (OpenID Connect Core 3.1.3.7), and ``exp`` and ``iat`` too when it
        was received ``at`` that moment; IdentityError naming ``account`` otherwise."""
        from joserfc import jws
        from joserfc.errors import JoseError

        def refuse(why: str) -> IdentityError:
            return IdentityError(f"account {account!r}: its id_token {why}")

        header, claims = _header(id_token), read_claims(id_token)
        if header is None or claims is None:
            raise refuse("is not a signed JWT (encrypted id_tokens are not supported)")
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            shown = alg[:16] if isinstance(alg, str) else alg
            raise refuse(
                f"is signed with {shown!r}; only {', '.join(ALGORITHMS)} are accepted "
                "(OpenID Connect Core 3.1.3.7 step 7)"
            )
        if kid is not None and not isinstance(kid, str):
            raise refuse("names a key id that is not a string")
        candidates = await self._candidates(account, kid, alg)
        if not candidates:
            which = f"key {kid[:64]!r}" if kid is not None else f"an {alg} key"
            raise refuse(f"is signed with {which}, which the provider's JWKS does not have")
        for candidate in candidates:
            try:
                jws.deserialize_compact(id_token, candidate.key, algorithms=[alg])
                break
            except (JoseError, ValueError):
                continue
        else:
            raise refuse("has a signature that does not verify with the provider's keys")
        issuers = await self._issuers(account)
        if not any(_issuer_matches(issuer, claims) for issuer in issuers):
            iss = claims.get("iss")
            raise refuse(
                f"names the issuer {str(iss)[:200]!r}, not {' or '.join(map(repr, issuers))} "
                "(OpenID Connect Core 3.1.3.7 step 2)"
            )
        client_id = self.endpoints.client_id
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience
        if not isinstance(audiences, list) or client_id not in audiences:
            raise refuse(f"is not for this client {client_id!r} (aud; step 3)")
        azp = claims.get("azp")
        if azp is not None and azp != client_id:  # step 5
            raise refuse(f"was issued to another client than {client_id!r} (azp)")
        if len(audiences) > 1 and azp is None:  # step 4
            raise refuse("is for several audiences and has no azp naming this client")
        if at is not None:
            problem = _receipt_problem(claims, at)
            if problem is not None:
                raise IdentityError(f"account {account!r}: {problem}")
        elif _text(claims, "sub") is None:
            raise refuse("has no sub")
        return Identity.from_claims(claims)

    async def _discovered(self, name: str) -> object:
        """Field ``name`` of the discovery document: the client's, or the one
        ``Provider.discover()`` read (kept in ``Provider.extra``)."""
        metadata = await self.endpoints.ensure_metadata()
        document = self.endpoints.provider.extra.get("metadata")
        found = metadata.extra.get(name)
        if found is None and isinstance(document, Mapping):
            found = document.get(name)
        return found

    async def _issuers(self, account: str) -> tuple[str, ...]:
        provider = self.endpoints.provider
        if provider.id_token_issuers:
            return provider.id_token_issuers
        tenant_document = provider.extra.get(TENANT_METADATA)
        if isinstance(tenant_document, str):
            return (await self._tenant_issuer(account, tenant_document),)
        discovered = await self._discovered("issuer")
        issuer = discovered if isinstance(discovered, str) and discovered else provider.issuer
        if issuer is None:
            raise IdentityError(
                f"account {account!r}: the provider's issuer is unknown, so its id_token "
                "cannot be checked; give Provider(id_token_issuers=...)"
            )
        return (issuer,)

    async def _tenant_issuer(self, account: str, url: str) -> str:
        """The issuer the tenant's own discovery document names: an Entra tenant given by its
        domain name signs as ``{authority}/{tenant id}/v2.0``, and only that issuer is accepted.
        (Entra signs every directory's tokens with the same keys, so filling ``{tenantid}`` from
        the token's own ``tid`` would accept another directory's people.)"""
        if self._issuer is not None:
            return self._issuer
        async with self._lock:
            if self._issuer is None:
                request = Request(kind=RequestKind.DISCOVERY, method="GET", url=url)
                response = await self.endpoints.transport.send(
                    request, timeout=self.endpoints.http_timeout
                )
                document = _json_document(response.body) if response.status == 200 else None
                issuer = document.get("issuer") if document is not None else None
                if not isinstance(issuer, str) or not issuer or "{" in issuer:
                    raise IdentityError(
                        f"account {account!r}: the tenant's discovery document (HTTP "
                        f"{response.status}) names no issuer, so its id_token cannot be "
                        "checked; give Provider(id_token_issuers=...)"
                    )
                self._issuer = issuer
        return self._issuer

    async def _candidates(self, account: str, kid: str | None, alg: str) -> list[_Key]:
        """The provider's keys that may have signed a token with ``kid`` and ``alg``: from the
        cached JWKS, fetched again when it is old or lacks the key. Whatever its outcome, a
        fetch is not tried again for JWKS_REFETCH seconds."""
        fetched = self._fetched_at
        if fetched is None or self.clock.monotonic() - fetched >= JWKS_MAX_AGE:
            await self._fetch(account, self._fetches)
        found = [key for key in self._keys if key.fits(kid, alg)]
        if not found:
            await self._fetch(account, self._fetches)
            found = [key for key in self._keys if key.fits(kid, alg)]
        return found

    async def _fetch(self, account: str, seen: int) -> None:
        """Fetch the JWKS, unless another caller has since ``seen`` fetches or the last try was
        under JWKS_REFETCH seconds ago. When it fails and keys are held, they stay in use (a
        warning says so): a provider's outage must not refuse every identity, nor revoke a
        grant ``admit`` is about to accept."""
        async with self._lock:
            now = self.clock.monotonic()
            if self._fetches != seen:
                return
            if self._tried_at is not None and now - self._tried_at < JWKS_REFETCH:
                log.debug("account %r: the JWKS was fetched moments ago; not again", account)
                return
            # Counted whatever the answer: a failing JWKS is not asked again at once either.
            self._tried_at = now
            self._fetches += 1
            try:
                self._keys = await self._fetched_keys(account)
            except (IdentityError, TransportError) as exc:
                if not self._keys:
                    raise
                log.warning("account %r: %s; the keys fetched before stay in use", account, exc)
                return
            self._fetched_at = now

    async def _fetched_keys(self, account: str) -> list[_Key]:
        uri = await self._jwks_uri(account)
        request = Request(kind=RequestKind.JWKS, method="GET", url=uri)
        response = await self.endpoints.transport.send(request, timeout=self.endpoints.http_timeout)
        if response.status != 200:
            raise IdentityError(
                f"account {account!r}: the provider's JWKS answered HTTP {response.status}"
            )
        try:
            return _import_keys(json.loads(response.body))
        except (ValueError, RecursionError):
            raise IdentityError(
                f"account {account!r}: the provider's JWKS is not a JSON JWK set"
            ) from None

    async def _jwks_uri(self, account: str) -> str:
        provider = self.endpoints.provider
        if provider.jwks_uri is not None:
            return provider.jwks_uri
        uri = await self._discovered("jwks_uri")
        if isinstance(uri, str) and uri:
            return uri
        raise IdentityError(
            f"account {account!r}: the provider publishes no jwks_uri, so its id_token cannot "
            "be checked; give Provider(jwks_uri=...)"
        )
