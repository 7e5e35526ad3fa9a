"""Constructor arguments are checked when they are given, with an error naming the argument."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from deviceflow import Dialect, Provider
from deviceflow._checks import check_client_args, scope_text
from deviceflow.stores import EncryptedFileStore, Passphrase, generate_key

IDP = "https://idp.example"
SECRET = "s3cret-value-never-shown"

#: DeviceFlowClient's defaults, as check_client_args takes them.
CLIENT_ARGS: dict[str, Any] = {
    "client_id": "dvls",
    "client_secret": None,
    "client_auth": None,
    "scope": None,
    "on_code": None,
    "refresh_skew": 60.0,
    "http_timeout": 20.0,
    "lock_ttl": 30.0,
    "lock_wait": 60.0,
    "poll_margin": 0.1,
}


def client_args(**changes: Any) -> str | None:
    """check_client_args over the client's defaults with ``changes``."""
    return check_client_args(**{**CLIENT_ARGS, **changes})


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        (None, None),
        ("openid", "openid"),
        ("  openid   offline_access ", "openid offline_access"),
        (["openid"], "openid"),
        (
            ("openid", "https://www.googleapis.com/auth/drive.file"),
            "openid https://www.googleapis.com/auth/drive.file",
        ),
        (iter(["a", "b"]), "a b"),
        ("", ""),
        ([], ""),
    ],
)
def test_scope_is_a_string_or_an_iterable_of_strings(scope: Any, expected: str | None) -> None:
    """A scope string is normalised to single spaces; an iterable of names is joined by spaces."""
    assert expected == client_args(scope=scope)


def test_valid_client_arguments_pass() -> None:
    """The client's defaults, a secret, an auth method, a callback and zero waits are accepted."""
    assert "openid" == client_args(
        client_secret=SECRET,
        client_auth="client_secret_post",
        scope="openid",
        on_code=print,
        refresh_skew=0,
        http_timeout=1,
        lock_ttl=2,
        lock_wait=0,
        poll_margin=0,
    )


BAD_CLIENT_ARGS = [
    ("client_id", 123, TypeError),
    ("client_id", None, TypeError),
    ("client_id", b"dvls", TypeError),
    ("client_id", "", ValueError),
    ("client_id", "   ", ValueError),
    ("client_id", "dv\x00ls", ValueError),
    ("client_id", "dvls\r\nX-Injected: 1", ValueError),
    ("client_id", "dv\u202els", ValueError),
    ("client_secret", 42, TypeError),
    ("client_secret", "", ValueError),
    ("client_secret", SECRET + "\n", ValueError),
    ("client_auth", "basic", ValueError),
    ("client_auth", 1, TypeError),
    ("scope", 42, TypeError),
    ("scope", b"openid", TypeError),
    ("scope", ["openid", 42], TypeError),
    ("scope", ["open id"], ValueError),
    ("scope", [""], ValueError),
    ("scope", "openid\x00", ValueError),
    ("scope", "openid\nprofile", ValueError),
    ("scope", 'say "hi"', ValueError),
    ("scope", "caf\u00e9", ValueError),
    ("on_code", "print", TypeError),
    ("refresh_skew", -1, ValueError),
    ("refresh_skew", math.inf, ValueError),
    ("refresh_skew", "60", TypeError),
    ("http_timeout", math.nan, ValueError),
    ("http_timeout", 0, ValueError),
    ("http_timeout", -5.0, ValueError),
    ("http_timeout", True, TypeError),
    ("http_timeout", 10**400, ValueError),
    ("lock_ttl", math.nan, ValueError),
    ("lock_ttl", math.inf, ValueError),
    ("lock_ttl", None, TypeError),
    ("lock_wait", -0.5, ValueError),
    ("lock_wait", math.nan, ValueError),
    ("poll_margin", -0.1, ValueError),
    ("poll_margin", math.nan, ValueError),
]


@pytest.mark.parametrize(("name", "value", "error"), BAD_CLIENT_ARGS)
def test_bad_client_arguments_are_refused_by_name(
    name: str, value: Any, error: type[Exception]
) -> None:
    """Each unusable client argument raises TypeError or ValueError naming it."""
    with pytest.raises(error, match=name):
        client_args(**{name: value})


def test_http_timeout_must_be_below_lock_ttl() -> None:
    """A refresh must end while its lock is held: http_timeout at or above lock_ttl is refused."""
    with pytest.raises(ValueError, match="http_timeout must be shorter than lock_ttl"):
        client_args(http_timeout=30.0, lock_ttl=30.0)


def test_messages_never_repeat_the_secret() -> None:
    """A refused client_secret is named, never shown."""
    with pytest.raises(ValueError, match="client_secret") as caught:
        client_args(client_secret=SECRET + "\r\n")
    assert SECRET not in str(caught.value)


def test_scope_text_names_the_argument_it_checks() -> None:
    """scope_text reports the name it was given."""
    with pytest.raises(TypeError, match="default_scope"):
        scope_text("default_scope", 42)


# --- Provider --------------------------------------------------------------------------------


def test_provider_normalises_its_default_scope() -> None:
    """A preset-style default scope may be a list; it is kept as the string that is sent."""
    provider = Provider(issuer=IDP, default_scope=["openid", "email"])
    assert "openid email" == provider.default_scope


