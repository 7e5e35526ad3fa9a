"""deviceflow: OAuth 2.0 Device Authorization Grant (RFC 8628) for asyncio.

>>> import deviceflow
>>> deviceflow.FlowState.GRANTED.is_terminal
True
"""

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
from ._version import __version__
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
