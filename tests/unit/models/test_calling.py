"""How a served model is called: backoff, Retry-After, the circuit, rate limits, answers."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from proxy.models.calling import (
    Bucket,
    Circuit,
    error_code,
    parse_embeddings,
    parse_retry_after,
    retry_delay,
)
from rollout_rules.errors import ModelError


def test_backoff_is_jittered_under_a_doubling_ceiling_and_never_before_retry_after() -> None:
    assert retry_delay(1, None, 0.5) == pytest.approx(0.05)
    assert retry_delay(4, None, 0.999) == pytest.approx(0.7992)
    assert retry_delay(30, None, 0.5) == pytest.approx(15.0)  # capped at 30 s, jittered
    assert retry_delay(1, 2.5, 0.1) == 2.5  # the service said when
    assert retry_delay(1, 3600.0, 0.1) == 30.0  # but an hour is capped


def test_retry_after_is_seconds_or_an_http_date() -> None:
    assert parse_retry_after("2", 0.0) == 2.0
    assert parse_retry_after(" 0.5 ", 0.0) == 0.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412490.0) == 0.0  # past
    for unreadable in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(unreadable, 0.0) is None


def test_the_circuit_opens_after_failures_in_a_row_and_lets_one_trial_through() -> None:
    circuit = Circuit(threshold=3, base_cooldown_s=2.0)
    for _ in range(2):
        circuit.failed(0.0)
    circuit.succeeded()  # in a row: a success starts the count again
    for now in (1.0, 1.1, 1.2):
        assert circuit.allow(now)
        circuit.failed(now)
    assert circuit.state(1.5) == "open" and not circuit.allow(1.5)
    assert circuit.wait_s(1.5) == pytest.approx(1.7)
    assert circuit.allow(3.3)  # half-open: the first asker is the trial
    assert circuit.state(3.3) == "open" and not circuit.allow(3.3)  # nobody else meanwhile
    circuit.failed(3.4)  # the trial failed: open again, twice as long
    assert circuit.wait_s(3.4) == pytest.approx(4.0) and circuit.opened == 2
    assert circuit.allow(7.5)
    circuit.succeeded()
    assert circuit.state(7.5) == "closed" and circuit.cooldown_s == 0.0


def test_calls_in_flight_when_it_opened_do_not_keep_it_open() -> None:
    circuit = Circuit(threshold=2, base_cooldown_s=1.0)
    circuit.failed(0.0)
    circuit.failed(0.0)
    circuit.failed(0.5)  # a late failure of a call sent before it opened
    assert circuit.wait_s(0.5) == pytest.approx(0.5) and circuit.opened == 1


def test_a_bucket_refills_by_the_minute_and_keeps_a_share_for_live_queries() -> None:
    bucket = Bucket(60.0)  # one a second
    assert bucket.take(50, 0.0) == 0.0
    assert bucket.take(1, 0.0, keep=0.25) == pytest.approx(6.0)  # bulk keeps 15 for live
    assert bucket.take(10, 0.0) == 0.0  # live may use them
    assert bucket.take(1, 0.0) == pytest.approx(1.0)
    assert bucket.take(1, 1.0) == 0.0
    assert Bucket(0).take(10**9, 0.0) == 0.0  # no limit known
    assert Bucket(60.0).take(500, 0.0) == 0.0  # bigger than a minute: waits for a full one


def test_usage_corrects_a_guess() -> None:
    bucket = Bucket(600.0)
    bucket.take(10, 0.0)
    bucket.spend(100, 0.0)  # the service counted 110
    assert bucket.level == pytest.approx(490.0)


def _answer(vectors: list[list[float]], indexes: list[int] | None = None,
            tokens: int = 7) -> bytes:
    data = [{"object": "embedding", "embedding": v, "index": i}
            for v, i in zip(vectors, indexes or range(len(vectors)), strict=True)]
    return msgspec.json.encode({"data": data, "usage": {"prompt_tokens": tokens,
                                                        "total_tokens": tokens}})


def test_an_answer_is_put_in_the_order_of_the_texts_by_its_indexes() -> None:
    vectors, tokens = parse_embeddings(_answer([[0.0, 1.0], [1.0, 0.0]], [1, 0]), 2, 2, "m")
    assert vectors.tolist() == [[1.0, 0.0], [0.0, 1.0]] and tokens == 7
    sized, _ = parse_embeddings(_answer([[1.0, 2.0, 3.0]]), 1, 0, "m")  # 0: as it comes
    assert sized.shape == (1, 3) and sized.dtype == np.float32


@pytest.mark.parametrize(("body", "count", "said"), [
    (b"<html>bad gateway</html>", 1, "not an embeddings list"),
    (_answer([[1.0, 0.0]]), 2, "1 vectors came back for 2 texts"),
    (_answer([[1.0, 0.0], [0.0, 1.0]], [0, 0]), 2, "indexes [0, 0]"),
    (_answer([[1.0]]), 1, "a vector of 1 numbers came back; the model is catalogued with 2"),
    (msgspec.json.encode({"data": [{"embedding": "AAAA", "index": 0}]}), 1, "base64"),
    (b'{"data": [{"embedding": [1e39, 0], "index": 0}]}', 1, "not finite"),
])
def test_a_broken_answer_is_refused_saying_what_is_wrong(body: bytes, count: int,
                                                         said: str) -> None:
    with pytest.raises(ModelError, match=r"^m: ") as raised:
        parse_embeddings(body, count, 2, "m")
    assert said in str(raised.value)


def test_bulk_work_gets_one_call_fewer_than_the_model_and_three_quarters_of_its_limits() -> None:
    from proxy.models.served import ServedModel, ServedSpec

    spec = ServedSpec(url="http://127.0.0.1:1", model_id="m", dimensions=8, max_batch=10,
                      max_concurrency=4, rpm=600, tpm=120_000)
    assert ServedModel(spec, "m").bulk_capacity(100.0) == (3, 15.0)  # tpm: 1500 tok/s, 100 each
    assert ServedModel(spec, "m").bulk_capacity(1.0) == (3, 75.0)  # rpm: 7.5 calls/s x 10 texts
    unlimited = ServedSpec(url="http://127.0.0.1:1", model_id="m", dimensions=8,
                           max_concurrency=1)
    assert ServedModel(unlimited, "m").bulk_capacity(100.0) == (1, None)


def test_an_error_is_named_by_its_code_never_by_its_message() -> None:
    """A service's message may repeat the input: only a short identifier is kept."""
    said = b'{"error": {"message": "bad input: my secret query", "type": "invalid_request_error"}}'
    assert error_code(said) == "invalid_request_error"
    assert error_code(b'{"error": {"code": "invalid_api_key", "type": "x"}}') == "invalid_api_key"
    assert error_code(b'{"error": {"code": 422, "type": "my secret query"}}') is None
    assert error_code(b'{"detail": "my secret query"}') is None
    assert error_code(b"my secret query") is None