BAD_PROVIDER_ARGS = [
    ("name", 5, TypeError),
    ("name", "", ValueError),
    ("issuer", 42, TypeError),
    ("issuer", "javascript:alert(1)", ValueError),
    ("issuer", IDP + "/\r\n", ValueError),
    ("device_authorization_endpoint", ["https://idp.example/device"], TypeError),
    ("token_endpoint", "/token", ValueError),
    ("revocation_endpoint", 1.5, TypeError),
    ("expected_issuer", 3, TypeError),
    ("expected_issuer", "a\x00b", ValueError),
    ("check_issuer", "no", TypeError),
    ("dialect", {}, TypeError),
    ("default_scope", 42, TypeError),
    ("default_scope", ["openid", None], TypeError),
    ("device_params", [("audience", "x")], TypeError),
    ("device_params", {"audience": 5}, TypeError),
    ("device_params", {"audience": "a\nb"}, ValueError),
    ("requires_client_secret", 1, TypeError),
    ("client_auth", "basic", ValueError),
    ("registration", "https://idp.example/register", TypeError),
    ("extra", [], TypeError),
]


@pytest.mark.parametrize(("name", "value", "error"), BAD_PROVIDER_ARGS)
def test_bad_provider_arguments_are_refused_by_name(
    name: str, value: Any, error: type[Exception]
) -> None:
    """Each unusable Provider argument raises TypeError or ValueError naming it."""
    with pytest.raises(error, match=name):
        Provider(**{"issuer": IDP, name: value})


@pytest.mark.parametrize(
    ("preset", "args", "kwargs", "name", "error"),
    [
        ("devolutions", (42,), {}, "base_url", TypeError),
        ("entra", (None,), {}, "tenant", TypeError),
        ("entra", ("  ",), {}, "tenant", ValueError),
        ("keycloak", ("https://kc.example", 7), {}, "realm", TypeError),
        ("auth0", ("tenant.auth0.com",), {"audience": 3}, "audience", TypeError),
        ("aws_sso", (1, "https://p.example/start"), {}, "region", TypeError),
        ("aws_sso", ("us-east-1", "javascript:x"), {}, "start_url", ValueError),
        ("github", (), {"base_url": b"https://github.com"}, "base_url", TypeError),
    ],
)
def test_bad_preset_arguments_are_refused_by_name(
    preset: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    name: str,
    error: type[Exception],
) -> None:
    """Presets refuse unusable arguments with TypeError or ValueError naming them."""
    with pytest.raises(error, match=name):
        getattr(Provider, preset)(*args, **kwargs)


def test_provider_needs_an_issuer_or_both_endpoints() -> None:
    """A Provider with neither an issuer nor both endpoints is refused, naming what is needed."""
    with pytest.raises(ValueError, match="issuer"):
        Provider(token_endpoint=IDP + "/token")


def test_dialect_is_kept() -> None:
    """A Dialect passes the provider's checks unchanged."""
    dialect = Dialect(request_format="json")
    assert dialect is Provider(issuer=IDP, dialect=dialect).dialect


# --- stores ----------------------------------------------------------------------------------


class BytesPath:
    """An os.PathLike whose path is bytes: not a path the store can take."""

    def __fspath__(self) -> bytes:
        return b"tokens"


@pytest.mark.parametrize(
    ("name", "changes", "error"),
    [
        ("path", {"path": 42}, TypeError),
        ("path", {"path": ""}, ValueError),
        ("path", {"path": "to\x00kens"}, ValueError),
        ("path", {"path": "~no-such-user-here/tokens"}, ValueError),
        ("path", {"path": BytesPath()}, TypeError),
        ("key", {"key": 42}, TypeError),
        ("key", {"key": "not base64!"}, ValueError),
        ("key", {"key": b"short"}, ValueError),
        ("namespace", {"namespace": ""}, ValueError),
        ("namespace", {"namespace": 1}, TypeError),
        ("lock_timeout", {"lock_timeout": math.nan}, ValueError),
        ("lock_timeout", {"lock_timeout": 0}, ValueError),
        ("lock_timeout", {"lock_timeout": "30"}, TypeError),
    ],
)
def test_bad_file_store_arguments_are_refused_by_name(
    tmp_path: Path, name: str, changes: dict[str, Any], error: type[Exception]
) -> None:
    """EncryptedFileStore refuses unusable arguments at construction, naming them."""
    args: dict[str, Any] = {"path": tmp_path / "s", "key": generate_key(), **changes}
    with pytest.raises(error, match=name):
        EncryptedFileStore(**args)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("name", "changes", "error"),
    [
        ("client", {"client": 6379}, TypeError),
        ("client", {"client": ""}, ValueError),
        ("key", {"key": None}, TypeError),
        ("prefix", {"prefix": ""}, ValueError),
        ("prefix", {"prefix": "p\r\n"}, ValueError),
        ("namespace", {"namespace": None}, TypeError),
        ("timeout", {"timeout": math.inf}, ValueError),
        ("timeout", {"timeout": -1}, ValueError),
        ("cluster", {"cluster": "yes"}, TypeError),
    ],
)
def test_bad_redis_store_arguments_are_refused_by_name(
    name: str, changes: dict[str, Any], error: type[Exception]
) -> None:
    """RedisStore refuses unusable arguments at construction, naming them."""
    from deviceflow.stores import RedisStore

    args: dict[str, Any] = {"client": "redis://127.0.0.1:1/0", "key": generate_key(), **changes}
    with pytest.raises(error, match=name):
        RedisStore(**args)


@pytest.mark.parametrize(
    ("secret", "cost", "error"),
    [(None, 2**15, TypeError), ("pw", 2.0**15, TypeError), ("pw", True, TypeError)],
)
def test_bad_passphrase_types_are_refused(secret: Any, cost: Any, error: type[Exception]) -> None:
    """A passphrase must be a string and its work factor an int."""
    with pytest.raises(error, match=r"secret|work_factor"):
        Passphrase(secret, work_factor=cost)
