"""The test server's id_tokens (OpenID Connect Core 2): signed with a key made when first
needed, published as a JWKS (RFC 7517) at the ``jwks_uri`` of the discovery document.

The server signs with joserfc, independently of how the client verifies, and shares no code
with the client's checks. Tests read and change what the server issues through
:attr:`AuthorizationServer.id_tokens <deviceflow.testing.AuthorizationServer.id_tokens>`:
the claims, the lifetime, the signing key (rotation), and :meth:`IdTokens.mint` makes tokens
that are wrong on purpose.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from deviceflow._clock import Clock

if TYPE_CHECKING:
    from joserfc.jwk import ECKey, RSAKey

__all__ = ["IdTokens"]

Algorithm = Literal["RS256", "ES256"]


def _new_key(algorithm: Algorithm) -> RSAKey | ECKey:
    from joserfc.jwk import ECKey, KeyParameters, RSAKey

    parameters: KeyParameters = {"kid": secrets.token_urlsafe(8), "use": "sig", "alg": algorithm}
    key: RSAKey | ECKey
    if algorithm == "RS256":
        key = RSAKey.generate_key(2048, parameters=parameters, private=True)
    else:
        key = ECKey.generate_key("P-256", parameters=parameters, private=True)
    return key


class IdTokens:
    """The id_tokens of one test server, and the keys they are signed with.

    - ``claims``: claims every id_token carries besides ``iss``, ``aud``, ``iat`` and ``exp``
      (by default ``sub`` "user", ``name`` "alice", ``email`` alice@example.com); a test that
      sets ``claims["sub"] = "mallory"`` makes the next id_tokens (refreshes too) speak for
      someone else.
    - ``lifetime``: seconds from ``iat`` to ``exp`` (negative: expired when issued).
    - ``on_refresh``: whether refresh answers carry a new id_token (OpenID Connect Core 12.2
      allows either).
    - :meth:`rotate` signs with a new key from then on; :meth:`jwks` is what ``jwks_uri`` serves.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        issuer: Callable[[], str],
        algorithm: Algorithm = "ES256",
        claims: Mapping[str, Any] | None = None,
        lifetime: int = 300,
    ) -> None:
        if algorithm not in ("RS256", "ES256"):
            raise ValueError("id_token_algorithm must be 'RS256' or 'ES256'")
        self._clock = clock
        self._issuer = issuer
        self.algorithm: Algorithm = algorithm
        self.claims: dict[str, Any] = {
            "sub": "user",
            "name": "alice",
            "email": "alice@example.com",
            "email_verified": True,
            **(claims or {}),
        }
        self.lifetime = lifetime
        self.on_refresh = True
        self._keys: list[RSAKey | ECKey] = []  # published; the first one signs

    def _signing_key(self) -> RSAKey | ECKey:
        if not self._keys:
            self._keys.append(_new_key(self.algorithm))
        return self._keys[0]

    @property
    def kid(self) -> str:
        """The key id of the key that signs now."""
        return str(self._signing_key().kid)

    def rotate(self, *, keep_old: bool = True) -> str:
        """Sign with a new key from now on and return its key id. The old keys stay in the
        JWKS (tokens signed with them still verify) unless ``keep_old`` is false."""
        key = _new_key(self.algorithm)
        self._keys = [key, *(self._keys if keep_old else [])]
        return str(key.kid)

    def jwks(self) -> dict[str, Any]:
        """The JWK set of the public keys (RFC 7517 5)."""
        self._signing_key()
        return {"keys": [key.as_dict(private=False) for key in self._keys]}

    def issue(self, client_id: str) -> str:
        """An id_token for ``client_id``, as the token endpoint hands out."""
        return self.mint(client_id)

    def mint(
        self,
        client_id: str,
        *,
        kid: str | None = None,
        unpublished_key: bool = False,
        **claims: Any,
    ) -> str:
        """An id_token for ``client_id`` with ``claims`` overriding the usual ones (``aud=``,
        ``exp=``, ``iss=``, ...; a value of None removes the claim).

        ``kid`` names another key id in the header (the token is still signed with the
        current key; ``kid=""`` leaves the key id out); ``unpublished_key`` signs with a key
        the JWKS does not have, under the current key's id (a bad signature).
        """
        from joserfc import jws

        now = int(self._clock.wall().timestamp())
        body: dict[str, Any] = {
            "iss": self._issuer(),
            "aud": client_id,
            "iat": now,
            "exp": now + self.lifetime,
            **self.claims,
        }
        body.update(claims)
        body = {name: value for name, value in body.items() if value is not None}
        key = self._signing_key()
        header = {"alg": self.algorithm, "typ": "JWT", "kid": key.kid if kid is None else kid}
        if not header["kid"]:
            del header["kid"]
        if unpublished_key:
            key = _new_key(self.algorithm)
        payload = json.dumps(body, separators=(",", ":")).encode()
        return jws.serialize_compact(header, payload, key, algorithms=[self.algorithm])
