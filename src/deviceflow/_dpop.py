"""DPoP (RFC 9449): the key pair an account's tokens are bound to, and the proofs made with it.

- :class:`DPoPKey` is one account's key pair. It is generated on the account's first device
  flow, travels with its tokens (``Token.dpop_key``) and is kept in the token record, so every
  process sharing the store signs with the same key; a refresh keeps it (the refresh token of a
  public client is bound to it, RFC 9449 5).
- :class:`DPoP` makes the proofs of one client: one per token request and per resource request,
  each with a fresh ``jti``, and remembers the latest ``DPoP-Nonce`` of each server origin
  (RFC 9449 8, 9). A token request the server answers with ``use_dpop_nonce`` is sent once more
  with the nonce it gave.

JWS and JWK work (signing, RFC 7638 thumbprints) is joserfc's, imported when DPoP is first used.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import secrets
import urllib.parse
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs

from ._models import COMPACT_JSON, Request, Response, Token
from .exceptions import ProtocolError

if TYPE_CHECKING:
    from joserfc.jwk import ECKey, OKPKey, RSAKey

__all__ = [
    "ALGORITHMS",
    "DPoP",
    "DPoPKey",
    "asks_for_nonce",
    "check_saved_token",
    "check_token_type",
    "choose_algorithm",
    "htu",
    "new_key",
]

#: The signing algorithms deviceflow can make keys for, in order of preference (RFC 9449 5.1:
#: ES256 first, the one every DPoP server accepts). "EdDSA" is the older name of Ed25519.
ALGORITHMS = ("ES256", "Ed25519", "EdDSA", "PS256", "RS256", "ES384", "ES512")
#: The ports an htu leaves out (RFC 3986 6.2.3).
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: How many server origins' nonces are remembered (a client talks to a handful).
_MAX_NONCES = 256

# RFC 9449 7.1 and 9: WWW-Authenticate: DPoP error="use_dpop_nonce", ...
_DPOP_CHALLENGE = re.compile(r"^\s*dpop\b", re.IGNORECASE)
_USE_NONCE = re.compile(r"""\berror\s*=\s*"?use_dpop_nonce"?""", re.IGNORECASE)
#: RFC 9449 8.1: nonce = 1*NQCHAR, the printable ASCII characters but the double quote.
_NONCE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def ath(access_token: str) -> str:
    """RFC 9449 4.2: the base64url SHA-256 of the access token a resource proof carries."""
    return _b64url(hashlib.sha256(access_token.encode("ascii")).digest())


def htu(url: str) -> str:
    """RFC 9449 4.2: the URL a proof names: scheme, host, port and path, without query and
    fragment, and without userinfo (credentials in a URL never go into a signed JWT that the
    server may log). Normalised as RFC 9449 4.3 compares (RFC 3986 6.2.2, 6.2.3): scheme and
    host in lower case, the scheme's default port left out, an empty path as "/"."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""  # lower case, without userinfo and IPv6 brackets
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    return urllib.parse.urlunsplit((scheme, netloc, parts.path or "/", "", ""))


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def choose_algorithm(supported: Any) -> str:
    """The algorithm for a new key: ES256 when the server lists it (or lists nothing), else the
    first of ours that it lists; ProtocolError when it lists none of ours."""
    if not isinstance(supported, list) or not supported:
        return ALGORITHMS[0]  # RFC 9449 5.1: the metadata is optional
    for alg in ALGORITHMS:
        if alg in supported:
            return alg
    offered = ", ".join(str(a)[:16] for a in supported[:8])
    raise ProtocolError(
        f"the server's DPoP algorithms ({offered}) include none deviceflow can sign with "
        f"({', '.join(ALGORITHMS)})"
    )


