"""The Intacct target against the emulator over a socket: every exchange validated against Sage's
OpenAPI documents, error mapping per `ia::error` kind, OAuth token handling, look-before-write after a
lost response, and the golden example tying to the cent through Intacct."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import psycopg
import pytest
from intacct_contract import validate_exchange
from intacct_helpers import intacct_emulator, target_for
from load_helpers import expected_tb, ledger, post_everything, write_mapping

from stripe_sage_pipeline.load.redrive import redrive
from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_pipeline.sage.client import BREAKER_THRESHOLD, CircuitBreaker
from stripe_sage_pipeline.sage.errors import Conflict, CredentialsError, RecordInvalid, SageUnavailable
from stripe_sage_pipeline.transform import build as transform

JE_BODY = {
    "journal": "ST",
    "posting_date": "2026-07-14",
    "description": "Stripe charge ch_1",
    "reference": "txn_1",
    "currency": "USD",
    "lines": [
        {"glacnt": "1150", "debit": "96.80", "credit": "0.00", "memo": "txn_1 charge"},
        {"glacnt": "6100", "debit": "3.20", "credit": "0.00", "memo": "txn_1 fee"},
        {"glacnt": "4000", "debit": "0.00", "credit": "100.00", "memo": "txn_1 revenue"},
    ],
}
CUSTOMER = {
    "custno": "ACME-1",
    "company": "Acme Corp",
    "email": "ap@acme.example",
    "city": "Springfield",
    "country": "US",
    "currency": "USD",
}
INVOICE = {
    "doc_type": "invoice",
    "custno": "ACME-1",
    "invdate": "2026-07-14",
    "currency": "USD",
    "description": "Stripe charge ch_1",
    "reference": "ch_1",
    "lines": [
        {
            "description": "Widget",
            "quantity": "2",
            "unit_price": "50.00",
            "revenue_glacnt": "4000",
            "tax_amount": "8.00",
            "tax_glacnt": "2200",
        }
    ],
}


def _receipt(invno: str) -> dict:
    return {
        "custno": "ACME-1",
        "receipt_date": "2026-07-14",
        "amount": "108.00",
        "fee_amount": "3.43",
        "currency": "USD",
        "deposit_glacnt": "1150",
        "fee_glacnt": "6100",
        "receipt_type": "receipt",
        "reference": "ch_1",
        "description": "Stripe charge ch_1 (txn_c1)",
        "applications": [{"invno": invno, "amount": "108.00"}],
    }


def _validate_log(srv) -> set[str]:
    matched = set()
    for e in srv.request_log:
        if e.path.endswith("/oauth2/token") or e.status == 504:
            continue
        matched.add(validate_exchange(e.method, e.path, e.body, e.status, e.response))
    return matched


def test_every_exchange_validates_against_sages_openapi():
    """Customer, invoice, payment (+ fee entry), journal entry, reversal, queries, GL read-back and errors."""
    with intacct_emulator(closed_periods=["2026-06"]) as srv:
        target, counter = target_for(srv)
        cust = target.post("customers", CUSTOMER, idempotency_key="k-c", external_ref="cus_1")
        assert (cust.status, cust.sage_id, cust.record["external_ref"]) == ("created", "ACME-1", "cus_1")
        inv = target.post("invoices", INVOICE, idempotency_key="k-i", external_ref="ch_1")
        rec = target.post("cash-receipts", _receipt(inv.sage_id), idempotency_key="k-r", external_ref="txn_c1")
        je = target.post("journal-entries", JE_BODY, idempotency_key="k-j", external_ref="txn_1")
        rev = target.reverse_journal_entry(
            je.sage_id, "k-rev", posting_date="2026-07-14", external_ref="txn_1~r1", description="Reversal of txn_1"
        )
        assert {r.status for r in (inv, rec, je, rev)} == {"created"}
        updated = target.update_customer("ACME-1", {"email": "finance@acme.example"}, "k-u")
        assert updated["email"] == "finance@acme.example" and updated["company"] == "Acme Corp"
        assert [c["custno"] for c in target.changed_customers(None)] == ["ACME-1"]
        with pytest.raises(RecordInvalid):
            target.post(
                "journal-entries",
                {**JE_BODY, "posting_date": "2026-06-30"},
                idempotency_key="k-x",
                external_ref="txn_2",
            )
        gl = target.gl_movement()
        assert gl == {"usd": {"1150": "104.57", "1200": "0.00", "2200": "-8.00", "4000": "-100.00", "6100": "3.43"}}
        assert {a["glacnt"] for a in target.accounts()} >= {"1010", "1150", "4000", "9999"}
        matched = _validate_log(srv)
    assert matched == {
        "/objects/accounts-receivable/customer",
        "/objects/accounts-receivable/customer/{key}",
        "/objects/accounts-receivable/invoice",
        "/objects/accounts-receivable/payment",
        "/objects/general-ledger/journal-entry",
        "/objects/general-ledger/journal-entry/{key}",
        "/services/core/query",
    }
    target.close()


def test_the_contract_check_catches_a_field_sage_does_not_declare():
    with pytest.raises(AssertionError, match="do(es)? not declare"):
        validate_exchange(
            "POST",
            "/ia/api/v1/objects/general-ledger/journal-entry",
            {
                "glJournal": {"id": "ST"},
                "postingDate": "2026-07-14",
                "description": "x",
                "lines": [{"txnType": "debit", "txnAmount": "1.00", "glAccount": {"id": "1"}, "debitAmount": "1.00"}]
                * 2,
            },
            201,
            {"ia::result": {"key": "1", "id": "1", "href": "/x"}},
        )
    with pytest.raises(AssertionError, match="txnType"):
        validate_exchange(
            "POST",
            "/ia/api/v1/objects/general-ledger/journal-entry",
            {
                "glJournal": {"id": "ST"},
                "postingDate": "2026-07-14",
                "description": "x",
                "lines": [{"txnAmount": "1.00", "glAccount": {"id": "1"}}] * 2,
            },
            201,
            {},
        )


def _unbalanced() -> dict:
    lines = [dict(ln) for ln in JE_BODY["lines"]]
    lines[0]["debit"] = "96.81"
    return {**JE_BODY, "lines": lines}


@pytest.mark.parametrize(
    ("body", "resource", "reason", "field"),
    [
        ({**JE_BODY, "posting_date": "2026-06-30"}, "journal-entries", "PeriodClosed", "postingDate"),
        (
            {**JE_BODY, "lines": [{**JE_BODY["lines"][0], "glacnt": "1999"}, *JE_BODY["lines"][1:]]},
            "journal-entries",
            "AccountNotFound",
            "lines.0.glAccount.id",
        ),
        (
            {**JE_BODY, "lines": [*JE_BODY["lines"][:2], {**JE_BODY["lines"][2], "glacnt": "7900"}]},
            "journal-entries",
            "AccountInactive",
            "lines.2.glAccount.id",
        ),
        (
            {**JE_BODY, "lines": [{**JE_BODY["lines"][0], "glacnt": "1000"}, *JE_BODY["lines"][1:]]},
            "journal-entries",
            "AccountInactive",
            "lines.0.glAccount.id",
        ),
        (None, "journal-entries", "Unbalanced", "lines"),
        ({**INVOICE, "custno": "NOPE-1"}, "invoices", "CustomerNotFound", "customer.id"),
        (
            {
                **JE_BODY,
                "currency": "JPY",
                "lines": [{**ln, "debit": ln["debit"], "credit": ln["credit"]} for ln in JE_BODY["lines"]],
            },
            "journal-entries",
            "InvalidAmount",
            "lines.0.txnAmount",
        ),
    ],
)
def test_ia_errors_map_to_the_dead_letter_reasons(body, resource, reason, field):
    with intacct_emulator(closed_periods=["2026-06"], inactive_accounts=("7900",)) as srv:
        target, _ = target_for(srv)
        with pytest.raises(RecordInvalid) as err:
            target.post(resource, body or _unbalanced(), idempotency_key="k", external_ref="txn_1")
        assert err.value.status == 400
        assert (err.value.details[0]["code"], err.value.details[0]["field"]) == (reason, field)
        assert err.value.details[0]["errorId"]
        _validate_log(srv)
        target.close()


def test_over_application_and_a_taken_custno():
    with intacct_emulator() as srv:
        target, _ = target_for(srv)
        target.post("customers", CUSTOMER, idempotency_key="k-c", external_ref="cus_1")
        inv = target.post("invoices", INVOICE, idempotency_key="k-i", external_ref="ch_1")
        over = _receipt(inv.sage_id) | {"applications": [{"invno": inv.sage_id, "amount": "108.01"}]}
        with pytest.raises(RecordInvalid) as err:
            target.post("cash-receipts", over, idempotency_key="k-r", external_ref="txn_c1")
        assert err.value.details[0]["code"] == "OverApplied"
        with pytest.raises(Conflict, match="ACME-1"):
            target.post("customers", CUSTOMER, idempotency_key="k-c2", external_ref="cus_OTHER")
        target.close()


def test_token_is_renewed_before_expiry_and_once_after_a_401():
    with intacct_emulator(token_ttl_s=600) as srv:
        target, _ = target_for(srv)
        target.accounts()
        first = target.token.value
        assert target.token.renewals == 1
        # Within the renewal margin of its expiry (60 s): renewed before use, never answered 401.
        target.token.expires_at = time.monotonic() + 30
        target.accounts()
        assert target.token.renewals == 2 and target.token.value != first
        assert 401 not in {e.status for e in srv.request_log}
        # The server expires it early; the client still believes it good: one 401, one renewal, the retry works.
        srv.app.expire_tokens()
        target.accounts()
        assert target.token.renewals == 3
        assert [e.status for e in srv.request_log if e.path.endswith("/services/core/query")].count(401) == 1
        srv.queue_faults("401", "401")
        with pytest.raises(CredentialsError, match="INTACCT_CLIENT_ID"):
            target.accounts()
        target.close()


def test_a_refused_grant_is_a_credentials_error():
    with intacct_emulator() as srv:
        target, counter = target_for(srv, client_secret="wrong")
        with pytest.raises(CredentialsError, match="invalid_client"):
            target.post("journal-entries", JE_BODY, idempotency_key="k", external_ref="txn_1")
        assert counter.count == 1  # the token request only: nothing retried, nothing posted
        target.close()


def test_a_lost_response_is_found_not_posted_twice_and_limits_are_honoured():
    with intacct_emulator() as srv:
        target, _ = target_for(srv)
        target.accounts()
        # A 429 on the look-up, then a 503 on the POST: both retried, each posts once.
        srv.queue_faults("429")
        first = target.post("journal-entries", JE_BODY, idempotency_key="k1", external_ref="txn_1")
        srv.queue_faults("ok", "503")
        second = target.post(
            "journal-entries", {**JE_BODY, "reference": "txn_2"}, idempotency_key="k2", external_ref="txn_2"
        )
        log_before = len(srv.request_log)
        # The look-up passes, the POST commits and its answer is lost: the retry looks again and finds it.
        srv.queue_faults("ok", "commit-504")
        third = target.post(
            "journal-entries", {**JE_BODY, "reference": "txn_3"}, idempotency_key="k3", external_ref="txn_3"
        )
        assert (first.status, second.status, third.status) == ("created", "created", "already_exists")
        posts = [e for e in srv.request_log[log_before:] if e.method == "POST" and e.path.endswith("journal-entry")]
        assert [e.status for e in posts] == [504]
        refs = [e["referenceNumber"] for e in srv.app.store.books.entries.values()]
        assert sorted(refs) == ["txn_1", "txn_2", "txn_3"]
        assert any(e.status == 429 for e in srv.request_log) and any(e.status == 503 for e in srv.request_log)
        target.close()


def test_intacct_down_opens_the_breaker_and_a_probe_after_the_cooldown_closes_it():
    """5xx in a row (Intacct down) open the shared-class breaker: the request fails with SageUnavailable after
    BREAKER_THRESHOLD attempts although retries were left, the next fails without a request, and after the
    cooldown one probe is sent and closes it. 429s are answers: a burst of them never opens it."""
    now = [0.0]
    with intacct_emulator() as srv:
        breaker = CircuitBreaker(srv.base_url, name="Sage Intacct", clock=lambda: now[0])
        target, counter = target_for(srv, max_retries=BREAKER_THRESHOLD + 4, breaker=breaker)
        srv.queue_faults(*["429"] * (BREAKER_THRESHOLD + 2))
        assert target.accounts() and not breaker.is_open
        srv.queue_faults(*["503"] * (BREAKER_THRESHOLD - 1), "commit-504")
        sent = counter.count
        with pytest.raises(SageUnavailable, match=rf"Sage Intacct is unavailable at {srv.base_url}: HTTP 504"):
            target.post("journal-entries", JE_BODY, idempotency_key="k1", external_ref="txn_1")
        assert counter.count - sent == BREAKER_THRESHOLD  # the look-up's attempts; the POST was never sent
        sent = counter.count
        with pytest.raises(SageUnavailable):
            target.post("journal-entries", JE_BODY, idempotency_key="k1", external_ref="txn_1")
        assert counter.count == sent
        now[0] = breaker.cooldown_s + 1
        result = target.post("journal-entries", JE_BODY, idempotency_key="k1", external_ref="txn_1")
        assert result.status == "created" and not breaker.is_open
        assert [e["referenceNumber"] for e in srv.app.store.books.entries.values()] == ["txn_1"]
        target.close()


def test_the_emulator_refuses_requests_without_a_token():
    with intacct_emulator() as srv:
        answer = httpx.post(f"{srv.base_url}/objects/general-ledger/journal-entry", json={})
        assert answer.status_code == 401
        assert answer.json()["ia::result"]["ia::error"]["code"] == "invalidToken"


FAULTS = {"fault_429_rate": 0.05, "fault_503_rate": 0.05, "fault_commit_504_rate": 0.05, "seed": 3}


@pytest.mark.parametrize(
    ("mode", "revenue", "faults"), [("payout_summary", "direct", {}), ("detail", "invoice_driven", FAULTS)]
)
def test_golden_ties_to_the_cent_through_intacct(mode, revenue, faults, fresh_db, golden_marts, tmp_path, monkeypatch):
    """The golden example through the Intacct target (invoice-driven: under 429/503/commit-then-504 faults):
    GL read back = golden TB, every record once; a re-run posts nothing."""
    mapping = write_mapping(tmp_path, monkeypatch, posting_mode=mode, revenue_mode=revenue)
    g = golden_marts.clone_into(fresh_db)
    with intacct_emulator(**faults) as srv:
        target, counter = target_for(srv)
        stats = post_everything(fresh_db, target, mapping, counter)
        assert sum(s.dead_lettered + s.transient_failures for s in stats.values()) == 0
        got = {k: Decimal(v) for k, v in target.gl_movement()["usd"].items()}
        want = expected_tb(g)
        assert {k: v for k, v in got.items() if v} == {k: v for k, v in want.items() if v}
        if revenue == "invoice_driven":
            assert (stats["invoices"].created, stats["cash-receipts"].created) == (4, 4)
            assert len(srv.app.store.books.payments) == 4
        rows = ledger(fresh_db)
        assert rows and {r["status"] for r in rows} == {"posted"}
        books = srv.app.store.books
        refs = (
            [e["referenceNumber"] for e in books.entries.values() if e["moduleName"] == "2.GL"]
            + [p["documentNumber"] for p in books.payments.values()]
            + [c["id"] for c in books.customers.values()]
        )
        assert len(refs) == len(set(refs))  # nothing twice, whatever the faults
        if faults:
            assert {504, 503, 429} <= {e.status for e in srv.request_log}
        books_before = len(srv.app.store.books.entries)
        again = post_everything(fresh_db, target, mapping, counter)
        assert sum(s.posted for s in again.values()) == 0
        assert len(srv.app.store.books.entries) == books_before
        _validate_log(srv)
        target.close()


def test_closed_period_redrive_then_changed_mapping_through_intacct(fresh_db, golden_marts, tmp_path, monkeypatch):
    """July closed: every entry dead-lettered PeriodClosed; opened and re-driven: each posted once. Then dispute
    fees move to 6100: the entry is mirrored at its date and re-posted as ~v2."""
    mapping = write_mapping(tmp_path, monkeypatch, posting_mode="detail")
    g = golden_marts.clone_into(fresh_db)
    with intacct_emulator(closed_periods=["2026-07"]) as srv:
        target, counter = target_for(srv)
        first = post_everything(fresh_db, target, mapping, counter)["journal-entries"]
        n = len(g["stripe"]["balance_transactions"])
        assert (first.dead_lettered, first.created) == (n, 0)
        with psycopg.connect(libpq_url(fresh_db)) as conn:
            reasons = conn.execute(
                "select reason, field, count(*) from sage_sync.dead_letters group by 1, 2"
            ).fetchall()
        assert reasons == [("PeriodClosed", "postingDate", n)]
        srv.app.store.books.closed_periods.clear()  # finance opens July
        res = redrive(fresh_db, target, mapping=mapping)
        assert (res.posted, res.still_dead) == (n, 0)
        assert len([e for e in srv.app.store.books.entries.values() if e["moduleName"] == "2.GL"]) == n
        changed = write_mapping(
            tmp_path,
            monkeypatch,
            posting_mode="detail",
            fees={"default": "6100", "by_category": {}, "by_fee_type": {"stripe_fee": "6100"}},
        )
        transform.dbt_build(url=fresh_db)
        stats = post_everything(fresh_db, target, changed, counter)["journal-entries"]
        assert (stats.reversed, stats.corrected, stats.created) == (1, 1, 1)
        got = {k: Decimal(v) for k, v in target.gl_movement()["usd"].items()}
        want = expected_tb(g) | {"6110": Decimal("0.00"), "6100": Decimal("30.21")}
        assert {k: v for k, v in got.items() if v} == {k: v for k, v in want.items() if v}
        entries = {e["referenceNumber"]: e for e in srv.app.store.books.entries.values()}
        original, mirror = entries["txn_GOLDd1"], entries["txn_GOLDd1~r1"]
        assert mirror["postingDate"] == original["postingDate"]
        assert sorted((ln["glAccount"]["id"], ln["txnType"]) for ln in mirror["lines"]) == sorted(
            (ln["glAccount"]["id"], "credit" if ln["txnType"] == "debit" else "debit") for ln in original["lines"]
        )
        assert {ln["glAccount"]["id"] for ln in entries["txn_GOLDd1~v2"]["lines"]} == {"1150", "4060", "6100"}
        again = post_everything(fresh_db, target, changed, counter)["journal-entries"]
        assert (again.reversed, again.created, again.requests) == (0, 0, 0)
        target.close()
