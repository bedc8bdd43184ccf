"""The mapping studio and the close pack on the worked example, built once with the dispute unmapped.

* the preview's rules give exactly the legs and the journal lines dbt built (they cannot drift apart);
* the studio over HTTP: the inventory shows the dispute in suspense with its amount, the preview of
  "dispute → 4060" moves exactly that amount, a save rewrites mapping.yaml keeping its comments and
  writes the audit row; a stale page cannot overwrite a newer file;
* the close pack, after the month is posted to a Sage sandbox, agrees with Sage's GL (read back
  account by account) and with Stripe's payouts.
"""

from __future__ import annotations

import copy
import uuid
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

import psycopg
import pytest
import yaml
from intacct_helpers import CLIENT_ID, CLIENT_SECRET, intacct_emulator
from load_helpers import client_for, post_everything, sage_sandbox
from transform_helpers import golden, load_stripe_objects

from stripe_sage_pipeline.money import from_decimal_str
from stripe_sage_pipeline.reporting import build_close_pack
from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_pipeline.settings import PROJECT_ROOT
from stripe_sage_pipeline.studio import data, rules
from stripe_sage_pipeline.studio.app import CSRF_COOKIE, StudioConfig, create_app
from stripe_sage_pipeline.transform import build as transform
from stripe_sage_pipeline.transform.mapping import load_mapping
from stripe_sage_sandboxes.intacct.app import DEFAULT_USERNAME

# Starlette's TestClient prefers `httpx2`; the project uses httpx.
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

MONTH = "2026-07"
DISPUTE = 8000  # txn_GOLDd1: -80.00, so its counter leg debits 80.00 to wherever disputes go


def _unmapped_dispute_text() -> str:
    text = (PROJECT_ROOT / "mapping.yaml").read_text()
    assert '  dispute: "4060"\n' in text and "  adjustment: other_adjustment\n" in text
    # Without the type fallback too: else the dispute's `adjustment` type would map it to other_adjustment.
    return text.replace('  dispute: "4060"\n', "").replace("  adjustment: other_adjustment\n", "")


def _build(pg_server, tmp, mapping_text: str, stripe: dict) -> dict:
    """A new database with `stripe` staged and the marts built under `mapping_text` (written to tmp)."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(f"host=127.0.0.1 port={pg_server.port} user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'create database "{name}"')
    url = pg_server.url(name)
    mapping_file = tmp / "mapping.yaml"
    mapping_file.write_text(mapping_text)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STRIPE_SAGE_DATABASE_URL", url)
        mp.setenv("STRIPE_SAGE_MAPPING", str(mapping_file))
        load_stripe_objects(url, stripe)
        transform.dbt_build(url=url, mapping=load_mapping(mapping_file))
    return {"url": url, "tmp": tmp, "mapping_file": mapping_file}


@pytest.fixture(scope="module")
def golden_marts(pg_server, tmp_path_factory, golden_path):
    """The worked example staged and built once, with `categories.dispute` missing (it sits in suspense)."""
    g = golden(golden_path)
    built = _build(pg_server, tmp_path_factory.mktemp("studio"), _unmapped_dispute_text(), g["stripe"])
    return {**built, "golden": g}


def test_the_preview_rules_reproduce_what_dbt_built(golden_marts):
    m = load_mapping(golden_marts["mapping_file"])
    with psycopg.connect(libpq_url(golden_marts["url"])) as conn:
        month = data.month_data(conn, MONTH)
    assert len(month.transactions) == 8
    for t in month.transactions:
        assert rules.transaction_legs(m, t)[2] == data.classified_legs(t), t["balance_transaction_id"]
        assert rules.posting_date(m, t) == t["posting_date"]
    for mode in ("payout_summary", "detail"):
        built = rules.mart_entries(month, mode)
        replayed = rules.entries(m, month, mode)
        assert {e.external_ref: e.booked() for e in replayed.values()} == {
            e.external_ref: e.booked() for e in built.values()
        }, mode
    p = rules.preview(m, m, month)
    assert p.model_gap == {} and p.changes == [] and not p.changed_rows


def _assert_rules_reproduce_dbt(m, url: str) -> dict[str, dict]:
    """The rules' legs of every transaction, and the entries of both modes, equal what dbt built."""
    with psycopg.connect(libpq_url(url)) as conn:
        month = data.month_data(conn, MONTH)
    for t in month.transactions:
        assert rules.transaction_legs(m, t)[2] == data.classified_legs(t), t["balance_transaction_id"]
    for mode in ("payout_summary", "detail"):
        built = rules.mart_entries(month, mode)
        replayed = rules.entries(m, month, mode)
        assert {e.external_ref: e.booked() for e in replayed.values()} == {
            e.external_ref: e.booked() for e in built.values()
        }, mode
    assert rules.preview(m, m, month).model_gap == {}
    return {t["balance_transaction_id"]: t for t in month.transactions}


