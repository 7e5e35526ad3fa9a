"""URL rules: which endpoints and links deviceflow accepts, and where discovery documents live.

Pure functions, no I/O: the transport, the parsers, the CLI and the aiohttp middleware all judge
URLs by these.
"""

from __future__ import annotations

import ipaddress
import urllib.parse

from .exceptions import InsecureEndpointError, ProtocolError

__all__ = ["discovery_urls", "displayable", "is_loopback_host", "require_secure_url"]


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` itself and literal loopback IP addresses (127.0.0.0/8, ::1).

    No other name counts, ``*.localhost`` included: whether a name reaches this machine is the
    resolver's answer, and this module does no I/O. RFC 6761 6.3 asks resolvers to keep
    ``.localhost`` names local, but many send them to DNS, where anyone may answer them.
    """
    if not host:
        return False
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_secure_url(url: object, what: str) -> str:
    """Return ``url`` if it is https (or http to a loopback host); raise otherwise.

    Raises InsecureEndpointError for plain http elsewhere and ProtocolError for anything that is
    not an absolute http(s) URL (``javascript:``, relative paths, ...).
    """
    if not isinstance(url, str) or not url or len(url) > 4096:
        raise ProtocolError(f"{what} is not a usable URL")
    # Not printable: C0 and C1 controls, DEL, bidi and zero-width format characters, Unicode
    # spaces. A link is shown to a person: an escape sequence or a right-to-left override in it
    # could make the terminal show another link than the one opened.
    if " " in url or not url.isprintable():
        raise ProtocolError(f"{what} contains whitespace, control or format characters")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        host = parts.hostname
    except ValueError:
        host = None
    if scheme not in ("https", "http") or not host:
        raise ProtocolError(f"{what} must be an absolute https URL, got scheme {scheme!r}")
    if scheme == "http" and not is_loopback_host(host):
        raise InsecureEndpointError(
            f"{what} {url!r} is plain http; only https is allowed (http only for loopback hosts)"
        )
    return url


def displayable(text: str) -> str:
    """``text`` with every character that is not printable replaced (tabs and newlines by spaces).

    For the server's free text that applications and the CLI show to people (``message``,
    ``error_description``, ``error_uri``, ``scope``): escape sequences in it could rewrite the
    terminal (say, overwrite the verification link shown above it); bidi overrides could
    reverse what is read.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else " " if c in "\t\n\r" else "\ufffd" for c in text)


def discovery_urls(issuer: str) -> list[str]:
    """Where an issuer's metadata may live, in the order to try them.

    OpenID Connect Discovery 4: ``/.well-known/openid-configuration`` appended to the issuer.
    RFC 8414 3: ``/.well-known/oauth-authorization-server`` inserted before the issuer's path.
    """
    base = issuer.rstrip("/")
    parts = urllib.parse.urlsplit(base)
    rfc8414 = urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, "/.well-known/oauth-authorization-server" + parts.path, "", "")
    )
    return [base + "/.well-known/openid-configuration", rfc8414]