def _generate(alg: str) -> ECKey | OKPKey | RSAKey:
    from joserfc.jwk import ECKey, OKPKey, RSAKey

    key: ECKey | OKPKey | RSAKey
    if alg.startswith("ES"):
        key = ECKey.generate_key({"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}[alg])
    elif alg in ("Ed25519", "EdDSA"):
        key = OKPKey.generate_key("Ed25519")
    else:
        key = RSAKey.generate_key(2048)
    return key


#: The curve each algorithm signs with (RFC 7518 3.4, RFC 8037); RS256 and PS256 take any RSA
#: key, and the record's algorithm already chose the key type read.
_CURVES = {
    "ES256": "P-256",
    "ES384": "P-384",
    "ES512": "P-521",
    "Ed25519": "Ed25519",
    "EdDSA": "Ed25519",
}


def _fits(key: ECKey | OKPKey | RSAKey, alg: str) -> bool:
    """True when ``key`` is on ``alg``'s curve (an RSA algorithm has none). Checked when a
    stored key is read, so that a damaged record is a typed error there, not a failure of the
    first proof."""
    curve = _CURVES.get(alg)
    return curve is None or key.as_dict(private=False).get("crv") == curve


class DPoPKey:
    """One account's DPoP key pair and the algorithm it signs with.

    ``repr()`` shows the algorithm and the public key's RFC 7638 thumbprint (``jkt``, what a
    token's ``cnf`` names), never the private key. Keys are equal when their thumbprints are.
    """

    __slots__ = ("_key", "_public", "_record", "alg", "jkt")

    def __init__(self, key: ECKey | OKPKey | RSAKey, alg: str) -> None:
        self._key = key
        self.alg = alg
        self._public: dict[str, Any] = dict(key.as_dict(private=False))
        self.jkt: str = key.thumbprint()
        self._record: str | None = None

    @classmethod
    def generate(cls, alg: str = "ES256") -> DPoPKey:
        """A new key pair for ``alg`` (one of :data:`ALGORITHMS`)."""
        if alg not in ALGORITHMS:
            raise ValueError(f"unsupported DPoP algorithm {alg!r}; use one of {ALGORITHMS}")
        return cls(_generate(alg), alg)

    @classmethod
    def from_record(cls, data: Any) -> DPoPKey:
        """The key kept in a token record (see :meth:`record`); ProtocolError when damaged."""
        from joserfc.errors import JoseError
        from joserfc.jwk import ECKey, OKPKey, RSAKey

        alg = data.get("alg") if isinstance(data, dict) else None
        jwk = data.get("jwk") if isinstance(data, dict) else None
        if alg not in ALGORITHMS or not isinstance(jwk, dict):
            raise ProtocolError("the stored DPoP key has an unknown format")
        kind = ECKey if alg.startswith("ES") else OKPKey if "Ed" in alg else RSAKey
        try:
            key = kind.import_key(jwk)
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise ProtocolError(f"the stored DPoP key is damaged ({type(exc).__name__})") from None
        if not key.is_private:
            raise ProtocolError("the stored DPoP key has no private part")
        if not _fits(key, alg):
            raise ProtocolError(f"the stored DPoP key does not fit its algorithm {alg!r}")
        return cls(key, alg)

    def record(self) -> str:
        """The key, private part included, as compact JSON for the token record (which the
        persistent stores encrypt); written with every refresh, so made once."""
        if self._record is None:
            jwk = dict(self._key.as_dict(private=True))
            self._record = COMPACT_JSON.encode({"alg": self.alg, "jwk": jwk})
        return self._record

    def proof(
        self,
        method: str,
        url: str,
        *,
        now: datetime,
        nonce: str | None = None,
        access_token: str | None = None,
    ) -> str:
        """A DPoP proof JWT (RFC 9449 4.2) for one request; with ``access_token`` (a resource
        request) it carries the token's hash, ``ath``."""
        from joserfc import jws

        claims: dict[str, Any] = {
            "jti": secrets.token_urlsafe(18),
            "htm": method.upper(),
            "htu": htu(url),
            "iat": int(now.timestamp()),
        }
        if nonce is not None:
            claims["nonce"] = nonce
        if access_token is not None:
            claims["ath"] = ath(access_token)
        header = {"typ": "dpop+jwt", "alg": self.alg, "jwk": self._public}
        payload = json.dumps(claims, separators=(",", ":")).encode()
        with warnings.catch_warnings():
            # joserfc warns that "EdDSA" is superseded by "Ed25519" (RFC 9864); a server that
            # lists only the older name still gets it.
            warnings.simplefilter("ignore")
            return jws.serialize_compact(header, payload, self._key, algorithms=[self.alg])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DPoPKey):
            return NotImplemented
        return (self.alg, self.jkt) == (other.alg, other.jkt)

    def __hash__(self) -> int:
        return hash((self.alg, self.jkt))

    def __repr__(self) -> str:
        return f"DPoPKey(alg={self.alg!r}, jkt={self.jkt!r})"


def asks_for_nonce(status: int, challenges: Sequence[str]) -> bool:
    """True for a resource server's request for a (new) nonce (RFC 9449 9): a 401 with
    ``WWW-Authenticate: DPoP error="use_dpop_nonce"``."""
    return status == 401 and any(
        _DPOP_CHALLENGE.match(c) is not None and _USE_NONCE.search(c) is not None
        for c in challenges
    )


def _token_endpoint_asks_for_nonce(response: Response) -> bool:
    """RFC 9449 8: a 400 (some servers: 401) whose error is ``use_dpop_nonce``."""
    if response.status not in (400, 401) or not response.header("dpop-nonce"):
        return False
    with contextlib.suppress(ValueError, RecursionError):
        body = json.loads(response.body)
        return isinstance(body, dict) and body.get("error") == "use_dpop_nonce"
    return False


def check_token_type(
    token: Token, key: DPoPKey | None, account: str, *, previous: Token | None = None
) -> Token:
    """``token`` bound to ``key``, when the server issued the kind of token asked for: a DPoP
    token with a proof, a Bearer token without one, and on a refresh (``previous``) a token
    of the grant's type. ProtocolError otherwise (RFC 9449 5: a client asking for DPoP must
    not use a token the server did not bind; a DPoP grant stays DPoP)."""
    is_dpop = token.token_type.lower() == "dpop"
    if previous is not None and previous.token_type.lower() != token.token_type.lower():
        raise ProtocolError(
            f"account {account!r}: the refresh answered a token of type "
            f"{token.token_type[:32]!r} for a grant of {previous.token_type[:32]!r} tokens; "
            "it is not used"
        )
    if key is not None and not is_dpop:
        raise ProtocolError(
            f"account {account!r}: DPoP was asked for but the server issued a "
            f"{token.token_type[:32]!r} token; it is not used (does the server support DPoP?)"
        )
    if key is None and is_dpop:
        raise ProtocolError(
            f"account {account!r}: the server issued a DPoP token where none was asked for; "
            "it is not used (pass dpop=True to DeviceFlowClient)"
        )
    return token if key is None else attrs.evolve(token, dpop_key=key)


def check_saved_token(token: Token, account: str, *, dpop: bool) -> None:
    """ProtocolError for a token ``save_token`` must not store: a token of a type the client
    cannot use (neither Bearer nor DPoP), a DPoP token without the key it is bound to (it
    cannot make a proof), a key on a token of another type, and in a ``dpop=True`` client any
    token but a DPoP one (RFC 9449 5: a client asking for DPoP uses no token the server did not
    bind, whoever hands it over)."""
    is_dpop = token.token_type.lower() == "dpop"
    kind = repr(token.token_type[:32])
    if is_dpop and token.dpop_key is None:
        raise ProtocolError(
            f"account {account!r}: the DPoP token to save has no key (Token.dpop_key), so it "
            "could make no proof; it is not stored; sign the account in with a device flow"
        )
    if not is_dpop and token.dpop_key is not None:
        raise ProtocolError(
            f"account {account!r}: the {kind} token to save has a DPoP key; only a DPoP token "
            "is bound to one; it is not stored"
        )
    if dpop and not is_dpop:
        raise ProtocolError(
            f"account {account!r}: dpop=True, but the token to save is a {kind} token, not "
            "bound to a key; it is not stored (sign the account in with a device flow for a "
            "DPoP token)"
        )
    if token.token_type.lower() not in ("bearer", "dpop"):
        raise ProtocolError(
            f"account {account!r}: the token to save is of type {kind}; only Bearer and DPoP "
            "tokens can be used (RFC 6749 7.1); it is not stored"
        )


def new_key(metadata_extra: Mapping[str, Any] | None) -> DPoPKey:
    """A key for a new grant, of an algorithm the server lists in its metadata."""
    supported = (metadata_extra or {}).get("dpop_signing_alg_values_supported")
    return DPoPKey.generate(choose_algorithm(supported))


class DPoP:
    """The DPoP side of one client: proofs for its requests and the nonces servers gave."""

    def __init__(self, wall: Callable[[], datetime]) -> None:
        self._wall = wall
        self._nonces: dict[str, str] = {}  # server origin -> its latest DPoP-Nonce

    def remember(self, url: str, nonce: str | None) -> None:
        """Keep ``nonce`` as the latest of ``url``'s server (a malformed one is ignored)."""
        if nonce is None or len(nonce) > 1024 or _NONCE.fullmatch(nonce) is None:
            return
        origin = _origin(url)
        if origin not in self._nonces and len(self._nonces) >= _MAX_NONCES:
            del self._nonces[next(iter(self._nonces))]
        self._nonces[origin] = nonce

    def proof(self, key: DPoPKey, method: str, url: str, *, access_token: str | None = None) -> str:
        """A proof for ``method url`` with the nonce ``url``'s server gave last, if any."""
        return key.proof(
            method,
            url,
            now=self._wall(),
            nonce=self._nonces.get(_origin(url)),
            access_token=access_token,
        )

    def resource_headers(self, token: Token, method: str, url: str) -> dict[str, str]:
        """The headers of a resource request with ``token`` (RFC 9449 7.1)."""
        key = token.dpop_key
        if key is None:
            return {"Authorization": token.authorization}
        return {
            "Authorization": token.authorization,
            "DPoP": self.proof(key, method, url, access_token=token.access_token),
        }

    async def exchange(
        self,
        request: Request,
        key: DPoPKey,
        send: Callable[[Request], Awaitable[Response]],
    ) -> Response:
        """Send a token request with a proof; once more with a new proof when the server asks
        for a nonce (RFC 9449 8)."""
        for attempt in (1, 2):
            proof = self.proof(key, request.method, request.url)
            response = await send(attrs.evolve(request, headers={**request.headers, "DPoP": proof}))
            self.remember(request.url, response.header("dpop-nonce"))
            if attempt == 2 or not _token_endpoint_asks_for_nonce(response):
                return response
        raise AssertionError("unreachable")  # pragma: no cover
