"""The webhook receiver over a real socket: signature checks, replay de-duplication, body limits, the inbox."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import httpx
import psycopg
import pytest
import stripe

from stripe_sage_pipeline.extract.webhooks import WEBHOOK_PATH, WebhookServer, mark_processed, pending_events
from stripe_sage_pipeline.runtime.db import libpq_url

SECRET = "whsec_test_receiver_secret"
MAX_BODY = 64 * 1024


def sign(body: bytes, secret: str = SECRET, t: int | None = None, extra_v1: list[str] | None = None) -> str:
    """A Stripe-Signature header computed the way Stripe does: HMAC-SHA256 over "{t}.{body}"."""
    t = int(time.time()) if t is None else t
    v1 = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return ",".join([f"t={t}", *(f"v1={s}" for s in extra_v1 or []), f"v1={v1}"])


def event(event_id: str = "evt_1", event_type: str = "charge.refunded", created: int = 1767225600, **obj) -> bytes:
    data = {"id": "ch_1", "object": "charge", "amount": 1000, **obj}
    return json.dumps(
        {"id": event_id, "object": "event", "type": event_type, "created": created, "data": {"object": data}}
    ).encode()


@pytest.fixture
def conninfo(fresh_db) -> str:
    return libpq_url(fresh_db)


@pytest.fixture
def server(conninfo):
    with WebhookServer(conninfo, SECRET, max_body_bytes=MAX_BODY) as srv:
        yield srv


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def inbox_rows(conninfo: str) -> list[tuple]:
    with psycopg.connect(conninfo) as conn:
        return conn.execute(
            "select event_id, event_type, object_type, object_id, event_created, payload, processed_at "
            "from stripe_staging.webhook_inbox order by event_id"
        ).fetchall()


def post(client: httpx.Client, body: bytes, header: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Stripe-Signature"] = header
    return client.post(WEBHOOK_PATH, content=body, headers=headers)


def test_health(client):
    assert client.get("/health").json() == {"ok": True}


def test_signed_event_is_stored_once_and_replay_deduplicated(client, conninfo):
    body = event()
    header = sign(body)
    # The header we build is exactly what the official SDK accepts.
    assert stripe.Webhook.construct_event(body, header, SECRET).id == "evt_1"

    first = post(client, body, header)
    assert first.status_code == 200, first.text
    assert first.json() == {"received": True, "duplicate": False}

    replay = post(client, body, sign(body))  # Stripe retries re-sign with a new timestamp
    assert replay.status_code == 200
    assert replay.json() == {"received": True, "duplicate": True}

    rows = inbox_rows(conninfo)
    assert len(rows) == 1
    event_id, event_type, object_type, object_id, created, payload, processed_at = rows[0]
    assert (event_id, event_type, object_type, object_id) == ("evt_1", "charge.refunded", "charge", "ch_1")
    assert int(created.timestamp()) == 1767225600
    assert payload == json.loads(body)
    assert processed_at is None


def test_several_v1_values_one_valid_is_accepted(client, conninfo):
    body = event("evt_multi")
    # Stripe sends one v1 per active secret while a secret is being rolled.
    response = post(client, body, sign(body, extra_v1=["0" * 64, sign(body, secret="whsec_old").split("v1=")[1]]))
    assert response.status_code == 200
    assert [r[0] for r in inbox_rows(conninfo)] == ["evt_multi"]


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(lambda b: sign(b, secret="whsec_wrong"), id="wrong-secret"),
        pytest.param(lambda b: sign(b + b" "), id="body-tampered"),
        pytest.param(lambda b: sign(b, t=int(time.time()) - 301), id="stale-301s"),
        pytest.param(lambda b: sign(b, t=int(time.time()) - 3600), id="stale-1h"),
        pytest.param(lambda b: "t=abc,v1=zz", id="garbled"),
        pytest.param(lambda b: f"t={int(time.time())}", id="no-v1"),
        pytest.param(lambda b: None, id="missing"),
    ],
)
def test_bad_or_stale_signature_is_rejected_and_not_stored(client, conninfo, header):
    body = event("evt_bad")
    response = post(client, body, header(body))
    assert response.status_code == 400
    assert response.json()["received"] is False
    assert "Stripe-Signature" in response.json()["error"]
    assert SECRET not in response.text
    assert inbox_rows(conninfo) == []


def test_signed_but_not_an_event_is_rejected(client, conninfo):
    for body in (b"not json", b"[1, 2]", json.dumps({"object": "event"}).encode()):
        assert post(client, body, sign(body)).status_code == 400
    assert inbox_rows(conninfo) == []


def test_oversized_body_is_413_and_not_stored(client, conninfo):
    body = event("evt_big", padding="x" * (MAX_BODY + 1))
    response = post(client, body, sign(body))
    assert response.status_code == 413
    assert inbox_rows(conninfo) == []


def test_oversized_chunked_body_without_content_length_is_413(client, conninfo):
    body = event("evt_chunked", padding="x" * (MAX_BODY * 2))

    def chunks():
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    # A generator body goes out chunked, so only the bytes actually read can tell it is too large.
    response = client.post(WEBHOOK_PATH, content=chunks(), headers={"Stripe-Signature": sign(body)})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert inbox_rows(conninfo) == []


def test_body_just_under_the_limit_is_accepted(client, conninfo):
    body = event("evt_fits")
    body = event("evt_fits", padding="x" * (MAX_BODY - len(body) - len(', "padding": ""')))
    assert len(body) == MAX_BODY
    assert post(client, body, sign(body)).status_code == 200
    assert [r[0] for r in inbox_rows(conninfo)] == ["evt_fits"]


def test_pending_events_and_mark_processed(client, conninfo):
    for event_id, created in (("evt_c", 300), ("evt_a", 100), ("evt_b", 200)):
        body = event(event_id, "payout.paid", created=created, id=f"po_{event_id}", object="payout")
        assert post(client, body, sign(body)).status_code == 200

    pending = pending_events(conninfo)
    assert [e["event_id"] for e in pending] == ["evt_a", "evt_b", "evt_c"]  # oldest first
    first = pending[0]
    assert set(first) == {"event_id", "event_type", "object_type", "object_id", "event_created", "payload"}
    assert (first["event_type"], first["object_type"], first["object_id"]) == ("payout.paid", "payout", "po_evt_a")
    assert first["payload"]["data"]["object"]["id"] == "po_evt_a"
    assert [e["event_id"] for e in pending_events(conninfo, limit=2)] == ["evt_a", "evt_b"]

    assert mark_processed(conninfo, ["evt_a", "evt_b"], "run-1") == 2
    assert mark_processed(conninfo, ["evt_a"], "run-2") == 0  # already handled: keeps run-1
    assert mark_processed(conninfo, [], "run-3") == 0
    assert [e["event_id"] for e in pending_events(conninfo)] == ["evt_c"]
    with psycopg.connect(conninfo) as conn:
        assert conn.execute(
            "select process_run_id from stripe_staging.webhook_inbox where event_id = 'evt_a'"
        ).fetchone() == ("run-1",)

    # A replay of a processed event stays processed: it is not queued again.
    body = event("evt_a", "payout.paid", created=100, id="po_evt_a", object="payout")
    assert post(client, body, sign(body)).json() == {"received": True, "duplicate": True}
    assert [e["event_id"] for e in pending_events(conninfo)] == ["evt_c"]


def test_helpers_work_before_the_receiver_ever_ran(conninfo):
    assert pending_events(conninfo) == []
    assert mark_processed(conninfo, ["evt_none"], "run-x") == 0


def rejections(conninfo: str) -> list[tuple]:
    with psycopg.connect(conninfo) as conn:
        return conn.execute(
            "select http_status, reason, event_id, signature_valid, body is not null from"
            " stripe_staging.webhook_rejections order by id"
        ).fetchall()


def test_rejected_deliveries_are_kept_with_their_reason_and_alerted_once(client, conninfo):
    """Signed-but-malformed, 413, a future timestamp, a known id with another body and a bad signature: each is a
    row with its reason (bodies only of signed deliveries), and the burst raises one alert."""
    malformed = b'{"object": "event"}'
    assert post(client, malformed, sign(malformed)).status_code == 400
    big = event("evt_big", padding="x" * (MAX_BODY + 1))
    assert post(client, big, sign(big)).status_code == 413
    future = event("evt_future", created=int(time.time()) + 86400)
    assert post(client, future, sign(future)).status_code == 400
    first = event("evt_dup", amount=1000)
    assert post(client, first, sign(first)).json() == {"received": True, "duplicate": False}
    assert post(client, first, sign(first)).json() == {"received": True, "duplicate": True}  # Stripe's retry
    other = event("evt_dup", amount=999_999)
    assert post(client, other, sign(other)).json() == {"received": True, "duplicate": True, "conflict": True}
    forged = event("evt_forged")
    assert post(client, forged, sign(forged, secret="whsec_wrong")).status_code == 400

    rows = rejections(conninfo)
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == [
        (400, None, True, True),
        (413, None, False, False),
        (400, "evt_future", True, True),
        (200, "evt_dup", True, True),
        (400, None, False, False),
    ]
    reasons = [r[1] for r in rows]
    assert reasons[0].startswith("not a Stripe event") and "larger than" in reasons[1]
    assert "in the future" in reasons[2] and "different body" in reasons[3] and "Stripe-Signature" in reasons[4]
    assert [r[0] for r in inbox_rows(conninfo)] == ["evt_dup"]
    assert inbox_rows(conninfo)[0][5]["data"]["object"]["amount"] == 1000  # the first body stays

    # The alert is raised after the answer went out (a background task): the last rejection's task has run
    # once a request that goes after it has been answered.
    assert client.get("/health").status_code == 200
    with psycopg.connect(conninfo) as conn:
        alerts = conn.execute("select kind, title from sage_sync.alerts").fetchall()
    assert len(alerts) == 1 and alerts[0][0] == "webhook_rejected"
