"""deviceflow: OAuth 2.0 Device Authorization Grant (RFC 8628) for asyncio.

>>> import deviceflow
>>> deviceflow.FlowState.GRANTED.is_terminal
True

The names below are imported when first used (PEP 562), so ``import deviceflow`` stays cheap for
a command that needs only a few of them (``deviceflow token`` with a cached token imports no
HTTP client at all).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from ._client import DeviceFlowClient, OnCode
    from ._clock import Clock, SystemClock
    from ._identity import Identity
    from ._models import (
        AuthMethod,
        ClientRegistration,
        DeviceCode,
        Dialect,
        FlowEvent,
        FlowState,
        ProviderMetadata,
        Request,
        RequestKind,
        Response,
        Token,
    )
    from ._provider import Provider
    from ._transport import AiohttpTransport, ClientAuth, Transport
    from .exceptions import (
        AccessDeniedError,
        ConflictError,
        DecryptionError,
        DeviceFlowError,
        DiscoveryError,
        ExpiredTokenError,
        IdentityError,
        InsecureEndpointError,
        InvalidClientError,
        InvalidGrantError,
        KeyDerivationError,
        LockTimeoutError,
        OAuthError,
        ProtocolError,
        ReauthorizationRequiredError,
        StoreError,
        TransportError,
    )

__all__ = [
    "AccessDeniedError",
    "AiohttpTransport",
    "AuthMethod",
    "ClientAuth",
    "ClientRegistration",
    "Clock",
    "ConflictError",
    "DecryptionError",
    "DeviceCode",
    "DeviceFlowClient",
    "DeviceFlowError",
    "Dialect",
    "DiscoveryError",
    "ExpiredTokenError",
    "FlowEvent",
    "FlowState",
    "Identity",
    "IdentityError",
    "InsecureEndpointError",
    "InvalidClientError",
    "InvalidGrantError",
    "KeyDerivationError",
    "LockTimeoutError",
    "OAuthError",
    "OnCode",
    "ProtocolError",
    "Provider",
    "ProviderMetadata",
    "ReauthorizationRequiredError",
    "Request",
    "RequestKind",
    "Response",
    "StoreError",
    "SystemClock",
    "Token",
    "Transport",
    "TransportError",
    "__version__",
]

#: Where each public name lives: the module is imported on first use.
_HOMES = {
    "DeviceFlowClient": "._client",
    "OnCode": "._client",
    "Clock": "._clock",
    "SystemClock": "._clock",
    "Identity": "._identity",
    "Provider": "._provider",
    "AiohttpTransport": "._transport",
    "ClientAuth": "._transport",
    "Transport": "._transport",
    **dict.fromkeys(
        (
            "AuthMethod",
            "ClientRegistration",
            "DeviceCode",
            "Dialect",
            "FlowEvent",
            "FlowState",
            "ProviderMetadata",
            "Request",
            "RequestKind",
            "Response",
            "Token",
        ),
        "._models",
    ),
    **dict.fromkeys(
        (
            "AccessDeniedError",
            "ConflictError",
            "DecryptionError",
            "DeviceFlowError",
            "DiscoveryError",
            "ExpiredTokenError",
            "IdentityError",
            "InsecureEndpointError",
            "InvalidClientError",
            "InvalidGrantError",
            "KeyDerivationError",
            "LockTimeoutError",
            "OAuthError",
            "ProtocolError",
            "ReauthorizationRequiredError",
            "StoreError",
            "TransportError",
        ),
        ".exceptions",
    ),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
