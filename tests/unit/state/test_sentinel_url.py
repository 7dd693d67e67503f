"""A sentinel URL read, and written out without its passwords."""

from __future__ import annotations

import pytest

from proxy.config import redact_url
from proxy.state.client import SentinelAddress, parse_sentinel_url
from rollout_rules.errors import StoreUnavailable


def test_a_sentinel_url_names_the_sentinels_the_primary_and_its_options() -> None:
    assert parse_sentinel_url(
        "redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26379,[::1]:26380/rules/2"
        "?sentinel_password=other") == SentinelAddress(
        sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380)), master="rules",
        db=2, password="s3cret", sentinel_password="other")
    assert parse_sentinel_url("rediss+sentinel://h:1/m").tls


@pytest.mark.parametrize(("url", "said"), [
    ("redis+sentinel://h:1", "names sentinels and a primary"),
    ("redis+sentinel:///m", "names sentinels and a primary"),
    ("redis+sentinel://h:port/m", "'h:port' is not HOST:PORT"),
    ("redis+sentinel://h:1/m/x", "database 'x'"),
])
def test_a_wrong_sentinel_url_is_refused_saying_what_is_wrong(url: str, said: str) -> None:
    with pytest.raises(StoreUnavailable, match="REDIS_URL") as raised:
        parse_sentinel_url(url)
    assert said in str(raised.value)


def test_no_password_of_a_sentinel_url_is_ever_written_out() -> None:
    url = "redis+sentinel://app:s3cret@h1:26379,h2:26379/rules?sentinel_password=other&db=1"
    shown = redact_url(url)
    assert shown == "redis+sentinel://app:***@h1:26379,h2:26379/rules?sentinel_password=***&db=1"
    assert redact_url("redis://:hunter2@127.0.0.1:1/0") == "redis://:***@127.0.0.1:1/0"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
