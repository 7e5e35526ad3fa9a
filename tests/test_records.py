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
from strategies import tokens


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


@given(
    token=tokens,
    account=st.text(min_size=1),
    path=st.text("ab/%'\"\\\u00e9"),
    seq=st.integers(min_value=0, max_value=2**40),
)
def test_record_decodes_to_its_fields(token: Token, account: str, path: str, seq: int) -> None:
    """The client's record holds its fields as written, and decodes to the same token."""
    issuer = "https://idp.test/" + path
    provider = Provider(issuer=issuer, token_endpoint="https://idp.test/token")
    codec = RecordCodec(provider.identity, 'c"\u00e9\n')
    now = datetime.now(timezone.utc)
    written = Record(token=token, obtained=now, seq=seq)
    record: dict[str, Any] = json.loads(codec.encode(account, written))
    obtained = record.pop("obtained_at")
    assert {
        "v": 1,
        "issuer": issuer,
        "client_id": 'c"\u00e9\n',
        "account": account,
        "seq": seq,
        "token": token.to_dict(),
    } == record
    assert abs(datetime.now(timezone.utc).timestamp() - obtained) < 60
    decoded = RecordCodec.decode(codec.encode(account, written))
    assert isinstance(decoded, Record)
    assert_same(token, decoded.token)
    assert seq == decoded.seq
    assert decoded.obtained is not None
    assert abs(now - decoded.obtained) < timedelta(milliseconds=1)


@given(account=st.text(min_size=1), reason=st.sampled_from(["logout", "refused", "expired"]))
def test_tombstone_decodes_to_a_tombstone(account: str, reason: str) -> None:
    """A logout's tombstone decodes as one, with its reason and time; never as a token."""
    codec = RecordCodec("https://idp.test", "c")
    now = datetime.now(timezone.utc)
    decoded = RecordCodec.decode(codec.encode_tombstone(account, now, reason, 7))
    assert isinstance(decoded, Tombstone)
    assert (reason, 7) == (decoded.reason, decoded.seq)
    assert decoded.at is not None
    assert abs(now - decoded.at) < timedelta(milliseconds=1)


def test_a_field_that_is_not_text_is_left_to_the_generic_encoder() -> None:
    """A token built with a non-str field is written as the generic encoder writes it."""
    token = Token(access_token=12345)  # type: ignore[arg-type]
    assert COMPACT_JSON.encode(token.to_dict()) == token.json_text()
