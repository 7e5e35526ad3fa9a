"""Store records: the hand-written compact JSON is exactly what the generic encoder writes."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st

from deviceflow import Provider, Token
from deviceflow._models import COMPACT_JSON
from deviceflow._records import Record, RecordCodec, Tombstone

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
optional_text = st.none() | st.text()
tokens = st.builds(
    Token,
    access_token=st.text(),
    token_type=st.text(),
    expires_at=st.none()
    | st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(9999, 1, 1),
        timezones=st.just(timezone.utc),
    ),
    refresh_token=optional_text,
    scope=optional_text,
    id_token=optional_text,
    extra=st.dictionaries(st.text(), json_values, max_size=4),
)


@given(token=tokens)
def test_token_json_text_matches_the_generic_encoder(token: Token) -> None:
    """Token.json_text() is exactly the generic encoder's text, and reads back."""
    assert COMPACT_JSON.encode(token.to_dict()) == token.json_text()
    assert_same(token, Token.from_json(token.to_json()))


def assert_same(token: Token, decoded: Token) -> None:
    """Equal; expires_at up to a float timestamp's precision (tens of microseconds in 9999)."""
    if token.expires_at is not None:
        assert decoded.expires_at is not None
        assert abs(decoded.expires_at - token.expires_at) <= timedelta(milliseconds=1)
    assert token == attrs.evolve(decoded, expires_at=token.expires_at)


@given(token=tokens, account=st.text(min_size=1), path=st.text("ab/%'\"\\\u00e9"))
def test_record_decodes_to_its_fields(token: Token, account: str, path: str) -> None:
    """The client's record holds its fields as written, and decodes to the same token."""
    issuer = "https://idp.test/" + path
    provider = Provider(issuer=issuer, token_endpoint="https://idp.test/token")
    codec = RecordCodec(provider.identity, 'c"\u00e9\n')
    now = datetime.now(timezone.utc)
    record: dict[str, Any] = json.loads(codec.encode(account, token, now))
    obtained = record.pop("obtained_at")
    assert {
        "v": 1,
        "issuer": issuer,
        "client_id": 'c"\u00e9\n',
        "account": account,
        "token": token.to_dict(),
    } == record
    assert abs(datetime.now(timezone.utc).timestamp() - obtained) < 60
    decoded = RecordCodec.decode(codec.encode(account, token, now))
    assert isinstance(decoded, Record)
    assert_same(token, decoded.token)
    assert decoded.obtained is not None
    assert abs(now - decoded.obtained) < timedelta(milliseconds=1)


@given(account=st.text(min_size=1), reason=st.sampled_from(["logout", "refused", "expired"]))
def test_tombstone_decodes_to_a_tombstone(account: str, reason: str) -> None:
    """A logout's tombstone decodes as one, with its reason and time; never as a token."""
    codec = RecordCodec("https://idp.test", "c")
    now = datetime.now(timezone.utc)
    decoded = RecordCodec.decode(codec.encode_tombstone(account, now, reason))
    assert isinstance(decoded, Tombstone)
    assert reason == decoded.reason
    assert decoded.at is not None
    assert abs(now - decoded.at) < timedelta(milliseconds=1)


def test_a_field_that_is_not_text_is_left_to_the_generic_encoder() -> None:
    """A token built with a non-str field is written as the generic encoder writes it."""
    token = Token(access_token=12345)  # type: ignore[arg-type]
    assert COMPACT_JSON.encode(token.to_dict()) == token.json_text()
