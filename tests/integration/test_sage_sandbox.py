"""The Sage Pro sandbox over real sockets: the contract of docs/sage-pro-contract.md."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from stripe_sage_sandboxes.sage import SageSandboxConfig, SageSandboxServer
from stripe_sage_sandboxes.sage.app import API_PREFIX

USERS = {
    "pipeline": ("pipeline-secret", {"read", "post"}),
    "viewer": ("viewer-secret", {"read"}),
    "admin": ("admin-secret", {"read", "post", "admin"}),
}
CHART = {"1010", "1150", "1200", "2200", "4000", "4050", "4060", "6100", "6110", "7900", "9999"}


def _config(data_dir: Path, **overrides: Any) -> SageSandboxConfig:
    base: dict[str, Any] = dict(
        data_dir=data_dir, users=USERS, rate_per_minute=100_000, max_concurrent=16, faults_enabled=True
    )
    base.update(overrides)
    return SageSandboxConfig(**base)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SageSandboxServer]:
    srv = SageSandboxServer(_config(tmp_path_factory.mktemp("sage"))).start()
    yield srv
    srv.stop()


def _client(srv: SageSandboxServer, user: str = "pipeline") -> httpx.Client:
    return httpx.Client(base_url=srv.base_url + "/", auth=(user, USERS[user][0]), timeout=10)


@pytest.fixture
def api(server: SageSandboxServer) -> Iterator[httpx.Client]:
    with _client(server) as c:
        yield c


@pytest.fixture
def admin(server: SageSandboxServer) -> Iterator[httpx.Client]:
    with _client(server, "admin") as c:
        yield c


_counter = iter(range(1, 1_000_000))


def _je(
    debit: str = "10.00", credit: str | None = None, *, day: str = "2026-07-16", ref: str | None = None, **extra: Any
) -> dict[str, Any]:
    body = {
        "journal": "GJ",
        "posting_date": day,
        "description": "test entry",
        "lines": [{"glacnt": "1010", "debit": debit}, {"glacnt": "4000", "credit": credit or debit}],
        "external_ref": ref or f"txn_test{next(_counter)}",
    }
    body.update(extra)
    return body


def _detail_codes(response: httpx.Response) -> list[str]:
    return [d["code"] for d in response.json()["error"]["details"]]


def _assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"code", "message", "details", "request_id"}
    assert err["code"] == code
    assert err["request_id"] == response.headers["x-request-id"]
    return err


# -- edge: auth, media type, routing --------------------------------------------------------------


def test_auth_missing_wrong_and_role(server: SageSandboxServer) -> None:
    r = httpx.get(server.base_url + "/accounts")
    _assert_envelope(r, 401, "Unauthorized")
    assert r.headers["www-authenticate"].startswith("Basic")
    r = httpx.get(server.base_url + "/accounts", auth=("pipeline", "wrong"))
    _assert_envelope(r, 401, "Unauthorized")
    r = httpx.get(server.base_url + "/accounts", headers={"Authorization": "Basic !!notbase64"})
    _assert_envelope(r, 401, "Unauthorized")
    with _client(server, "viewer") as viewer:
        assert viewer.get("accounts").status_code == 200
        _assert_envelope(viewer.post("journal-entries", json=_je()), 403, "Forbidden")
    with _client(server) as pipeline:
        _assert_envelope(pipeline.patch("periods/2026-01", json={"status": "closed"}), 403, "Forbidden")
    health = httpx.get(server.base_url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.headers["x-request-id"].startswith("req_")


def test_json_only_415_and_bad_json_400(api: httpx.Client) -> None:
    r = api.post("journal-entries", content=b"posting_date=2026-07-16", headers={"Content-Type": "text/plain"})
    _assert_envelope(r, 415, "UnsupportedMediaType")
    r = api.post("journal-entries", content=b"{not json", headers={"Content-Type": "application/json"})
    _assert_envelope(r, 400, "InvalidPayload")
    r = api.post("journal-entries", json=[1, 2])
    _assert_envelope(r, 400, "InvalidPayload")


def test_unknown_route_and_company_and_query(api: httpx.Client, server: SageSandboxServer) -> None:
    _assert_envelope(api.get("nothing-here"), 404, "RecordNotFound")
    other = server.base_url.replace("/PRO01", "/PRO99")
    _assert_envelope(httpx.get(other + "/accounts", auth=("pipeline", "pipeline-secret")), 404, "RecordNotFound")
    # A misspelt filter must not silently return every record.
    _assert_envelope(api.get("journal-entries", params={"externalref": "x"}), 400, "InvalidPayload")
    _assert_envelope(api.get("journal-entries", params={"$top": 1001}), 400, "InvalidPayload")


# -- accounts, journal entries, postings ------------------------------------------------------------


def test_seeded_chart(api: httpx.Client) -> None:
    page = api.get("accounts", params={"$top": 1000}).json()
    accounts = {a["glacnt"]: a for a in page["value"]}
    assert CHART <= set(accounts)
    assert page["count"] == len(page["value"]) and page["next"] is None
    assert accounts["1150"] == {
        "glacnt": "1150",
        "description": "Stripe Clearing",
        "type": "asset",
        "active": True,
        "postable": True,
    }
    assert accounts["2200"]["type"] == "liability" and accounts["4000"]["type"] == "revenue"
    assert accounts["6100"]["type"] == "expense"
    assert any(not a["postable"] for a in accounts.values()), "a header account is seeded"
    assert any(not a["active"] for a in accounts.values()), "an inactive account is seeded"
    assert all(a["active"] and a["postable"] for code, a in accounts.items() if code in CHART)
    assert api.get("accounts/4050").json()["description"].startswith("Sales Refunds")
    _assert_envelope(api.get("accounts/5555"), 404, "RecordNotFound")


def test_balanced_entry_posts_to_balance_and_gl_postings(api: httpx.Client) -> None:
    day = "2025-02-14"
    before = api.get("accounts/1010/balance", params={"from": day, "to": day}).json()
    assert before["balances"] == {}
    r = api.post("journal-entries", json=_je("123.45", day=day, ref="txn_bal1"), headers={"Idempotency-Key": "bal-1"})
    assert r.status_code == 201, r.text
    je = r.json()
    assert je["batch_no"] and je["status"] == "posted" and je["currency"] == "USD"
    assert r.headers["location"].endswith("/journal-entries/" + je["batch_no"])
    assert [(ln["debit"], ln["credit"]) for ln in je["lines"]] == [("123.45", "0.00"), ("0.00", "123.45")]
    bal = api.get("accounts/1010/balance", params={"from": day, "to": day}).json()
    assert bal["balances"]["USD"] == {"debit": "123.45", "credit": "0.00", "net": "123.45", "postings": 1}
    rev = api.get("accounts/4000/balance", params={"from": day, "to": day}).json()["balances"]["USD"]
    assert rev["net"] == "-123.45"
    postings = api.get("gl-postings", params={"glacnt": "1010", "from": day, "to": day}).json()
    assert postings["count"] == 1
    p = postings["value"][0]
    assert p["source"] == "GJ" and p["doc_type"] == "journal_entry"
    assert p["batch_no"] == je["batch_no"] and p["external_ref"] == "txn_bal1"
    assert (p["debit"], p["credit"], p["currency"], p["posting_date"]) == ("123.45", "0.00", "USD", day)
    assert api.get(f"journal-entries/{je['batch_no']}").json()["external_ref"] == "txn_bal1"
    found = api.get("journal-entries", params={"external_ref": "txn_bal1"}).json()
    assert found["count"] == 1 and found["value"][0]["batch_no"] == je["batch_no"]


def test_golden_payout_summary_entry(api: httpx.Client) -> None:
    # expected.payout_summary_journal_po_GOLD0001 of examples/payout_worked_example.json, verbatim.
    lines = [
        {"glacnt": "1010", "debit": "245.41"},
        {"glacnt": "6100", "debit": "12.59"},
        {"glacnt": "4050", "debit": "50.00"},
        {"glacnt": "4060", "debit": "80.00"},
        {"glacnt": "6110", "debit": "15.00"},
        {"glacnt": "4000", "credit": "395.00"},
        {"glacnt": "2200", "credit": "8.00"},
    ]
    body = {"journal": "ST", "posting_date": "2026-07-16", "lines": lines, "external_ref": "po_GOLD0001"}
    r = api.post("journal-entries", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["total_debit"] == r.json()["total_credit"] == "403.00"


def test_unbalanced_entry_reports_the_difference(api: httpx.Client) -> None:
    r = api.post("journal-entries", json=_je("100.00", "99.99"))
    err = _assert_envelope(r, 422, "RecordInvalid")
    (detail,) = err["details"]
    assert detail["code"] == "Unbalanced" and detail["field"] == "lines"
    assert detail["difference"] == "0.01" and "0.01" in detail["message"]


def test_line_rules(api: httpx.Client) -> None:
    body = _je()
    body["lines"] = [{"glacnt": "1010", "debit": "1.00", "credit": "1.00"}, {"glacnt": "4000", "credit": "1.00"}]
    assert "InvalidAmount" in _detail_codes(api.post("journal-entries", json=body))
    body["lines"] = [{"glacnt": "1010", "debit": "1.00"}]
    assert "InvalidValue" in _detail_codes(api.post("journal-entries", json=body))
    body["lines"] = [{"glacnt": "1010", "debit": "1.00"}, {"glacnt": "4000", "credit": "1.00"}] * 251
    assert "InvalidValue" in _detail_codes(api.post("journal-entries", json=body))
    assert "InvalidAmount" in _detail_codes(api.post("journal-entries", json=_je("-5.00")))
    assert "FieldTooLong" in _detail_codes(api.post("journal-entries", json=_je(description="x" * 61)))
    assert "FieldTooLong" in _detail_codes(api.post("journal-entries", json=_je(reference="r" * 31)))
    assert "InvalidCurrency" in _detail_codes(api.post("journal-entries", json=_je(currency="XYZ")))


def test_account_not_found_inactive_and_header(api: httpx.Client) -> None:
    body = _je()
    body["lines"] = [
        {"glacnt": "8888", "debit": "3.00"},
        {"glacnt": "1160", "credit": "1.00"},
        {"glacnt": "1000", "credit": "2.00"},
    ]
    r = api.post("journal-entries", json=body)
    err = _assert_envelope(r, 422, "RecordInvalid")
    by_field = {d["field"]: d["code"] for d in err["details"]}
    assert by_field == {
        "lines[0].glacnt": "AccountNotFound",
        "lines[1].glacnt": "AccountInactive",
        "lines[2].glacnt": "AccountInactive",
    }


def test_period_closed_after_admin_closes_it(api: httpx.Client, admin: httpx.Client) -> None:
    assert api.get("periods/2024-03").json()["status"] == "open"
    r = admin.patch("periods/2024-03", json={"status": "closed"})
    assert r.status_code == 200 and r.json()["status"] == "closed"
    closed = api.get("periods", params={"status": "closed"}).json()
    assert "2024-03" in [p["id"] for p in closed["value"]]
    r = api.post("journal-entries", json=_je(day="2024-03-15"))
    err = _assert_envelope(r, 422, "RecordInvalid")
    assert [(d["field"], d["code"]) for d in err["details"]] == [("posting_date", "PeriodClosed")]
    assert _detail_codes(api.post("journal-entries", json=_je(day="2019-12-31"))) == ["PeriodNotFound"]
    assert admin.patch("periods/2024-03", json={"status": "open"}).json()["status"] == "open"
    assert api.post("journal-entries", json=_je(day="2024-03-15")).status_code == 201
    assert admin.patch("periods/2024-03", json={"status": "frozen"}).status_code == 422
    periods = api.get("periods", params={"$top": 1000}).json()
    assert periods["value"][0]["id"] == "2020-01" and periods["count"] >= 11 * 12


# -- customers, invoices, receipts ------------------------------------------------------------------


def test_custno_rules_and_field_lengths(api: httpx.Client) -> None:
    ok = {"custno": "ACME-01", "company": "Acme Corporation", "email": "ap@acme.example", "country": "US"}
    r = api.post("customers", json={**ok, "external_ref": "cus_acme01"})
    assert r.status_code == 201, r.text
    assert r.json()["currency"] == "USD" and r.json()["updated_at"].endswith("Z")
    lower = api.post("customers", json={**ok, "custno": "acme-02"})
    err = _assert_envelope(lower, 422, "RecordInvalid")
    assert err["details"][0]["field"] == "custno" and err["details"][0]["code"] == "InvalidCharacters"
    assert _detail_codes(api.post("customers", json={**ok, "custno": "ABCDEFGHIJK"})) == ["FieldTooLong"]
    assert _detail_codes(api.post("customers", json={**ok, "custno": "-ACME"})) == ["InvalidCharacters"]
    assert _detail_codes(api.post("customers", json={**ok, "custno": "AC ME"})) == ["InvalidCharacters"]
    assert _detail_codes(api.post("customers", json={**ok, "custno": "C2", "company": "x" * 41})) == ["FieldTooLong"]
    assert _detail_codes(api.post("customers", json={**ok, "custno": "C3", "email": "e" * 61})) == ["FieldTooLong"]
    assert _detail_codes(api.post("customers", json={**ok, "custno": "C4", "country": "usa"})) == ["FieldTooLong"]
    assert _detail_codes(api.post("customers", json={"custno": "C5"})) == ["Required"]
    _assert_envelope(api.post("customers", json=ok), 409, "RecordDuplicate")


def test_customer_patch_and_updated_since(api: httpx.Client) -> None:
    r = api.post("customers", json={"custno": "GLOBEX", "company": "Globex", "external_ref": "cus_globex"})
    created = r.json()
    time.sleep(0.01)
    mark = api.get("customers/GLOBEX").json()["updated_at"]
    time.sleep(0.01)
    patched = api.patch("customers/GLOBEX", json={"city": "Austin"}, headers={"Idempotency-Key": "p-globex-1"})
    assert patched.status_code == 200 and patched.json()["city"] == "Austin"
    assert patched.json()["updated_at"] > created["updated_at"]
    since = api.get("customers", params={"updated_since": mark}).json()
    assert [c["custno"] for c in since["value"]] == ["GLOBEX"]
    assert api.get("customers", params={"external_ref": "cus_globex"}).json()["value"][0]["custno"] == "GLOBEX"
    _assert_envelope(api.patch("customers/NOPE", json={"city": "x"}), 404, "RecordNotFound")
    assert _detail_codes(api.patch("customers/GLOBEX", json={"city": "c" * 21})) == ["FieldTooLong"]
    _assert_envelope(api.get("customers", params={"updated_since": "yesterday"}), 400, "InvalidPayload")


def test_invoice_posts_ar_revenue_tax_and_receipt_applies(api: httpx.Client) -> None:
    api.post("customers", json={"custno": "INVC1", "company": "Invoice Co"})
    inv = {
        "custno": "INVC1",
        "invdate": "2025-05-02",
        "lines": [
            {
                "description": "Order 1001",
                "quantity": "2",
                "unit_price": "50.00",
                "revenue_glacnt": "4000",
                "tax_amount": "8.00",
                "tax_glacnt": "2200",
            }
        ],
        "totals": {"subtotal": "100.00", "tax": "8.00", "total": "108.00"},
        "external_ref": "ch_inv1",
    }
    r = api.post("invoices", json=inv)
    assert r.status_code == 201, r.text
    invoice = r.json()
    assert (invoice["total"], invoice["balance"], invoice["doc_type"]) == ("108.00", "108.00", "invoice")
    postings = api.get("gl-postings", params={"doc_no": invoice["invno"]}).json()["value"]
    assert {(p["glacnt"], p["debit"], p["credit"]) for p in postings} == {
        ("1200", "108.00", "0.00"),
        ("4000", "0.00", "100.00"),
        ("2200", "0.00", "8.00"),
    }
    bad = {**inv, "totals": {"tax": "7.00"}, "external_ref": "ch_inv2"}
    assert _detail_codes(api.post("invoices", json=bad)) == ["TaxMismatch"]
    assert _detail_codes(api.post("invoices", json={**inv, "custno": "GHOST", "external_ref": "ch_inv3"})) == [
        "CustomerNotFound"
    ]
    receipt = {
        "custno": "INVC1",
        "receipt_date": "2025-05-03",
        "amount": "108.00",
        "fee_amount": "3.43",
        "deposit_glacnt": "1150",
        "fee_glacnt": "6100",
        "applications": [{"invno": invoice["invno"], "amount": "108.00"}],
        "external_ref": "txn_inv1",
    }
    over = {**receipt, "applications": [{"invno": invoice["invno"], "amount": "108.01"}]}
    assert "OverApplied" in _detail_codes(api.post("cash-receipts", json=over))
    r = api.post("cash-receipts", json=receipt)
    assert r.status_code == 201, r.text
    cr = r.json()
    assert cr["net_amount"] == "104.57"
    postings = api.get("gl-postings", params={"doc_no": cr["receipt_no"]}).json()["value"]
    assert {(p["glacnt"], p["debit"], p["credit"], p["source"]) for p in postings} == {
        ("1150", "104.57", "0.00", "CR"),
        ("6100", "3.43", "0.00", "CR"),
        ("1200", "0.00", "108.00", "CR"),
    }
    assert api.get(f"invoices/{invoice['invno']}").json()["balance"] == "0.00"
    assert api.get("cash-receipts", params={"external_ref": "txn_inv1"}).json()["count"] == 1
    memo = {**inv, "doc_type": "credit_memo", "totals": None, "external_ref": "re_inv1"}
    r = api.post("invoices", json=memo)
    assert r.status_code == 201 and r.json()["invno"].startswith("CM")


# -- duplicate protection -----------------------------------------------------------------------------


def test_idempotency_replay_and_mismatch(api: httpx.Client) -> None:
    body = _je("7.00")
    first = api.post("journal-entries", json=body, headers={"Idempotency-Key": "idem-1"})
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    again = api.post("journal-entries", json=body, headers={"Idempotency-Key": "idem-1"})
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    other = api.post("journal-entries", json=_je("8.00"), headers={"Idempotency-Key": "idem-1"})
    _assert_envelope(other, 422, "IdempotencyKeyMismatch")
    long_key = api.post("journal-entries", json=_je(), headers={"Idempotency-Key": "k" * 256})
    _assert_envelope(long_key, 400, "InvalidPayload")
    assert api.get("journal-entries", params={"external_ref": body["external_ref"]}).json()["count"] == 1


def test_idempotency_request_in_progress(server: SageSandboxServer) -> None:
    body = _je("9.00")
    results: dict[str, httpx.Response] = {}

    def slow() -> None:
        with _client(server) as c:
            headers = {"Idempotency-Key": "idem-slow", "X-Sandbox-Fault": "latency=600"}
            results["slow"] = c.post("journal-entries", json=body, headers=headers)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.25)
    with _client(server) as c:
        results["racer"] = c.post("journal-entries", json=body, headers={"Idempotency-Key": "idem-slow"})
    t.join()
    assert results["slow"].status_code == 201
    _assert_envelope(results["racer"], 409, "RequestInProgress")


def test_external_ref_conflict_names_existing_id(api: httpx.Client) -> None:
    first = api.post("journal-entries", json=_je(ref="txn_dup1")).json()
    r = api.post("journal-entries", json=_je("11.00", ref="txn_dup1"), headers={"Idempotency-Key": "other"})
    err = _assert_envelope(r, 409, "DuplicateExternalReference")
    assert err["details"][0]["existing_id"] == first["batch_no"]


def test_commit_then_504_is_committed_and_replayable(api: httpx.Client) -> None:
    body = _je("12.00")
    headers = {"Idempotency-Key": "idem-504", "X-Sandbox-Fault": "commit-504"}
    _assert_envelope(api.post("journal-entries", json=body, headers=headers), 504, "GatewayTimeout")
    retry = api.post("journal-entries", json=body, headers={"Idempotency-Key": "idem-504"})
    assert retry.status_code == 201 and retry.headers["idempotent-replayed"] == "true"
    assert api.get("journal-entries", params={"external_ref": body["external_ref"]}).json()["count"] == 1


def test_injected_faults_are_not_stored(api: httpx.Client) -> None:
    body = _je("13.00")
    for fault, status in (("429", 429), ("503", 503), ("500", 500)):
        r = api.post("journal-entries", json=body, headers={"Idempotency-Key": "idem-f", "X-Sandbox-Fault": fault})
        assert r.status_code == status
        if status != 500:
            assert r.headers["retry-after"] == "1"
    r = api.post("journal-entries", json=body, headers={"Idempotency-Key": "idem-f"})
    assert r.status_code == 201 and "idempotent-replayed" not in r.headers


# -- reversal and immutability --------------------------------------------------------------------------


def test_reverse_and_already_reversed(api: httpx.Client) -> None:
    day = "2025-08-20"
    je = api.post("journal-entries", json=_je("40.00", day=day)).json()
    r = api.post(f"journal-entries/{je['batch_no']}/reverse", headers={"Idempotency-Key": "rev-1"})
    assert r.status_code == 201, r.text
    rev = r.json()
    assert rev["reverses"] == je["batch_no"]
    assert [(ln["glacnt"], ln["debit"], ln["credit"]) for ln in rev["lines"]] == [
        ("1010", "0.00", "40.00"),
        ("4000", "40.00", "0.00"),
    ]
    original = api.get(f"journal-entries/{je['batch_no']}").json()
    assert original["status"] == "reversed" and original["reversed_by"] == rev["batch_no"]
    bal = api.get("accounts/1010/balance", params={"from": day, "to": day}).json()["balances"]["USD"]
    assert bal["net"] == "0.00"
    again = api.post(f"journal-entries/{je['batch_no']}/reverse", json={})
    err = _assert_envelope(again, 409, "AlreadyReversed")
    assert err["details"][0]["existing_id"] == rev["batch_no"]
    _assert_envelope(api.post("journal-entries/GJ999999/reverse", json={}), 404, "RecordNotFound")


def test_posted_entries_are_immutable(api: httpx.Client) -> None:
    je = api.post("journal-entries", json=_je()).json()
    for method in ("PATCH", "PUT", "DELETE"):
        r = api.request(method, f"journal-entries/{je['batch_no']}", json={"description": "edited"})
        err = _assert_envelope(r, 405, "MethodNotAllowed")
        assert "reverse" in err["message"]
    assert api.get(f"journal-entries/{je['batch_no']}").json()["description"] == "test entry"


# -- currencies -------------------------------------------------------------------------------------------


def test_zero_and_three_decimal_currencies(api: httpx.Client) -> None:
    day = "2025-09-09"
    r = api.post("journal-entries", json=_je("5000", day=day, currency="JPY"))
    assert r.status_code == 201, r.text
    assert r.json()["lines"][0]["debit"] == "5000" and r.json()["total_credit"] == "5000"
    assert _detail_codes(api.post("journal-entries", json=_je("5000.00", currency="JPY"))) == ["InvalidAmount"] * 2
    r = api.post("journal-entries", json=_je("12.500", day=day, currency="kwd"))
    assert r.status_code == 201, r.text
    assert r.json()["currency"] == "KWD" and r.json()["lines"][1]["credit"] == "12.500"
    assert _detail_codes(api.post("journal-entries", json=_je("12.50", currency="KWD"))) == ["InvalidAmount"] * 2
    assert "InvalidAmount" in _detail_codes(api.post("journal-entries", json=_je("12.5")))
    numeric = _je()
    numeric["lines"][0]["debit"] = 10.0
    assert "InvalidAmount" in _detail_codes(api.post("journal-entries", json=numeric))
    bal = api.get("accounts/1010/balance", params={"from": day, "to": day}).json()["balances"]
    assert bal["JPY"]["net"] == "5000" and bal["KWD"]["debit"] == "12.500" and bal["KWD"]["credit"] == "0.000"


# -- collections ------------------------------------------------------------------------------------------


def test_pagination(api: httpx.Client) -> None:
    page = api.get("accounts", params={"$top": 5}).json()
    assert len(page["value"]) == 5 and page["count"] > 5 and page["next"]
    seen = [a["glacnt"] for a in page["value"]]
    while page["next"]:
        page = api.get(page["next"]).json()
        seen += [a["glacnt"] for a in page["value"]]
    assert len(seen) == len(set(seen)) == page["count"]
    skipped = api.get("accounts", params={"$top": 2, "$skip": 3}).json()
    assert [a["glacnt"] for a in skipped["value"]] == seen[3:5]


# -- limits, persistence, OpenAPI -----------------------------------------------------------------------


def test_token_bucket_429_with_retry_after(tmp_path: Path) -> None:
    srv = SageSandboxServer(_config(tmp_path, rate_per_minute=6, faults_enabled=False)).start()
    try:
        with _client(srv) as c:
            statuses = [c.get("accounts") for _ in range(3)]
        assert statuses[0].status_code == 200
        limited = [r for r in statuses if r.status_code == 429]
        assert limited, [r.status_code for r in statuses]
        _assert_envelope(limited[0], 429, "TooManyRequests")
        assert 1 <= int(limited[0].headers["retry-after"]) <= 10
        with _client(srv, "admin") as other:  # buckets are per user
            assert other.get("accounts").status_code == 200
        assert httpx.get(srv.base_url + "/health").status_code == 200  # health is not limited
    finally:
        srv.stop()


def test_seeded_rate_faults_are_deterministic(tmp_path: Path) -> None:
    def run(seed: int, where: Path) -> list[int]:
        srv = SageSandboxServer(_config(where, seed=seed, fault_429_rate=0.3, fault_5xx_rate=0.2)).start()
        try:
            with _client(srv) as c:
                return [c.get("accounts/1010").status_code for _ in range(30)]
        finally:
            srv.stop()

    first, second = run(5, tmp_path / "a"), run(5, tmp_path / "b")
    assert first == second and {429, 503, 200} <= set(first)


def test_state_survives_restart(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    srv = SageSandboxServer(cfg).start()
    with _client(srv) as c:
        je = c.post("journal-entries", json=_je("55.00", ref="txn_persist"), headers={"Idempotency-Key": "persist"})
        assert je.status_code == 201
        c.post("customers", json={"custno": "KEEP", "company": "Kept Ltd"})
    with _client(srv, "admin") as a:
        a.patch("periods/2023-01", json={"status": "closed"})
    srv.stop()
    srv2 = SageSandboxServer(cfg).start()
    try:
        with _client(srv2) as c:
            assert c.get(f"journal-entries/{je.json()['batch_no']}").json()["external_ref"] == "txn_persist"
            assert c.get("customers/KEEP").status_code == 200
            assert c.get("periods/2023-01").json()["status"] == "closed"
            replay = c.post(
                "journal-entries", json=_je("55.00", ref="txn_persist"), headers={"Idempotency-Key": "persist"}
            )
            # A different generated body (ids) would mismatch; the ref protects either way.
            assert replay.status_code in (201, 409, 422)
            nxt = c.post("journal-entries", json=_je("1.00")).json()
            assert nxt["batch_no"] != je.json()["batch_no"]
            assert c.get("journal-entries").json()["count"] == 2
    finally:
        srv2.stop()


def test_openapi_served_parseable_and_complete(server: SageSandboxServer, api: httpx.Client) -> None:
    root = server.root_url + API_PREFIX
    r = httpx.get(root + "/openapi.yaml")
    assert r.status_code == 200
    doc = yaml.safe_load(r.text)
    assert doc["openapi"].startswith("3.1")
    assert httpx.get(root + "/openapi.json").json() == json.loads(json.dumps(doc, default=str))
    assert server.app is not None
    for path, method in server.app.ops:
        assert path in doc["paths"], path
        assert method.lower() in doc["paths"][path], (method, path)
    assert "/openapi.yaml" in doc["paths"] and "/openapi.json" in doc["paths"]
    # Real answers conform to the documented schemas.
    schemas = {"$defs": doc["components"]["schemas"]}
    text = json.dumps(schemas).replace("#/components/schemas/", "#/$defs/")
    defs = json.loads(text)

    def check(name: str, instance: Any) -> None:
        jsonschema.Draft202012Validator({**defs, "$ref": f"#/$defs/{name}"}).validate(instance)

    je = api.post("journal-entries", json=_je("3.21")).json()
    check("JournalEntry", je)
    check("JournalEntryPage", api.get("journal-entries", params={"$top": 2}).json())
    check("AccountPage", api.get("accounts").json())
    check("AccountBalance", api.get("accounts/1010/balance").json())
    check("GlPostingPage", api.get("gl-postings", params={"$top": 5}).json())
    check("Period", api.get("periods/2026-07").json())
    check("Error", api.post("journal-entries", json=_je("1.00", "2.00")).json())


def test_credentials_never_echoed(server: SageSandboxServer) -> None:
    token = base64.b64encode(b"pipeline:wrong-password").decode()
    r = httpx.get(server.base_url + "/accounts", headers={"Authorization": f"Basic {token}"})
    assert "wrong-password" not in r.text and token not in r.text
    assert "secret" not in repr(server.config)


def test_head_on_get_routes(api: httpx.Client) -> None:
    r = api.head("accounts/1010")
    assert r.status_code == 200 and r.headers["x-request-id"]


def test_default_users(tmp_path: Path) -> None:
    srv = SageSandboxServer(SageSandboxConfig(data_dir=tmp_path)).start()
    try:
        assert httpx.get(srv.base_url + "/accounts", auth=("pipeline", "pipeline-secret")).status_code == 200
        with httpx.Client(base_url=srv.base_url + "/", auth=("admin", "admin-secret")) as admin:
            assert admin.patch("periods/2030-12", json={"status": "closed"}).json()["status"] == "closed"
    finally:
        srv.stop()
