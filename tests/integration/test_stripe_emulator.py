"""The Stripe emulator, driven over a real socket by the official `stripe` SDK.

Read-only tests share one generated history (`server`); tests that change data (refunds, customer
updates, payout failures, disputes, rate limits, faults, webhooks) use their own (`live`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from stripe_spec import validate, validate_list

from stripe_sage_sandboxes.stripe_emulator import (
    EmulatorConfig,
    EmulatorServer,
    EmulatorState,
    generate,
    load_golden,
)
from stripe_sage_sandboxes.stripe_emulator.ops import DISPUTE_FEES

KEY = "sk_test_emulator"
END = 1784073600  # 2026-07-15 00:00 UTC
DAY = 86_400
GOLDEN = Path(__file__).resolve().parents[2] / "examples" / "payout_worked_example.json"
COLLECTIONS = {
    "customers": "customer",
    "charges": "charge",
    "refunds": "refund",
    "balance_transactions": "balance_transaction",
    "payouts": "payout",
    "disputes": "dispute",
    "events": "event",
    "invoices": "invoice",
    "payment_intents": "payment_intent",
}


@pytest.fixture(scope="module")
def state() -> EmulatorState:
    st = EmulatorState(EmulatorConfig(api_key=KEY, now=END))
    return generate(st, seed=7, days=30, volume=1.0, end=END)


@pytest.fixture(scope="module")
def server(state: EmulatorState):
    srv = EmulatorServer(state, port=0).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: EmulatorServer) -> stripe.StripeClient:
    return stripe.StripeClient(KEY, base_addresses={"api": server.url})


@pytest.fixture(scope="module")
def http(server: EmulatorServer):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as c:
        yield c


@pytest.fixture(scope="module")
def live():
    """A small separate history for tests that change state."""
    st = generate(EmulatorState(EmulatorConfig(api_key=KEY, now=END)), seed=11, days=20, volume=0.4, end=END)
    srv = EmulatorServer(st, port=0).start()
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {KEY}"}) as h:
        yield st, srv, stripe.StripeClient(KEY, base_addresses={"api": srv.url}), h
    srv.stop()


def _all(client: stripe.StripeClient, coll: str, **params: Any) -> list[Any]:
    service = getattr(client.v1, coll)
    return list(service.list(params={"limit": 100, **params}).auto_paging_iter())


def _raw(state: EmulatorState, coll: str) -> list[dict[str, Any]]:
    return list(state.iter_rendered(coll))


# ---- lists -----------------------------------------------------------------------------------


@pytest.mark.parametrize("coll", list(COLLECTIONS))
def test_auto_paging_returns_every_object_once(client: stripe.StripeClient, state: EmulatorState, coll: str) -> None:
    if coll == "events":
        # The SDK spends ~1 ms building each event object: page through the last 4 days only.
        since = END - 4 * DAY
        items = _all(client, coll, created={"gte": since})
        expected = sum(1 for e in state.coll("events").objs.values() if e.created >= since)
    else:
        items = _all(client, coll)
        expected = state.summary()["counts"][coll]
    ids = [o.id for o in items]
    assert len(ids) == len(set(ids)) == expected > 0
    created = [o.created for o in items]
    assert created == sorted(created, reverse=True), "lists are newest first"


def test_created_windows_partition_the_data(client: stripe.StripeClient, state: EmulatorState) -> None:
    everything = {o["id"] for o in _raw(state, "balance_transactions")}
    seen: list[str] = []
    start = END - 31 * DAY
    for day in range(33):
        lo, hi = start + day * DAY, start + (day + 1) * DAY
        page = _all(client, "balance_transactions", created={"gte": lo, "lt": hi})
        assert all(lo <= o.created < hi for o in page)
        seen.extend(o.id for o in page)
    assert len(seen) == len(set(seen)) and set(seen) == everything
    one = _raw(state, "charges")[5]
    exact = client.v1.charges.list(params={"created": one["created"], "limit": 100})
    assert one["id"] in {c.id for c in exact.data} and all(c.created == one["created"] for c in exact.data)
    gt_lte = _all(client, "charges", created={"gt": one["created"] - 3600, "lte": one["created"]})
    assert all(one["created"] - 3600 < c.created <= one["created"] for c in gt_lte)


def test_starting_after_and_ending_before(client: stripe.StripeClient, state: EmulatorState) -> None:
    expected = [c["id"] for c in _raw(state, "charges")]
    p1 = client.v1.charges.list(params={"limit": 7})
    assert [c.id for c in p1.data] == expected[:7] and p1.has_more
    p2 = client.v1.charges.list(params={"limit": 7, "starting_after": p1.data[-1].id})
    assert [c.id for c in p2.data] == expected[7:14]
    back = client.v1.charges.list(params={"limit": 7, "ending_before": p2.data[0].id})
    assert [c.id for c in back.data] == expected[:7] and not back.has_more
    last = client.v1.charges.list(params={"limit": 3, "starting_after": expected[-2]})
    assert [c.id for c in last.data] == expected[-1:] and not last.has_more
    backwards = client.v1.charges.list(params={"limit": 3, "ending_before": expected[10]}).auto_paging_iter()
    assert [c.id for c in backwards] == expected[:10][::-1], "the SDK pages backwards from ending_before"
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.charges.list(params={"starting_after": "ch_doesnotexist"})
    assert err.value.code == "resource_missing" and err.value.param == "starting_after"


@pytest.mark.parametrize("limit", [0, 101, "abc"])
def test_limit_out_of_range_is_rejected(http: httpx.Client, limit: Any) -> None:
    r = http.get("/v1/charges", params={"limit": limit})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "limit" and r.json()["error"]["type"] == "invalid_request_error"
    assert r.headers["Request-Id"].startswith("req_")


def test_percent_encoded_brackets_and_filters(http: httpx.Client, state: EmulatorState) -> None:
    charges = _raw(state, "charges")
    mid = charges[len(charges) // 2]["created"]
    r = http.get(f"/v1/charges?limit=100&created%5Blte%5D={mid}")
    assert r.status_code == 200 and all(c["created"] <= mid for c in r.json()["data"])
    r = http.get("/v1/balance_transactions", params={"type": "refund", "limit": 100})
    assert r.json()["data"] and all(b["type"] == "refund" for b in r.json()["data"])
    src = _raw(state, "balance_transactions")[3]
    r = http.get("/v1/balance_transactions", params={"source": src["source"]})
    assert src["id"] in [b["id"] for b in r.json()["data"]]
    r = http.get("/v1/events", params={"types[0]": "payout.paid", "types[1]": "payout.failed", "limit": 100})
    assert {e["type"] for e in r.json()["data"]} == {"payout.paid", "payout.failed"}
    r = http.get("/v1/events", params={"type": "charge.dispute.*", "limit": 100})
    assert r.json()["data"] and all(e["type"].startswith("charge.dispute.") for e in r.json()["data"])
    assert http.get("/v1/charges", params={"bogus": "1"}).json()["error"]["param"] == "bogus"


def test_payout_membership_and_sums(client: stripe.StripeClient, state: EmulatorState) -> None:
    payouts = _all(client, "payouts")
    assert payouts
    owner: dict[str, str] = {}
    for po in payouts:
        items = _all(client, "balance_transactions", payout=po.id)
        if not po.automatic:  # Stripe does not itemise a manual payout
            assert items == []
            continue
        own = [b for b in items if b.type == "payout"]
        assert [b.id for b in own] == [po.balance_transaction] and own[0].amount == -po.amount
        assert sum(b.net for b in items if b.type != "payout") == po.amount
        assert sum(b.net for b in items) == 0
        assert all(b.currency == po.currency and b.available_on <= po.created for b in items)
        for b in items:
            assert b.id not in owner, "a balance transaction belongs to one payout"
            owner[b.id] = po.id
    failed = [p for p in payouts if p.status == "failed"]
    # One bounced after it was paid, one never reached the bank (failed in transit).
    failure_bts = {p.id: client.v1.balance_transactions.retrieve(p.failure_balance_transaction) for p in failed}
    assert sorted(failure_bts[p.id].created >= p.arrival_date for p in failed) == [False, True]
    for p in failed:
        failure_bt = failure_bts[p.id]
        assert failure_bt.type == "payout_failure" and failure_bt.amount == p.amount
        assert failure_bt.id in owner and owner[failure_bt.id] != p.id, "swept into a later payout"
    manual = [p for p in payouts if not p.automatic]
    assert manual and {p.currency for p in manual} == {"gbp"}
    assert any(p.amount < 0 for p in payouts), "a negative balance is debited from the bank"


# ---- expand ----------------------------------------------------------------------------------


def test_expand(client: stripe.StripeClient, http: httpx.Client, state: EmulatorState) -> None:
    page = client.v1.charges.list(params={"limit": 20, "expand": ["data.balance_transaction", "data.customer"]})
    for ch in page.data:
        assert ch.balance_transaction.object == "balance_transaction" and ch.balance_transaction.source == ch.id
        if ch.customer is not None:
            assert ch.customer.object == "customer"
    bt = client.v1.balance_transactions.list(params={"limit": 1, "type": "refund"}).data[0]
    deep = client.v1.balance_transactions.retrieve(bt.id, params={"expand": ["source.charge.customer"]})
    assert deep.source.object == "refund" and deep.source.charge.object == "charge"
    refunded = next(c for c in _raw(state, "charges") if c["amount_refunded"])
    with_refunds = client.v1.charges.retrieve(refunded["id"], params={"expand": ["refunds"]})
    assert sum(r.amount for r in with_refunds.refunds.data) == refunded["amount_refunded"]
    r = http.get(f"/v1/charges/{refunded['id']}", params={"expand[]": "outcome"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "expand"
    r = http.get("/v1/charges", params={"expand[]": "customer"})
    assert r.status_code == 400
    r = http.get(f"/v1/balance_transactions/{bt.id}", params={"expand[]": "source.charge.customer.x.y"})
    assert r.status_code == 400


# ---- errors, auth, idempotency, limits --------------------------------------------------------


def test_connect_account_header_is_accepted(server: EmulatorServer, state: EmulatorState) -> None:
    connected = stripe.StripeClient(KEY, stripe_account="acct_1Connected", base_addresses={"api": server.url})
    assert len(connected.v1.payouts.list(params={"limit": 100}).data) == min(100, state.summary()["counts"]["payouts"])


def test_wrong_key_is_401(server: EmulatorServer, http: httpx.Client) -> None:
    bad = stripe.StripeClient("sk_test_wrong_key_123456", base_addresses={"api": server.url})
    with pytest.raises(stripe.AuthenticationError) as err:
        bad.v1.charges.list()
    assert err.value.http_status == 401
    r = httpx.get(server.url + "/v1/charges")
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"


def test_unknown_id_and_path_are_404(client: stripe.StripeClient, http: httpx.Client) -> None:
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.payouts.retrieve("po_missing")
    assert err.value.http_status == 404 and err.value.code == "resource_missing" and err.value.param == "id"
    assert http.get("/v1/nothing_here").status_code == 404
    assert http.delete("/v1/charges").status_code == 404


def test_idempotent_post_is_replayed(live) -> None:
    st, srv, client, h = live
    before = st.summary()["counts"]["customers"]
    a = client.v1.customers.create(params={"name": "Idem Co"}, options={"idempotency_key": "idem-1"})
    b = client.v1.customers.create(params={"name": "Idem Co"}, options={"idempotency_key": "idem-1"})
    assert a.id == b.id and st.summary()["counts"]["customers"] == before + 1
    r = h.post("/v1/customers", data={"name": "Idem Co"}, headers={"Idempotency-Key": "idem-1"})
    assert r.headers["Idempotent-Replayed"] == "true" and r.json()["id"] == a.id
    with pytest.raises(stripe.IdempotencyError):
        client.v1.customers.create(params={"name": "Other"}, options={"idempotency_key": "idem-1"})


def test_rate_limit_and_faults(live) -> None:
    st, srv, client, h = live
    h.post("/_emulator/requests/reset")
    h.post("/_emulator/config", json={"rate_limit_per_s": 3})
    try:
        with pytest.raises(stripe.RateLimitError) as err:
            for _ in range(20):
                client.v1.charges.list(params={"limit": 1})
        assert err.value.http_status == 429 and err.value.json_body["error"]["code"] == "rate_limit"
        r = h.get("/v1/charges")
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    finally:
        h.post("/_emulator/config", json={"rate_limit_per_s": None})
    counters = h.get("/_emulator/requests").json()
    assert counters["rate_limited"] >= 2 and counters["total"] > counters["rate_limited"]
    h.post("/_emulator/config", json={"fault_5xx_rate": 1.0})
    try:
        with pytest.raises(stripe.APIError) as fault:
            client.v1.charges.list()
        assert fault.value.http_status == 500
    finally:
        h.post("/_emulator/config", json={"fault_5xx_rate": 0.0})
    assert h.get("/_emulator/requests").json()["server_errors"] == 1
    assert client.v1.charges.list(params={"limit": 1}).data


# ---- writes and admin ---------------------------------------------------------------------------


def test_refund_through_sdk(live) -> None:
    st, srv, client, h = live
    charge = next(c for c in _raw(st, "charges") if not c["amount_refunded"] and not c["disputed"])
    st.set_clock(now=END + 3 * 3600)
    refund = client.v1.refunds.create(
        params={"charge": charge["id"], "amount": charge["amount"] // 2, "reason": "requested_by_customer"}
    )
    assert refund.created == END + 3 * 3600 and refund.status == "succeeded"
    after = client.v1.charges.retrieve(charge["id"])
    assert after.amount_refunded == charge["amount"] // 2 and after.refunded is False
    bt = client.v1.balance_transactions.retrieve(refund.balance_transaction)
    assert (bt.type, bt.reporting_category, bt.amount, bt.fee, bt.net) == (
        "refund",
        "refund",
        -refund.amount,
        0,
        -refund.amount,
    )
    events = client.v1.events.list(params={"limit": 3, "created": {"gte": END + 3 * 3600}}).data
    assert {e.type for e in events} == {"charge.refunded", "refund.created", "charge.refund.updated"}
    charge_refunded = next(e for e in events if e.type == "charge.refunded")
    assert charge_refunded.data.previous_attributes.amount_refunded == 0
    assert charge_refunded.request.id is not None
    full = client.v1.refunds.create(params={"charge": charge["id"]})
    assert full.amount == charge["amount"] - charge["amount"] // 2
    assert client.v1.charges.retrieve(charge["id"]).refunded is True
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.refunds.create(params={"charge": charge["id"]})
    assert err.value.code == "charge_already_refunded"
    # the charge.succeeded event still shows the charge as it was
    created_ev = next(e for e in _all(client, "events", type="charge.succeeded") if e.data.object.id == charge["id"])
    assert created_ev.data.object.amount_refunded == 0


def test_customer_update_emits_previous_attributes(live) -> None:
    st, srv, client, h = live
    cus = client.v1.customers.create(
        params={"name": "Old Name", "email": "a@example.com", "address": {"line1": "1 Old St", "city": "Austin"}}
    )
    upd = client.v1.customers.update(
        cus.id, params={"name": "New Name", "address": {"line1": "2 New St"}, "metadata": {"sage_id": "C42"}}
    )
    assert upd.name == "New Name" and upd.address.line1 == "2 New St" and upd.address.city == "Austin"
    assert upd.metadata["sage_id"] == "C42"
    ev = client.v1.events.list(params={"type": "customer.updated", "limit": 1}).data[0]
    assert ev.data.object.id == cus.id
    prev = ev.data.previous_attributes
    assert prev.name == "Old Name" and prev.address.line1 == "1 Old St" and prev.metadata.sage_id is None


def test_payout_fail_admin(live) -> None:
    st, srv, client, h = live
    paid = next(p for p in _all(client, "payouts") if p.status == "paid")
    r = h.post(f"/_emulator/payouts/{paid.id}/fail", json={"failure_code": "account_closed"})
    assert r.status_code == 200 and r.json()["status"] == "failed"
    po = client.v1.payouts.retrieve(paid.id, params={"expand": ["failure_balance_transaction"]})
    assert po.failure_code == "account_closed"
    fbt = po.failure_balance_transaction
    assert (fbt.type, fbt.amount, fbt.net, fbt.source) == ("payout_failure", po.amount, po.amount, po.id)
    ev = client.v1.events.list(params={"type": "payout.failed", "limit": 1}).data[0]
    assert ev.data.object.id == po.id and ev.data.previous_attributes.status == "paid"
    assert h.post(f"/_emulator/payouts/{paid.id}/fail").status_code == 400
    swept = h.post("/_emulator/payouts/run").json()["payouts"]
    members = {b.id for po_id in swept for b in _all(client, "balance_transactions", payout=po_id)}
    assert fbt.id in members


def test_dispute_close_admin(live) -> None:
    st, srv, client, h = live
    charge = next(
        c for c in _raw(st, "charges") if not c["disputed"] and not c["amount_refunded"] and c["currency"] == "usd"
    )
    dp = h.post(f"/_emulator/charges/{charge['id']}/dispute").json()
    assert dp["status"] == "needs_response" and dp["balance_transactions"][0]["reporting_category"] == "dispute"
    r = h.post(f"/_emulator/disputes/{dp['id']}/close", json={"status": "won"})
    assert r.status_code == 200 and r.json()["status"] == "won"
    reversal = r.json()["balance_transactions"][-1]
    assert reversal["reporting_category"] == "dispute_reversal"
    assert (reversal["amount"], reversal["fee"]) == (charge["amount"], -DISPUTE_FEES[charge["currency"]])
    assert reversal["net"] == reversal["amount"] - reversal["fee"]
    # Both events name this dispute (looked up by type: other tests of the module add newer events).
    for kind in ("charge.dispute.closed", "charge.dispute.funds_reinstated"):
        events = client.v1.events.list(params={"type": kind, "limit": 100}).data
        assert dp["id"] in {e.data.object.id for e in events}, kind
    assert h.post(f"/_emulator/disputes/{dp['id']}/close", json={"status": "lost"}).status_code == 400


def test_signed_webhook_is_verified_by_sdk(live) -> None:
    st, srv, client, h = live
    received: list[tuple[bytes, str]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server API
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((body, self.headers["Stripe-Signature"]))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    receiver = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        h.post("/_emulator/config", json={"webhook_urls": [f"http://127.0.0.1:{receiver.server_port}/hook"]})
        cus = client.v1.customers.create(params={"email": "hook@example.com"})
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        h.post("/_emulator/config", json={"webhook_urls": []})
        receiver.shutdown()
    assert received
    payload, header = received[0]
    event = stripe.Webhook.construct_event(payload.decode(), header, "whsec_emulator")
    assert event.type == "customer.created" and event.data.object.id == cus.id
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload.decode(), header, "whsec_other")


def test_load_golden_serves_objects_as_given() -> None:
    golden = json.loads(GOLDEN.read_text())["stripe"]
    st = load_golden(EmulatorState(EmulatorConfig(api_key=KEY)), GOLDEN)
    with (
        EmulatorServer(st, port=0) as srv,
        httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {KEY}"}) as h,
    ):
        for coll in ("customers", "charges", "refunds", "disputes", "balance_transactions", "payouts"):
            for obj in golden[coll]:
                assert h.get(f"/v1/{coll}/{obj['id']}").json() == obj
            listed = h.get(f"/v1/{coll}", params={"limit": 100}).json()["data"]
            assert sorted(o["id"] for o in listed) == sorted(o["id"] for o in golden[coll])
        client = stripe.StripeClient(KEY, base_addresses={"api": srv.url})
        for po, members in golden["balance_transactions_by_payout"].items():
            assert {b.id for b in _all(client, "balance_transactions", payout=po)} == set(members)


# ---- shapes ----------------------------------------------------------------------------------


def test_every_response_body_matches_the_spec(http: httpx.Client, server: EmulatorServer, state: EmulatorState) -> None:
    expansions = {
        "charges": ["data.balance_transaction", "data.customer", "data.invoice", "data.payment_intent", "data.refunds"],
        "refunds": ["data.balance_transaction", "data.charge"],
        "balance_transactions": ["data.source"],
        "payouts": ["data.balance_transaction", "data.failure_balance_transaction"],
        "disputes": ["data.charge"],
        "invoices": ["data.charge", "data.customer", "data.payment_intent"],
        "payment_intents": ["data.latest_charge", "data.customer", "data.invoice"],
    }
    for coll, schema in COLLECTIONS.items():
        body = http.get(f"/v1/{coll}", params={"limit": 100}).json()
        assert validate_list(schema, body, strict=True) == [], coll
        one = http.get(f"/v1/{coll}/{body['data'][-1]['id']}").json()
        assert validate(schema, one, strict=True) == [], coll
        if coll in expansions:
            params = [("limit", "100")] + [("expand[]", p) for p in expansions[coll]]
            expanded = http.get(f"/v1/{coll}", params=params).json()
            assert validate_list(schema, expanded, strict=True) == [], f"{coll} expanded"
    # every event type once, with its data.object checked against the object's own schema
    seen: set[str] = set()
    for ev in state.iter_rendered("events"):
        if ev["type"] in seen:
            continue
        seen.add(ev["type"])
        served = http.get(f"/v1/events/{ev['id']}").json()
        assert validate("event", served, strict=True) == []
        obj = served["data"]["object"]
        assert validate(obj["object"], obj, strict=True) == [], ev["type"]
    assert {"charge.succeeded", "charge.refunded", "payout.paid", "payout.failed", "charge.dispute.closed"} <= seen
    errors = [
        http.get("/v1/charges/ch_nope"),
        http.get("/v1/charges", params={"limit": 0}),
        httpx.get(server.url + "/v1/charges", headers={"Authorization": "Bearer sk_wrong_key_00000000"}),
        http.get("/v1/unknown"),
        http.post("/v1/refunds", data={"charge": "ch_nope"}),
    ]
    for r in errors:
        assert r.status_code >= 400 and validate("error", r.json(), strict=True) == [], r.text


def test_validator_catches_shape_errors(state: EmulatorState) -> None:
    charge = next(iter(state.iter_rendered("charges")))
    assert validate("charge", charge) == []
    broken = dict(charge)
    del broken["amount"]
    assert validate("charge", broken) == ["$.amount: required field missing"]
    assert any("$.status" in e for e in validate("charge", {**charge, "status": "weird"}))
    assert any("$.livemode" in e for e in validate("charge", {**charge, "livemode": None}))
    assert any("$.customer" in e for e in validate("charge", {**charge, "customer": 5}))
    assert validate("charge", {**charge, "surprise": 1}, strict=True) == ["$.surprise: property not in the schema"]


# ---- generator -------------------------------------------------------------------------------


def test_generator_invariants(state: EmulatorState) -> None:
    bts = _raw(state, "balance_transactions")
    for b in bts:
        assert isinstance(b["amount"], int) and b["net"] == b["amount"] - b["fee"]
        assert b["fee"] == sum(f["amount"] for f in b["fee_details"])
    categories = Counter(b["reporting_category"] for b in bts)
    assert {"charge", "refund", "dispute", "dispute_reversal", "payout", "payout_reversal"} <= set(categories)
    assert 3000 <= len(bts) <= 6000
    assert {"usd", "eur", "gbp", "jpy", "kwd"} <= {b["currency"] for b in bts}
    assert any(b["type"] == "refund" and b["fee"] < 0 for b in bts), "some refunds return part of the fee"
    for d in _raw(state, "disputes"):
        withdrawal = d["balance_transactions"][0]
        assert withdrawal["type"] == "adjustment" and withdrawal["fee"] > 0
        if withdrawal["currency"] == d["currency"]:
            assert withdrawal["amount"] == -d["amount"]
        else:  # presented in EUR, settled in USD at the charge's rate
            assert withdrawal["amount"] == -round(d["amount"] * withdrawal["exchange_rate"])
        if d["status"] == "won":  # the dispute fee comes back, or the network keeps it
            assert d["balance_transactions"][1]["fee"] in (-withdrawal["fee"], 0)
    # A real account's other movements are all there.
    kinds = {(b["type"], b["reporting_category"]) for b in bts}
    assert {
        ("stripe_fee", "fee"),
        ("tax_fee", "tax"),
        ("adjustment", "refund_failure"),
        ("topup", "topup"),
        ("payout_minimum_balance_hold", "payout_minimum_balance_hold"),
        ("reserve_transaction", "risk_reserved_funds"),
        ("adjustment", "other_adjustment"),
    } <= kinds
    assert any(b["currency"] == "usd" and b["exchange_rate"] for b in bts), "EUR charges settled in USD"
    invoices_all = _raw(state, "invoices")
    assert any(i["total_discount_amounts"] for i in invoices_all)
    assert any(t["inclusive"] for i in invoices_all for t in i["total_tax_amounts"])
    jpy = [c for c in _raw(state, "charges") if c["currency"] == "jpy"]
    assert jpy and all(c["amount"] % 100 == 0 for c in jpy)  # whole yen, no cents
    members: dict[str, list[dict[str, Any]]] = {}
    payout_of = state.coll("balance_transactions").extern["payout"]
    for b in bts:
        if b["id"] in payout_of:
            members.setdefault(payout_of[b["id"]], []).append(b)
    for po in _raw(state, "payouts"):
        if not po["automatic"]:
            assert po["id"] not in members
            continue
        items = members[po["id"]]
        assert sum(b["net"] for b in items if b["type"] != "payout") == po["amount"]
        if po["arrival_date"] > END:
            assert po["status"] in ("pending", "in_transit")
    charges = {c["id"]: c for c in _raw(state, "charges")}
    customers = {c["id"]: c for c in _raw(state, "customers")}
    for c in charges.values():
        if c["customer"]:
            assert customers[c["customer"]]["created"] < c["created"]
        if c["metadata"].get("tax_amount"):
            assert 0 < int(c["metadata"]["tax_amount"]) < c["amount"]
    invoices = _raw(state, "invoices")
    assert invoices
    for inv in invoices:
        discount = sum(d["amount"] for d in inv["total_discount_amounts"])
        included = sum(t["amount"] for t in inv["total_tax_amounts"] if t["inclusive"])
        assert inv["total"] == inv["subtotal"] - discount + inv["tax"] - included == charges[inv["charge"]]["amount"]
        assert sum(line["amount"] for line in inv["lines"]["data"]) == inv["subtotal"]
    by_hour = state.summary()["counts_by_hour"]["charges"]
    assert sum(by_hour.values()) == len(charges)


def test_generator_is_deterministic() -> None:
    def run() -> tuple[dict[str, Any], list[str]]:
        st = generate(EmulatorState(EmulatorConfig()), seed=3, days=5, volume=0.5, end=END)
        return st.summary()["balance_transactions"], [b["id"] for b in st.iter_rendered("balance_transactions")]

    assert run() == run()


def test_command_line_serves_in_its_own_process(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "stripe_sage_sandboxes.stripe_emulator",
        "--port",
        str(port),
        "--days",
        "3",
        "--seed",
        "5",
    ]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[2], stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                summary = httpx.get(url + "/_emulator/summary").json()
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "emulator did not start"
                time.sleep(0.1)
        assert summary["counts"]["charges"] > 0
        client = stripe.StripeClient(KEY, base_addresses={"api": url})
        assert len(_all(client, "charges")) == summary["counts"]["charges"]
        assert httpx.post(url + "/_emulator/clock", json={"advance_seconds": 60}).json()["now"] > 0
    finally:
        proc.terminate()
        proc.wait(10)


# ---- API versions ----------------------------------------------------------------------------


def test_objects_render_at_the_requested_api_version(server: EmulatorServer, http: httpx.Client) -> None:
    from stripe_sage_sandboxes.stripe_emulator.versions import sdk_fields

    fixtures = json.loads((GOLDEN.parents[1] / "reference" / "stripe-openapi" / "fixtures3.json").read_text())[
        "resources"
    ]
    current = {"Stripe-Version": stripe.api_version}
    old = http.get("/v1/invoices", params={"limit": 100})
    assert old.headers["Stripe-Version"] == "2023-08-16"  # the account default without a header
    by_id = {i["id"]: i for i in old.json()["data"]}
    r = http.get("/v1/invoices", params=[("limit", "100"), ("expand[]", "data.payments")], headers=current)
    assert r.headers["Stripe-Version"] == stripe.api_version
    invoices = r.json()["data"]
    assert invoices
    for inv in invoices:
        # The fields removed in 2025-03-31.basil are gone; every field is one the SDK's Invoice declares,
        # and every field of the current fixture (bar the includable ones) is there.
        assert not {"charge", "payment_intent", "tax", "total_tax_amounts", "paid"} & set(inv)
        assert set(inv) <= sdk_fields("invoice")
        assert set(fixtures["invoice"]) & sdk_fields("invoice") - {"payments"} <= set(inv)
        before = by_id[inv["id"]]
        assert [t["amount"] for t in inv["total_taxes"]] == [t["amount"] for t in before["total_tax_amounts"]]
        assert [t["tax_behavior"] == "inclusive" for t in inv["total_taxes"]] == [
            t["inclusive"] for t in before["total_tax_amounts"]
        ]
        [payment] = inv["payments"]["data"]
        assert set(payment) <= sdk_fields("invoice_payment")
        assert payment["payment"] == (
            {"type": "payment_intent", "payment_intent": before["payment_intent"]}
            if before["payment_intent"]
            else {"type": "charge", "charge": before["charge"]}
        )
        for line in inv["lines"]["data"]:
            assert set(line) <= sdk_fields("line_item") and "tax_amounts" not in line and "taxes" in line
    # Includable: only when expanded. Fields that no longer exist cannot be expanded.
    plain = http.get(f"/v1/invoices/{invoices[0]['id']}", headers=current).json()
    assert "payments" not in plain
    assert http.get("/v1/charges", params={"expand[]": "data.invoice"}, headers=current).status_code == 400
    charges = http.get("/v1/charges", params={"limit": 100}, headers=current).json()["data"]
    assert all("invoice" not in c and set(c) <= sdk_fields("charge") for c in charges)
    # The SDK itself, at its own version, reads them as typed objects.
    client = stripe.StripeClient(KEY, base_addresses={"api": server.url})
    typed = client.v1.invoices.retrieve(invoices[0]["id"], params={"expand": ["payments"]})
    assert typed.payments.data[0].invoice == invoices[0]["id"] and typed.total_taxes is not None