def _pro_rata(amount: int, tax: int, gross: int) -> int:
    """amount x tax / gross, rounded half away from zero (accounting.md), computed independently."""
    q = Decimal(amount) * tax / gross
    return int(q.copy_abs().quantize(Decimal(1), rounding=ROUND_HALF_UP)) * (1 if q >= 0 else -1)


def test_the_preview_rules_reverse_tax_on_refunds_and_disputes_as_dbt(pg_server, tmp_path, golden_path):
    """The worked example with its refund moved to the taxed charge and the disputed charge taxed too:
    a partial refund (pro rata, rounded) and a full lost dispute (exactly the tax), switch on and off."""
    stripe = copy.deepcopy(golden(golden_path)["stripe"])
    charges = {c["id"]: c for c in stripe["charges"]}
    taxed = next(c for c in stripe["charges"] if c["metadata"].get("tax_amount"))
    (refund,) = stripe["refunds"]
    (dispute,) = stripe["disputes"]
    charges[refund["charge"]]["amount_refunded"] = 0
    refund["charge"] = taxed["id"]
    taxed["amount_refunded"] = refund["amount"]
    disputed = charges[dispute["charge"]]
    # Taxed at the taxed charge's rate (whole cents).
    rate_tax = disputed["amount"] * int(taxed["metadata"]["tax_amount"]) // taxed["amount"]
    disputed["metadata"] = {**disputed["metadata"], "tax_amount": str(rate_tax)}
    bts = {b["id"]: b for b in stripe["balance_transactions"]}
    refund_bt, dispute_bt = bts[refund["balance_transaction"]], bts[dispute["balance_transactions"][0]["id"]]

    text = (PROJECT_ROOT / "mapping.yaml").read_text()
    assert "  reverse_on_refunds: true\n" in text
    built = _build(pg_server, tmp_path, text, stripe)
    m = load_mapping(built["mapping_file"])
    assert m.tax.reverse_on_refunds
    txns = _assert_rules_reproduce_dbt(m, built["url"])
    refund_tax = _pro_rata(refund_bt["amount"], int(taxed["metadata"]["tax_amount"]), taxed["amount"])
    assert refund_tax != 0 and refund_bt["amount"] * int(taxed["metadata"]["tax_amount"]) % taxed["amount"]
    assert data.classified_legs(txns[refund_bt["id"]])[m.accounts.sales_tax] == -refund_tax
    dispute_tax = int(disputed["metadata"]["tax_amount"])
    assert dispute_bt["amount"] == -disputed["amount"]  # a full chargeback gives back exactly the tax
    assert data.classified_legs(txns[dispute_bt["id"]])[m.accounts.sales_tax] == dispute_tax

    # Switched off: the marts rebuilt without the reversal, and the rules follow the same switch.
    off = built["mapping_file"].parent / "off"
    off.mkdir()
    off_file = off / "mapping.yaml"
    off_file.write_text(text.replace("  reverse_on_refunds: true\n", "  reverse_on_refunds: false\n"))
    m_off = load_mapping(off_file)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STRIPE_SAGE_DATABASE_URL", built["url"])
        mp.setenv("STRIPE_SAGE_MAPPING", str(off_file))
        transform.dbt_build(url=built["url"], mapping=m_off, full_refresh=True)
    txns = _assert_rules_reproduce_dbt(m_off, built["url"])
    assert m.accounts.sales_tax not in data.classified_legs(txns[refund_bt["id"]])
    assert m.accounts.sales_tax not in data.classified_legs(txns[dispute_bt["id"]])


@pytest.fixture
def studio(golden_marts, tmp_path):
    """The studio app over a copy of the mapping, a Sage sandbox for the chart, a Dagster URL nobody answers."""
    from starlette.testclient import TestClient

    mapping_file = tmp_path / "mapping.yaml"
    mapping_file.write_text(golden_marts["mapping_file"].read_text())
    with sage_sandbox(tmp_path / "sage") as srv:
        config = StudioConfig(
            database_url=golden_marts["url"],
            mapping_file=mapping_file,
            sage_base_url=srv.base_url,
            sage_user="pipeline",
            sage_password="pipeline-secret",
            dagster_url="http://127.0.0.1:9/",
        )
        with TestClient(create_app(config), base_url="http://127.0.0.1:3100", client=("127.0.0.1", 40000)) as c:
            page = c.get("/")
            assert page.status_code == 200
            c.headers["x-csrf-token"] = c.cookies[CSRF_COOKIE]
            yield c, page.text, mapping_file


