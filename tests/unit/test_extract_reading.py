"""Reading Stripe without the SDK's transport: query encoding, error mapping, and cutting a running chunk."""

from __future__ import annotations

import json

import pytest
import stripe

from stripe_sage_pipeline.extract.client import encode_params, stripe_error
from stripe_sage_pipeline.extract.extract import CUT_STEP, HOUR, Span


def test_params_are_encoded_as_stripe_expects():
    assert encode_params(
        {"created": {"gte": 10, "lt": 20}, "expand": ["data.balance_transaction", "data.customer"], "limit": 100}
    ) == [
        ("created[gte]", "10"),
        ("created[lt]", "20"),
        ("expand[0]", "data.balance_transaction"),
        ("expand[1]", "data.customer"),
        ("limit", "100"),
    ]
    assert encode_params({"automatic": True, "x": False, "skip": None, "payout": "po_1"}) == [
        ("automatic", "true"),
        ("x", "false"),
        ("payout", "po_1"),
    ]


def _body(type_: str = "invalid_request_error", code: str | None = None, param: str | None = None) -> bytes:

    return json.dumps({"error": {"type": type_, "code": code, "param": param, "message": "m"}}).encode()


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (429, _body("invalid_request_error", "rate_limit"), stripe.RateLimitError),
        (400, _body("invalid_request_error", "rate_limit"), stripe.RateLimitError),
        (400, _body(param="created"), stripe.InvalidRequestError),
        (404, _body(code="resource_missing", param="id"), stripe.InvalidRequestError),
        (400, _body("idempotency_error"), stripe.IdempotencyError),
        (401, _body(), stripe.AuthenticationError),
        (402, _body("card_error", "card_declined"), stripe.CardError),
        (403, _body(), stripe.PermissionError),
        (500, _body("api_error"), stripe.APIError),
        (503, b"<html>bad gateway</html>", stripe.APIError),
    ],
)
def test_error_answers_map_to_the_sdk_classes(status, body, cls):
    err = stripe_error(status, body, {"Request-Id": "req_1", "Retry-After": "2"})
    assert type(err) is cls
    assert err.http_status == status
    assert err.headers["Retry-After"] == "2"


def test_an_invalid_request_keeps_the_param_and_code():
    err = stripe_error(404, _body(code="resource_missing", param="id"))
    assert (err.param, err.code, err.user_message) == ("id", "resource_missing", "m")


def test_a_cut_gives_away_the_older_half_on_a_ten_minute_boundary():
    span = Span(0, 10 * HOUR)
    assert span.cut(HOUR) == (0, 5 * HOUR)
    assert (span.lower, span.end) == (5 * HOUR, 10 * HOUR)
    assert span.cut(3 * HOUR) is None  # 5 hours left: halves of 2h30 are under 3 h
    assert span.cut(HOUR) == (5 * HOUR, 7 * HOUR + 1800)  # an hour may be cut in two
    assert span.cut(CUT_STEP) == (7 * HOUR + 1800, 8 * HOUR + 2400)  # 8h45 floored to ten minutes
    span = Span(0, 30 * 60)
    assert span.cut(0) == (0, 10 * 60)  # half of 30 minutes, floored: each part at least ten minutes
    assert span.cut(0) == (10 * 60, 20 * 60)
    assert span.cut(0) is None  # ten minutes left: no two parts of ten


def test_a_cut_never_takes_what_the_chunk_holds():
    span = Span(0, 10 * HOUR)
    kept, stop = span.keep([{"id": "a", "created": 9 * HOUR + 5}, {"id": "b", "created": 6 * HOUR + 10}])
    assert [o["id"] for o in kept] == ["a", "b"] and not stop
    assert span.cut(HOUR) == (0, 3 * HOUR)  # below the hour being read (6 h)
    kept, stop = span.keep(
        [{"id": "c", "created": 4 * HOUR}, {"id": "d", "created": 3 * HOUR}, {"id": "e", "created": 2 * HOUR}]
    )
    assert [o["id"] for o in kept] == ["c", "d"] and stop  # "e" is the piece's
    assert span.cut(HOUR) is None and span.close() == 3 * HOUR


def test_an_object_without_created_stays_with_the_chunk_to_be_rejected_there():
    span = Span(0, 10 * HOUR)
    span.cut(HOUR)
    kept, stop = span.keep([{"id": "x"}, {"id": "y", "created": 6 * HOUR}])
    assert [o["id"] for o in kept] == ["x", "y"] and not stop


def test_pages_left_use_the_density_the_chunk_has_seen():
    span = Span(0, 100 * HOUR)
    assert span.pages_left(0.5 / HOUR) == pytest.approx(50)  # nothing seen yet: the table's estimate
    span.keep([{"id": "a", "created": 90 * HOUR}])
    span.keep([{"id": "b", "created": 80 * HOUR}])  # 2 pages over 20 hours
    assert span.pages_left(0.5 / HOUR) == pytest.approx(8)


def test_pages_left_follow_the_last_pages_when_activity_picks_up():
    """Charges follow the time of day: a chunk entering its busy hours must not be judged by its quiet ones."""
    span = Span(0, 100 * HOUR)
    span.keep([{"id": "a", "created": 60 * HOUR}])  # a page spanned 40 hours (night) ...
    span.keep([{"id": "b", "created": 58 * HOUR}])
    span.keep([{"id": "c", "created": 56 * HOUR}])
    span.keep([{"id": "d", "created": 54 * HOUR}])  # ... then 2 hours each: 0.5 pages an hour
    assert span.pages_left(0.01 / HOUR) == pytest.approx(54 * 0.5)  # not 4 pages / 46 hours × 54 hours ≈ 4.7
    piece = span.cut(HOUR)  # a page cut short by a cut is no measure of the density
    assert piece == (0, 27 * HOUR)
    kept, stop = span.keep([{"id": "e", "created": 30 * HOUR}, {"id": "f", "created": 3 * HOUR}])
    assert [o["id"] for o in kept] == ["e"] and stop
    assert span.pages_left(0.01 / HOUR) == pytest.approx(3 * 0.5)  # still the last full pages' 0.5 an hour
