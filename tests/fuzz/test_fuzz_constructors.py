"""Fuzzing the constructors: any argument is accepted or refused by name, never deeper down.

Each argument of Provider, the stores and DeviceFlowClient (through ``check_client_args``, the
check its constructor runs) is drawn from a mix of valid values and values of every other kind:
NaN, infinities, huge integers, bools, bytes, strings with NUL, CR LF and bidi overrides, lists
of the wrong items. Whatever comes in, the constructor either accepts it, with the promised
normalisation, or raises TypeError or ValueError (InsecureEndpointError for plain http URLs)
whose message names the argument.
"""

from __future__ import annotations

import math
from typing import Any

from fuzz_strategies import FUZZ, HOSTILE_STRINGS, IDP
from hypothesis import given
from hypothesis import strategies as st

from deviceflow import Dialect, InsecureEndpointError, Provider
from deviceflow._checks import check_client_args
from deviceflow.stores import EncryptedFileStore, KeySet, Passphrase, RedisStore, generate_key

#: Values of every kind, for any argument.
anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([10**400, 0, 1, -1, 2**1100]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(HOSTILE_STRINGS),
    st.binary(max_size=8),
    st.lists(st.one_of(st.text(max_size=8), st.integers(), st.none()), max_size=3),
    st.dictionaries(st.text(max_size=4), st.one_of(st.text(max_size=4), st.integers()), max_size=2),
    st.just(object()),
)
seconds = st.one_of(
    st.floats(min_value=0, max_value=1e6), st.integers(min_value=0, max_value=10**6)
)
scope_names = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)
scopes = st.one_of(st.none(), st.text(max_size=20), st.lists(scope_names, max_size=3))


def either(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly valid values, often anything at all."""
    return st.one_of(valid, valid, anything)


def assert_names_an_argument(error: Exception, names: set[str]) -> None:
    """The refusal is a TypeError or ValueError that names one of ``names``."""
    assert isinstance(error, (TypeError, ValueError, InsecureEndpointError)), repr(error)
    message = str(error)
    assert any(name in message for name in names), message
    assert message.isprintable(), repr(message)


CLIENT = {
    "client_id": either(st.sampled_from(["dvls", "a b", "cli-1"])),
    "client_secret": either(st.none() | st.just("s3cret")),
    "client_auth": either(st.sampled_from([None, "none", "client_secret_basic"])),
    "scope": either(scopes),
    "on_code": either(st.none() | st.just(print)),
    "refresh_skew": either(seconds),
    "http_timeout": either(seconds),
    "lock_ttl": either(seconds),
    "lock_wait": either(seconds),
    "poll_margin": either(seconds),
}


@FUZZ
@given(st.fixed_dictionaries(CLIENT))
def test_fuzz_client_arguments(args: dict[str, Any]) -> None:
    """check_client_args accepts only usable values and returns a scope fit for the wire."""
    try:
        scope = check_client_args(**args)
    except Exception as exc:
        assert_names_an_argument(exc, set(CLIENT))
        return
    assert isinstance(args["client_id"], str)
    assert args["client_id"].strip()
    assert args["client_id"].isprintable()
    for name in ("refresh_skew", "lock_wait", "poll_margin"):
        assert math.isfinite(args[name])
        assert args[name] >= 0
    assert 0 < args["http_timeout"] < args["lock_ttl"] < math.inf
    if scope is not None:
        assert scope == " ".join(scope.split(" "))
        assert all(0x21 <= ord(c) <= 0x7E and c not in '"\\' for c in scope.replace(" ", ""))


PROVIDER = {
    "name": either(st.just("custom")),
    "issuer": either(st.sampled_from([IDP, IDP + "/tenant", "http://127.0.0.1:1"])),
    "device_authorization_endpoint": either(st.none() | st.just(IDP + "/device")),
    "token_endpoint": either(st.none() | st.just(IDP + "/token")),
    "revocation_endpoint": either(st.none() | st.just(IDP + "/revoke")),
    "expected_issuer": either(st.none() | st.just(IDP)),
    "check_issuer": either(st.booleans()),
    "dialect": either(st.just(Dialect())),
    "default_scope": either(scopes),
    "device_params": either(st.just({"audience": "api"})),
    "requires_client_secret": either(st.booleans()),
    "client_auth": either(st.sampled_from([None, "client_secret_post"])),
    "extra": either(st.just({})),
}


@FUZZ
@given(st.fixed_dictionaries(PROVIDER))
def test_fuzz_provider_arguments(args: dict[str, Any]) -> None:
    """Provider(...) over any arguments is a provider whose URLs are safe, or a named refusal."""
    try:
        provider = Provider(**args)
    except Exception as exc:
        assert_names_an_argument(exc, set(PROVIDER))
        return
    assert provider.issuer is not None or provider.metadata is not None
    assert provider.default_scope is None or provider.default_scope.isprintable()
    params: dict[Any, Any] = dict(provider.device_params)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())


FILE_STORE = {
    "path": either(st.sampled_from(["tokens", "~/tokens", "a/b"])),
    "key": either(st.sampled_from([generate_key(), bytes(32), KeySet(generate_key())])),
    "namespace": either(st.just("deviceflow")),
    "lock_timeout": either(seconds),
    "follow_symlinks": either(st.booleans()),
}


@FUZZ
@given(st.fixed_dictionaries(FILE_STORE))
def test_fuzz_file_store_arguments(args: dict[str, Any]) -> None:
    """EncryptedFileStore(...) over any arguments is built or refused by name."""
    try:
        store = EncryptedFileStore(**args)
    except Exception as exc:
        assert_names_an_argument(exc, set(FILE_STORE))
        return
    assert store.path.is_absolute()


REDIS_STORE = {
    "client": either(st.sampled_from(["redis://127.0.0.1:1/0", "foo", "redis://h:99999"])),
    "key": either(st.sampled_from([generate_key(), Passphrase("pw", work_factor=2**10)])),
    "prefix": either(st.just("deviceflow:")),
    "namespace": either(st.just("deviceflow")),
    "timeout": either(seconds),
    "cluster": either(st.booleans()),
}


@FUZZ
@given(st.fixed_dictionaries(REDIS_STORE))
async def test_fuzz_redis_store_arguments(args: dict[str, Any]) -> None:
    """RedisStore(...) over any arguments is built (connecting nowhere) or refused by name."""
    try:
        store = RedisStore(**args)
    except Exception as exc:
        assert_names_an_argument(exc, set(REDIS_STORE))
        return
    await store.aclose()


@FUZZ
@given(secret=either(st.just("correct horse")), work_factor=either(st.just(2**10)))
def test_fuzz_passphrase_arguments(secret: Any, work_factor: Any) -> None:
    """Passphrase(...) over any arguments is a passphrase or a refusal naming what is wrong."""
    try:
        Passphrase(secret, work_factor=work_factor)
    except Exception as exc:
        assert_names_an_argument(exc, {"secret", "work_factor"})
