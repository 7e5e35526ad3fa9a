"""Exit codes, the CLI's own error, and how any error becomes one line on stderr."""

from __future__ import annotations

from deviceflow.exceptions import (
    AccessDeniedError,
    DecryptionError,
    DiscoveryError,
    ExpiredTokenError,
    InsecureEndpointError,
    InvalidClientError,
    LockTimeoutError,
    OAuthError,
    ProtocolError,
    ReauthorizationRequiredError,
    StoreError,
    TransportError,
)

__all__ = [
    "EXIT_CODES",
    "EXIT_CONFIG",
    "EXIT_DENIED",
    "EXIT_ERROR",
    "EXIT_EXPIRED",
    "EXIT_INTERRUPTED",
    "EXIT_NETWORK",
    "EXIT_OK",
    "EXIT_STORE",
    "EXIT_USAGE",
    "CliError",
    "exit_code_for",
    "hint_for",
    "one_line",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DENIED = 3
EXIT_EXPIRED = 4
EXIT_NETWORK = 5
EXIT_CONFIG = 6
EXIT_STORE = 7
EXIT_INTERRUPTED = 130

EXIT_CODES = {
    "ok": EXIT_OK,
    "error": EXIT_ERROR,
    "usage": EXIT_USAGE,
    "denied": EXIT_DENIED,
    "expired": EXIT_EXPIRED,
    "network": EXIT_NETWORK,
    "config": EXIT_CONFIG,
    "store": EXIT_STORE,
    "interrupted": EXIT_INTERRUPTED,
}

# OAuth error codes (RFC 6749 5.2, RFC 8628 3.5) that mean the client is set up wrongly, and
# those that mean the server is having trouble.
_CONFIG_OAUTH_ERRORS = frozenset(
    {"invalid_client", "invalid_scope", "unauthorized_client", "invalid_request"}
)
_SERVER_OAUTH_ERRORS = frozenset({"server_error", "temporarily_unavailable"})


class CliError(Exception):
    """An error the CLI reports itself: a message, an exit code, and a hint for the person."""

    def __init__(self, message: str, *, code: int = EXIT_CONFIG, hint: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.hint = hint


def exit_code_for(error: BaseException) -> int:
    """The documented exit code for an error."""
    if isinstance(error, CliError):
        return error.code
    if isinstance(error, AccessDeniedError):
        return EXIT_DENIED
    if isinstance(error, ExpiredTokenError):
        return EXIT_EXPIRED
    if isinstance(error, (TransportError, ProtocolError)):
        return EXIT_NETWORK
    if isinstance(
        error,
        (DiscoveryError, InsecureEndpointError, InvalidClientError, ReauthorizationRequiredError),
    ):
        return EXIT_CONFIG
    if isinstance(error, StoreError):
        return EXIT_STORE
    if isinstance(error, OAuthError):
        if error.error in _CONFIG_OAUTH_ERRORS:
            return EXIT_CONFIG
        if error.error in _SERVER_OAUTH_ERRORS:
            return EXIT_NETWORK
    return EXIT_ERROR


def hint_for(error: BaseException) -> str | None:
    """What the person can do about ``error``, if anything useful can be said."""
    if isinstance(error, CliError):
        return error.hint
    if isinstance(error, AccessDeniedError):
        return "the request was declined on the sign-in page; run `deviceflow login` to try again"
    if isinstance(error, ExpiredTokenError):
        return "the code was not approved in time; run `deviceflow login` again"
    if isinstance(error, InsecureEndpointError):
        return "use an https URL; plain http is allowed only for loopback hosts"
    if isinstance(error, DiscoveryError):
        return "check --issuer: it must be the issuer exactly as the server names it"
    if isinstance(error, InvalidClientError):
        return "check --client-id, and --client-secret if the provider needs one"
    if isinstance(error, (TransportError, ProtocolError)):
        return "check the network and the issuer URL, then try again"
    if isinstance(error, DecryptionError):
        return (
            "the store key does not match the one the tokens were saved with; set "
            "DEVICEFLOW_KEY or --key-file to that key. Nothing was changed or deleted"
        )
    if isinstance(error, LockTimeoutError):
        return "another deviceflow process holds the lock; try again in a moment"
    if isinstance(error, StoreError):
        return "check --store (DEVICEFLOW_STORE) and its permissions"
    if isinstance(error, OAuthError) and error.error in _CONFIG_OAUTH_ERRORS:
        return "check --client-id and --scope against the app registered with the provider"
    return None


def one_line(error: BaseException) -> str:
    """``error`` as one line of text, with its hint when there is one."""
    text = " ".join(str(error).split()) or type(error).__name__
    hint = hint_for(error)
    if not hint:
        return text
    return f"{text}{' ' if text.endswith(('.', '!', '?')) else '. '}Hint: {hint}."
