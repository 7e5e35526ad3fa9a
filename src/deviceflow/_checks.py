"""Checks of the values callers pass to constructors, shared by Provider, the client and stores.

Every check names the argument it refused and raises TypeError (wrong kind of value) or
ValueError (right kind, unusable value), at construction: a bad value must not travel into a
flow and surface there as an internal error. Messages never repeat the value itself, because
some of these arguments are secrets (a client secret).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping

__all__ = [
    "AUTH_METHODS",
    "auth_method",
    "check_client_args",
    "flag",
    "non_negative_finite",
    "optional_printable_text",
    "path_arg",
    "positive_finite",
    "printable_text",
    "scope_text",
    "string_map",
]

#: The client authentication methods a client may name (RFC 6749 2.3.1; "none" for public).
AUTH_METHODS = frozenset({"none", "client_secret_post", "client_secret_basic"})

# RFC 6749 3.3: scope-token = 1*NQCHAR; NQCHAR = %x21 / %x23-5B / %x5D-7E.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_SCOPE_TEXT = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")


def _kind(value: object) -> str:
    return type(value).__name__


def _number(name: str, value: object) -> float:
    # bool is an int, but True seconds is a mistake, not a duration.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {_kind(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number of seconds")
    return number


def positive_finite(name: str, value: object) -> float:
    """``value`` as a float if it is a finite number above zero; TypeError or ValueError else.

    >>> positive_finite("http_timeout", 20)
    20.0
    """
    number = _number(name, value)
    if number <= 0:
        raise ValueError(f"{name} must be more than zero seconds")
    return number


def non_negative_finite(name: str, value: object) -> float:
    """``value`` as a float if it is a finite number, zero or more; TypeError or ValueError else."""
    number = _number(name, value)
    if number < 0:
        raise ValueError(f"{name} must be zero or more seconds")
    return number


def printable_text(name: str, value: object) -> str:
    """``value`` if it is a string that is not blank and holds only printable characters.

    Refused: anything but a str (TypeError); an empty or all-space string, and control, format
    or separator characters other than the space (NUL, CR, LF, bidi overrides, ...) (ValueError).

    >>> printable_text("client_id", "dvls")
    'dvls'
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {_kind(value)}")
    if not value.strip():
        raise ValueError(f"{name} must not be empty or blank")
    if not value.isprintable():
        raise ValueError(f"{name} contains control, format or line-break characters")
    return value


def optional_printable_text(name: str, value: object) -> str | None:
    """None, or ``value`` checked by :func:`printable_text`."""
    return None if value is None else printable_text(name, value)


def flag(name: str, value: object) -> bool:
    """``value`` if it is True or False (not merely truthy); TypeError else."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {_kind(value)}")
    return value


def scope_text(name: str, value: object) -> str | None:
    """A scope as the space-separated string RFC 6749 3.3 sends, or None for no scope given.

    Takes a string (``"openid profile"``) or an iterable of scope names
    (``["openid", "profile"]``); either way each name must be RFC 6749 scope-token characters
    (printable ASCII but space, ``"`` and ``\\``). Runs of spaces collapse to one; an empty
    string or iterable gives ``""`` (explicitly no scope).

    >>> scope_text("scope", ["openid", "offline_access"])
    'openid offline_access'
    >>> scope_text("scope", "  openid   profile ")
    'openid profile'
    """
    if value is None:
        return None
    if isinstance(value, str):
        if _SCOPE_TEXT.fullmatch(value) is None:
            raise ValueError(
                f"{name} may hold only printable ASCII other than '\"' and '\\', "
                "with scopes separated by spaces (RFC 6749 3.3)"
            )
        return " ".join(value.split())
    if isinstance(value, (bytes, bytearray, memoryview)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a string or an iterable of strings, not {_kind(value)}")
    names: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"{name} must hold strings only, not {_kind(item)}")
        if _SCOPE_TOKEN.fullmatch(item) is None:
            raise ValueError(
                f"each scope in {name} must be a non-empty run of printable ASCII without "
                "spaces, '\"' or '\\' (RFC 6749 3.3)"
            )
        names.append(item)
    return " ".join(names)


def string_map(name: str, value: object) -> dict[str, str]:
    """A copy of ``value`` if it maps printable, non-blank strings to such strings."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping of strings to strings, not {_kind(value)}")
    checked: dict[str, str] = {}
    for key, item in value.items():
        checked[printable_text(f"a key of {name}", key)] = printable_text(f"{name}[{key!r}]", item)
    return checked


def path_arg(name: str, value: object) -> str | os.PathLike[str]:
    """``value`` if it is a str or an os.PathLike naming a path: not empty, no NUL."""
    if isinstance(value, os.PathLike):
        text = os.fspath(value)
    elif isinstance(value, str):
        text = value
    else:
        raise TypeError(f"{name} must be a str or a path, not {_kind(value)}")
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a text path, not {_kind(text)}")
    if not text.strip():
        raise ValueError(f"{name} must not be empty (it would mean the current folder)")
    if "\x00" in text:
        raise ValueError(f"{name} contains a NUL character")
    return value


def auth_method(name: str, value: object) -> str | None:
    """None, or one of :data:`AUTH_METHODS`."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {_kind(value)}")
    if value not in AUTH_METHODS:
        raise ValueError(f"{name} must be one of {', '.join(sorted(AUTH_METHODS))}")
    return value


def check_client_args(
    *,
    client_id: object,
    client_secret: object,
    client_auth: object,
    scope: object,
    on_code: object,
    refresh_skew: object,
    http_timeout: object,
    lock_ttl: object,
    lock_wait: object,
    poll_margin: object,
) -> str | None:
    """Check DeviceFlowClient's constructor arguments; return ``scope`` normalised.

    Raises TypeError or ValueError naming the first argument that is refused:

    - ``client_id``: a non-blank printable string; ``client_secret``: None or one;
    - ``client_auth``: None, ``"none"``, ``"client_secret_post"`` or ``"client_secret_basic"``;
    - ``scope``: None, a string, or an iterable of strings (see :func:`scope_text`);
    - ``on_code``: None or a callable;
    - ``http_timeout`` and ``lock_ttl``: finite numbers above zero, with ``http_timeout``
      below ``lock_ttl`` (a refresh must end while its lock is held);
    - ``refresh_skew``, ``lock_wait`` and ``poll_margin``: finite numbers, zero or more.

    >>> check_client_args(client_id="dvls", client_secret=None, client_auth=None,
    ...     scope=["openid", "offline_access"], on_code=None, refresh_skew=60.0,
    ...     http_timeout=20.0, lock_ttl=30.0, lock_wait=60.0, poll_margin=0.1)
    'openid offline_access'
    """
    printable_text("client_id", client_id)
    optional_printable_text("client_secret", client_secret)
    auth_method("client_auth", client_auth)
    normalised = scope_text("scope", scope)
    if on_code is not None and not callable(on_code):
        raise TypeError(f"on_code must be a callable or None, not {_kind(on_code)}")
    non_negative_finite("refresh_skew", refresh_skew)
    timeout = positive_finite("http_timeout", http_timeout)
    ttl = positive_finite("lock_ttl", lock_ttl)
    non_negative_finite("lock_wait", lock_wait)
    non_negative_finite("poll_margin", poll_margin)
    if timeout >= ttl:
        raise ValueError("http_timeout must be shorter than lock_ttl (see get_token docs)")
    return normalised
