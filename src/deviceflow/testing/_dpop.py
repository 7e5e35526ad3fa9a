"""The test server's side of DPoP (RFC 9449): it checks proofs and hands out nonces.

Like the rest of the server it shares no protocol code with the client: a proof is checked here
from the RFC's rules, with joserfc for the JWS signature and the RFC 7638 thumbprint.

- RFC 9449 4.3: one ``DPoP`` header; a JWS with ``typ`` ``dpop+jwt``, an asymmetric ``alg``
  the server lists, a public ``jwk`` that verifies the signature; claims ``jti``, ``htm``
  (the request's method), ``htu`` (its URL without query and fragment), ``iat`` within
  :data:`IAT_WINDOW` of now; a ``jti`` not seen before within that window; at the resource,
  ``ath`` (the hash of the access token presented).
- RFC 9449 8 and 9: with ``require_nonce``, a proof must carry the server's current nonce; one
  without it gets ``use_dpop_nonce`` and the nonce in a ``DPoP-Nonce`` header.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import urllib.parse
import warnings
from collections.abc import Sequence
from typing import Any

from deviceflow._clock import Clock

__all__ = ["IAT_WINDOW", "ProofChecker", "ProofRefused"]

#: How far a proof's ``iat`` may lie from the server's clock, either way (seconds).
IAT_WINDOW = 60.0
#: The algorithms the server accepts unless told otherwise.
DEFAULT_ALGORITHMS = ("ES256", "Ed25519", "EdDSA", "PS256", "RS256", "ES384")
_MAX_PROOF = 4096  # an RSA-4096 proof is about 1.5 KB


class ProofRefused(Exception):
    """A proof the server refuses: ``error`` is ``invalid_dpop_proof`` or ``use_dpop_nonce``."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description


def _normal_url(url: str) -> tuple[str, str, int | None, str]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port, parts.path or "/"


def token_hash(access_token: str) -> str:
    """RFC 9449 4.2 ``ath``: base64url of the SHA-256 of the access token."""
    digest = hashlib.sha256(access_token.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class ProofChecker:
    """Checks DPoP proofs for one server and keeps its nonce and its ``jti`` replay cache."""

    def __init__(
        self, *, clock: Clock, algorithms: Sequence[str], require_nonce: bool = False
    ) -> None:
        self._clock = clock
        self.algorithms = tuple(algorithms)
        self.require_nonce = require_nonce
        self.nonce = secrets.token_urlsafe(16)
        self._seen: dict[str, float] = {}  # jti -> wall time after which it may be forgotten

    def rotate_nonce(self) -> str:
        """A new nonce: proofs with the old one get ``use_dpop_nonce`` from now on."""
        self.nonce = secrets.token_urlsafe(16)
        return self.nonce

    def check(
        self,
        values: Sequence[str],
        method: str,
        url: str,
        *,
        access_token: str | None = None,
    ) -> str:
        """The RFC 7638 thumbprint of the key that signed the request's proof (``values``, the
        request's ``DPoP`` headers); ProofRefused when the proof does not hold."""
        if len(values) != 1:
            raise ProofRefused("invalid_dpop_proof", "exactly one DPoP header is required")
        proof = values[0]
        if len(proof) > _MAX_PROOF:
            raise ProofRefused("invalid_dpop_proof", "the proof is too large")
        claims, jkt = self._verified(proof)
        self._check_claims(claims, method, url, access_token)
        return jkt

    def _verified(self, proof: str) -> tuple[dict[str, Any], str]:
        from joserfc import jws
        from joserfc.errors import JoseError
        from joserfc.jwk import ECKey, OKPKey, RSAKey

        try:
            extracted = jws.extract_compact(proof.encode("ascii"))
            header = dict(extracted.headers())
        except (JoseError, ValueError, UnicodeError):
            raise ProofRefused("invalid_dpop_proof", "the proof is not a compact JWS") from None
        if header.get("typ") != "dpop+jwt":
            raise ProofRefused("invalid_dpop_proof", "the proof's typ is not dpop+jwt")
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise ProofRefused("invalid_dpop_proof", f"the proof's alg {alg!r} is not accepted")
        jwk = header.get("jwk")
        if not isinstance(jwk, dict) or "d" in jwk:
            raise ProofRefused("invalid_dpop_proof", "the proof's jwk is not a public key")
        kinds: dict[str, Any] = {"EC": ECKey, "OKP": OKPKey, "RSA": RSAKey}
        kind = kinds.get(jwk.get("kty"))  # type: ignore[arg-type]
        try:
            if kind is None:
                raise ValueError("unknown kty")
            key = kind.import_key(jwk)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "EdDSA" is deprecated (RFC 9864), still valid
                verified = jws.deserialize_compact(proof, key, algorithms=[alg])
            claims = json.loads(verified.payload)
        except (JoseError, ValueError, TypeError, KeyError):
            raise ProofRefused("invalid_dpop_proof", "the proof's signature is bad") from None
        if not isinstance(claims, dict):
            raise ProofRefused("invalid_dpop_proof", "the proof's claims are not an object")
        return claims, str(key.thumbprint())

    def _check_claims(
        self, claims: dict[str, Any], method: str, url: str, access_token: str | None
    ) -> None:
        jti, htm, htu, iat = (claims.get(n) for n in ("jti", "htm", "htu", "iat"))
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise ProofRefused("invalid_dpop_proof", "the proof has no jti")
        if htm != method:
            raise ProofRefused("invalid_dpop_proof", "the proof's htm is not this method")
        if not isinstance(htu, str) or _normal_url(htu) != _normal_url(url):
            raise ProofRefused("invalid_dpop_proof", "the proof's htu is not this URL")
        now = self._clock.wall().timestamp()
        if isinstance(iat, bool) or not isinstance(iat, (int, float)):
            raise ProofRefused("invalid_dpop_proof", "the proof has no iat")
        if abs(now - iat) > IAT_WINDOW:
            raise ProofRefused("invalid_dpop_proof", "the proof's iat is too far from now")
        if access_token is not None and claims.get("ath") != token_hash(access_token):
            raise ProofRefused("invalid_dpop_proof", "the proof's ath is not this token's hash")
        if self.require_nonce and claims.get("nonce") != self.nonce:
            raise ProofRefused("use_dpop_nonce", "use the nonce in the DPoP-Nonce header")
        # RFC 9449 11.1: a jti is accepted once while its proof's iat is inside the window.
        self._seen = {k: until for k, until in self._seen.items() if until > now}
        if jti in self._seen:
            raise ProofRefused("invalid_dpop_proof", "the proof's jti was used before")
        self._seen[jti] = now + 2 * IAT_WINDOW