def _state(page: str) -> dict:
    import json

    return json.loads(page.split('<script id="state" type="application/json">')[1].split("</script>")[0])


def test_studio_inventory_preview_and_save(golden_marts, studio):
    c, page, mapping_file = studio
    state = _state(page)
    assert state["month"] == MONTH and state["sage_ok"] and state["problems"] == []
    first = state["inventory"][0]
    assert (first["kind"], first["value"], first["suspense"], first["account"], first["amount"]) == (
        "reporting_category",
        "dispute",
        True,
        "9999",
        -DISPUTE,
    )
    assert {a["glacnt"] for a in state["sage_accounts"] if not a["active"]} == {"1160"}

    draft = state["mapping"]
    draft["categories"]["dispute"] = "4060"
    res = c.post("/api/preview", json={"draft": draft, "month": MONTH}).json()
    assert res["ok"], res
    diff = {r["account"]: r["difference_minor"] for r in res["preview"]["rows"] if r["changed"]}
    assert diff == {"9999": -DISPUTE, "4060": DISPUTE}
    assert [(ch["external_ref"], ch["action"]) for ch in res["preview"]["changes"]] == [("po_GOLD0001", "post_changed")]

    # A header account is refused by the studio even though mapping.py would accept it.
    bad = {
        **draft,
        "categories": {**draft["categories"], "dispute": "1000"},
        "chart_of_accounts": {**draft["chart_of_accounts"], "1000": "Current Assets"},
    }
    problems = c.post("/api/validate", json={"draft": bad}).json()["problems"]
    assert problems == [
        {"key": "categories.dispute", "value": "1000", "message": "account is a header account in Sage (not postable)"}
    ]
    before = mapping_file.read_text()
    assert c.post("/api/save", json={"draft": bad, "saved_by": "ana"}).status_code == 422
    assert mapping_file.read_text() == before

    saved = c.post(
        "/api/save",
        json={"draft": draft, "saved_by": "ana (controller)", "file_hash": state["file_hash"], "start_transform": True},
    ).json()
    assert saved["ok"], saved
    after = mapping_file.read_text()
    # One line added at the end of `categories`, before the blank line and the next section's comment.
    last = '  unreconciled_customer_funds: "2500"\n'  # the last entry of `categories`
    assert after == before.replace(last, last + '  dispute: "4060"\n')
    assert [ln for ln in after.splitlines() if ln.lstrip().startswith("#")] == [
        ln for ln in before.splitlines() if ln.lstrip().startswith("#")
    ]
    assert yaml.safe_load(after)["categories"]["dispute"] == "4060"
    assert not saved["transform"]["started"] and "no Dagster webserver answers" in saved["transform"]["message"]

    with psycopg.connect(libpq_url(golden_marts["url"])) as conn:
        row = conn.execute(
            "select saved_by, client, changes, diff, transform from studio.mapping_audit where id = %s",
            (saved["audit_id"],),
        ).fetchone()
    assert row[0] == "ana (controller)" and row[1] == "127.0.0.1"
    assert row[2] == [{"key": "categories.dispute", "old": None, "new": "4060"}]
    assert '+  dispute: "4060"' in row[3] and "no Dagster webserver answers" in row[4]

    # The page the user still has open is now stale: saving from it again is refused.
    again = c.post("/api/save", json={"draft": draft, "saved_by": "bo", "file_hash": state["file_hash"]})
    assert again.status_code == 409 and mapping_file.read_text() == after


def test_studio_reads_the_chart_of_intacct_when_that_is_the_target(golden_marts, tmp_path, monkeypatch):
    """SAGE_TARGET=intacct: the chart comes from the Intacct emulator (Sage Pro's address answers nothing),
    with its inactive, header and missing accounts refused as for Sage Pro."""
    from starlette.testclient import TestClient

    from stripe_sage_pipeline.studio.app import used_accounts
    from stripe_sage_pipeline.studio.server import config_from_env

    mapping_file = tmp_path / "mapping.yaml"
    mapping_file.write_text(golden_marts["mapping_file"].read_text())
    m = load_mapping(mapping_file)
    inactive = "4050"  # refunds: in the emulator's chart, used by the mapping
    assert inactive in {code for _, code in used_accounts(m)}
    with intacct_emulator(inactive_accounts=(inactive,)) as srv:
        for key, value in {
            "STRIPE_SAGE_DATABASE_URL": golden_marts["url"],
            "STRIPE_SAGE_MAPPING": str(mapping_file),
            "SAGE_TARGET": "intacct",
            "INTACCT_BASE_URL": srv.base_url,
            "INTACCT_CLIENT_ID": CLIENT_ID,
            "INTACCT_CLIENT_SECRET": CLIENT_SECRET,
            "INTACCT_USERNAME": DEFAULT_USERNAME,
            "SAGEPRO_BASE_URL": "http://127.0.0.1:9/sagepro/v1/PRO01",
        }.items():
            monkeypatch.setenv(key, value)
        config = config_from_env(dagster_url="http://127.0.0.1:9/")
        assert config.sage_target == "intacct" and CLIENT_SECRET not in repr(config)
        with TestClient(create_app(config), base_url="http://127.0.0.1:3100", client=("127.0.0.1", 40000)) as c:
            state = _state(c.get("/").text)
            c.headers["x-csrf-token"] = c.cookies[CSRF_COOKIE]
            header = c.post(
                "/api/validate",
                json={
                    "draft": {
                        **state["mapping"],
                        "categories": {**state["mapping"]["categories"], "refund": "1000"},
                        "chart_of_accounts": {**state["mapping"]["chart_of_accounts"], "1000": "Assets"},
                    }
                },
            ).json()
        emulator = {a["id"]: a for a in srv.app.store.books.accounts.values()}
        assert any(e.path.endswith("/services/core/query") for e in srv.request_log)
    assert state["sage_ok"]
    chart = {a["glacnt"]: a for a in state["sage_accounts"]}
    assert set(chart) == set(emulator)
    assert {a for a, r in chart.items() if not r["active"]} == {inactive}
    assert (
        {a for a, r in chart.items() if not r["postable"]}
        == {a for a, r in emulator.items() if r["disallowDirectPosting"]}
        == {"1000"}
    )
    problems = {(p["key"], p["value"]): p["message"] for p in state["problems"]}
    for key, code in used_accounts(m):
        if code not in emulator:
            assert problems.pop((key, code)) == "account does not exist in Sage", (key, code)
        elif code == inactive:
            assert problems.pop((key, code)) == "account is inactive in Sage", (key, code)
    assert problems == {}
    assert {
        "key": "categories.refund",
        "value": "1000",
        "message": "account is a header account in Sage (not postable)",
    } in header["problems"]


def test_close_pack_agrees_with_sages_gl_and_stripes_payouts(golden_marts, tmp_path):
    url, g = golden_marts["url"], golden_marts["golden"]
    m = load_mapping(golden_marts["mapping_file"])
    with sage_sandbox(tmp_path / "sage") as srv:
        client, _ = client_for(srv)
        post_everything(url, client, m)
        pack, written = build_close_pack(url, client, MONTH, tmp_path / "pack", mapping=m)
        sage_balance = {}
        for r in pack.gl:
            bal = client.account_balance(r.account, "2026-07-01", "2026-07-31")["balances"].get("USD")
            sage_balance[r.account] = from_decimal_str(bal["net"], "usd") if bal else 0
        client.close()
    paid = sum(p["amount"] for p in g["stripe"]["payouts"] if p["status"] == "paid")
    (t,) = pack.tie_out
    assert (t.currency, t.sage_bank, t.stripe_paid_out, t.trial_balance, t.ok) == ("usd", paid, paid, 0, True)
    assert {r.account: r.sage for r in pack.gl} == sage_balance
    assert all(r.sage == r.booked for r in pack.gl)
    expected = {
        k: from_decimal_str(v, "usd")
        for k, v in g["expected"]["trial_balance_change_after_both_payouts"].items()
        if k != "note"
    }
    expected["9999"], expected["4060"] = expected["4060"], 0  # the dispute sits in suspense
    assert {a: v for a, v in sage_balance.items() if v} == {a: v for a, v in expected.items() if v}
    assert [(p["payout_id"], p["reconciliation_status"], p["sage_status"]) for p in pack.payouts] == [
        ("po_GOLD0000", "reconciled", "posted"),
        ("po_GOLD0001", "reconciled", "posted"),
    ]
    assert {d.day: d.stripe for d in pack.days if d.stripe} == {date(2026, 7, 4): 7738, date(2026, 7, 16): 24541}
    assert all(d.difference == 0 for d in pack.days)
    assert [(s["balance_transaction_id"], s["amount"], s["external_ref"]) for s in pack.suspense] == [
        ("txn_GOLDd1", DISPUTE, "po_GOLD0001")
    ]
    assert pack.dead_letters == [] and pack.held == [] and not pack.ok  # suspense keeps it from closing clean
    html = written.html.read_text()
    assert "322.79" in html and "txn_GOLDd1" in html and "data:image/png;base64," in html
    assert [p.name for p in written.charts] == ["payouts_vs_bank.png"]
    assert written.charts[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
