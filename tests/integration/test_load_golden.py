"""The golden example posted to a Sage sandbox over a socket: GL equals the golden trial balance in both modes."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import dagster as dg
import psycopg
import pytest
from load_helpers import (
    client_for,
    expected_tb,
    ledger,
    movement,
    post_everything,
    posting_dates,
    sage_sandbox,
    sage_state,
    write_mapping,
)

from stripe_sage_pipeline.load.post import PartitionBlocked, Poster, gl_movement, load_journal_entries
from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_pipeline.transform import build as transform
from stripe_sage_sandboxes.sage.store import DEFAULT_CHART

ALL_ACCOUNTS = [code for code, *_ in DEFAULT_CHART]


def _run_load_job(partition: str) -> dg.ExecuteInProcessResult:
    from stripe_sage_pipeline.definitions import defs

    return defs().resolve_job_def("load_job").execute_in_process(partition_key=partition, raise_on_error=False)


@pytest.mark.parametrize("mode", ["payout_summary", "detail"])
def test_golden_gl_equals_trial_balance_through_dagster(mode, fresh_db, golden_marts, tmp_path, monkeypatch):
    """load_job per posting date (fresh sandbox per mode): Sage's per-account movement is the golden TB."""
    write_mapping(tmp_path, monkeypatch, posting_mode=mode)
    g = golden_marts.clone_into(fresh_db)
    with sage_sandbox(tmp_path / "sage") as srv:
        monkeypatch.setenv("SAGEPRO_BASE_URL", srv.base_url)
        days = posting_dates(fresh_db)
        for day in days:
            result = _run_load_job(day.isoformat())
            assert result.success, day
        mats = [e for day in days[-1:] for e in _run_load_job(day.isoformat()).get_asset_materialization_events()]
        client, _ = client_for(srv)
        got = movement(client, ALL_ACCOUNTS)
        want = expected_tb(g)
        assert {k: v for k, v in got.items() if v} == {k: v for k, v in want.items() if v}
        for code in want:
            assert got[code] == want[code], code
        reported = {k: Decimal(v) for k, v in gl_movement(client)["usd"].items()}
        assert {k: v for k, v in reported.items() if v} == {k: v for k, v in want.items() if v}

        rows = ledger(fresh_db)
        assert rows and {r["status"] for r in rows} == {"posted"}
        assert all(r["sage_id"] and r["posted_at"] for r in rows)
        je = [r for r in rows if r["resource"] == "journal-entries"]
        if mode == "payout_summary":
            assert {r["external_ref"] for r in je} == {"po_GOLD0000", "po_GOLD0001"}
            entry = client.find_by_external_ref("journal-entries", "po_GOLD0001")
            exp = g["expected"]["payout_summary_journal_po_GOLD0001"]
            assert entry["posting_date"] == exp["posting_date"]
            assert {(ln["glacnt"], ln["debit"], ln["credit"]) for ln in entry["lines"]} == {
                (e["glacnt"], e.get("debit", "0.00"), e.get("credit", "0.00")) for e in exp["lines"]
            }
            assert entry["total_debit"] == exp["total_debit"]
        else:
            assert {r["external_ref"] for r in je} == {b["id"] for b in g["stripe"]["balance_transactions"]}
        assert {r["external_ref"] for r in rows if r["resource"] == "customers"} == {"cus_GOLD0001", "cus_GOLD0002"}
        # Re-running the last partition posts nothing and reports it.
        meta = {m.asset_key.to_user_string(): m.materialization.metadata for m in mats}
        je_meta = meta["sage/journal_entries"]
        assert je_meta["created"].value == 0 and je_meta["requests_used"].value == 0
        assert je_meta["unchanged"].value >= 1
        assert "dead_lettered" in je_meta and "replayed" in je_meta and "already_exists" in je_meta


def test_backfill_of_a_month_twice_changes_nothing(fresh_db, golden_marts, tmp_path, monkeypatch):
    """Every day of July 2026 posted in order, twice: the second pass sends no request and changes nothing."""
    mapping = write_mapping(tmp_path, monkeypatch, posting_mode="detail")
    g = golden_marts.clone_into(fresh_db)
    month = [date(2026, 7, 1) + timedelta(days=i) for i in range(31)]
    with sage_sandbox(tmp_path / "sage") as srv:
        client, counter = client_for(srv)
        first = post_everything(fresh_db, client, mapping, counter, days=month)
        state = sage_state(client)
        ledger_before = ledger(fresh_db)
        before = counter.count
        second = post_everything(fresh_db, client, mapping, counter, days=month)
        # Customers are compared (a listing read per day is not a write); nothing is posted.
        writes = [e for e in srv.request_log if e.method == "POST"]
        assert sum(s.posted for s in second.values()) == 0
        assert second["journal-entries"].requests == 0
        assert counter.count - before == 0
        assert sage_state(client) == state
        assert ledger(fresh_db) == ledger_before
        assert first["journal-entries"].created == len(g["stripe"]["balance_transactions"])
        assert len(writes) == first["journal-entries"].created + first["customers"].created
        assert movement(client, list(expected_tb(g))) == expected_tb(g)


def test_changed_mapping_reverses_and_reposts(fresh_db, golden_marts, tmp_path, monkeypatch):
    """Finance moves dispute fees to 6100 after posting: the dispute entry is reversed and re-posted as ~v2."""
    mapping = write_mapping(tmp_path, monkeypatch, posting_mode="detail")
    g = golden_marts.clone_into(fresh_db)
    with sage_sandbox(tmp_path / "sage") as srv:
        client, counter = client_for(srv)
        post_everything(fresh_db, client, mapping, counter)
        changed = write_mapping(
            tmp_path,
            monkeypatch,
            posting_mode="detail",
            fees={"default": "6100", "by_category": {}, "by_fee_type": {"stripe_fee": "6100"}},
        )
        transform.dbt_build(url=fresh_db)
        stats = post_everything(fresh_db, client, changed, counter)["journal-entries"]
        assert (stats.reversed, stats.corrected, stats.created) == (1, 1, 1)
        got = movement(client, list(expected_tb(g)))
        want = expected_tb(g) | {"6110": Decimal("0.00"), "6100": Decimal("30.21")}
        assert got == want
        entries = {e["external_ref"]: e for e in client.list_all("/journal-entries")}
        assert entries["txn_GOLDd1"]["status"] == "reversed"
        assert entries["txn_GOLDd1~r1"]["reverses"] == entries["txn_GOLDd1"]["batch_no"]
        assert entries["txn_GOLDd1~r1"]["posting_date"] == entries["txn_GOLDd1"]["posting_date"]
        assert {ln["glacnt"] for ln in entries["txn_GOLDd1~v2"]["lines"]} == {"1150", "4060", "6100"}
        versions = ledger(
            fresh_db,
            "select version, status, sage_ref from sage_sync.posting_ledger"
            " where external_ref = 'txn_GOLDd1' order by version",
        )
        assert [(v["version"], v["status"], v["sage_ref"]) for v in versions] == [
            (1, "reversed", "txn_GOLDd1"),
            (2, "posted", "txn_GOLDd1~v2"),
        ]
        # And once more: nothing left to do.
        again = post_everything(fresh_db, client, changed, counter)["journal-entries"]
        assert (again.reversed, again.created, again.requests) == (0, 0, 0)


def test_partition_with_broken_invariant_is_refused(fresh_db, golden_marts, tmp_path, monkeypatch):
    """An unbalanced entry in the marts blocks its whole date (the asset says so); other dates post."""
    write_mapping(tmp_path, monkeypatch, posting_mode="detail")
    golden_marts.clone_into(fresh_db)
    with psycopg.connect(libpq_url(fresh_db)) as conn:
        conn.execute(
            "update finance.fct_journal_lines set debit = debit + 1"
            " where entry_id = 'detail:txn_GOLDc1' and debit > 0 and account_code = '1150'"
        )
        bad_day = conn.execute(
            "select posting_date from finance.fct_journal_lines where entry_id = 'detail:txn_GOLDc1' limit 1"
        ).fetchone()[0]
    with sage_sandbox(tmp_path / "sage") as srv:
        monkeypatch.setenv("SAGEPRO_BASE_URL", srv.base_url)
        result = _run_load_job(bad_day.isoformat())
        assert not result.success
        failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert any("invariants" in (e.event_specific_data.error.message or "") for e in failure)
        client, _ = client_for(srv)
        posted = [e for e in client.list_all("/journal-entries") if e["posting_date"] == bad_day.isoformat()]
        assert posted == []
        with pytest.raises(PartitionBlocked, match="unbalanced"):
            poster = Poster(fresh_db, client)
            load_journal_entries(fresh_db, poster, bad_day)


def test_range_run_posts_every_day_but_the_refused_one_and_names_it(fresh_db, golden_marts, tmp_path, monkeypatch):
    """A backfill's one run over the golden dates with one broken day: every other day is posted, each day's
    materialization has its own figures, and the journal step fails at the end naming the refused day."""
    write_mapping(tmp_path, monkeypatch, posting_mode="detail")
    golden_marts.clone_into(fresh_db)
    with psycopg.connect(libpq_url(fresh_db)) as conn:
        conn.execute(
            "update finance.fct_journal_lines set debit = debit + 1"
            " where entry_id = 'detail:txn_GOLDc1' and debit > 0 and account_code = '1150'"
        )
        bad_day = conn.execute(
            "select posting_date from finance.fct_journal_lines where entry_id = 'detail:txn_GOLDc1' limit 1"
        ).fetchone()[0]
        entry_days = {
            r[0]
            for r in conn.execute("select distinct posting_date from finance.fct_journal_lines where is_selected_mode")
        }
    dates = posting_dates(fresh_db)
    first, last = dates[0], dates[-1]
    span = [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    assert len(span) > 1 and bad_day.isoformat() in span
    from stripe_sage_pipeline.definitions import defs

    with sage_sandbox(tmp_path / "sage") as srv:
        monkeypatch.setenv("SAGEPRO_BASE_URL", srv.base_url)
        result = (
            defs()
            .resolve_job_def("load_job")
            .execute_in_process(
                tags={"dagster/asset_partition_range_start": span[0], "dagster/asset_partition_range_end": span[-1]},
                raise_on_error=False,
            )
        )
        assert not result.success
        failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert [e.step_key for e in failures] == ["sage__journal_entries"]
        message = failures[0].event_specific_data.error.message
        assert f"1 of {len(span)} day(s) refused" in message
        assert f"{bad_day}: PartitionBlocked: refusing to post {bad_day}" in message
        client, _ = client_for(srv)
        posted_days = {e["posting_date"] for e in client.list_all("/journal-entries")}
        assert posted_days == {d.isoformat() for d in entry_days - {bad_day}}
        # The steps before it materialized every day of the range, each with its own figures.
        mats = result.get_asset_materialization_events()
        customers = [m for m in mats if m.asset_key == dg.AssetKey(["sage", "customers"])]
        assert sorted(m.partition for m in customers) == span
        assert {m.materialization.metadata["up_to"].value for m in customers} == {span[-1]}
        receipts = {m.partition: m.materialization.metadata for m in mats if m.asset_key.path[-1] == "cash_receipts"}
        assert sorted(receipts) == span
        assert sorted(receipts[span[0]]["days"].value) == span
        assert all(meta["planned"].value == 0 for meta in receipts.values())  # direct revenue: nothing to receive


def test_range_run_with_a_refused_invoice_day_posts_every_other_day(fresh_db, golden_marts, tmp_path, monkeypatch):
    """Invoice-driven revenue, a backfill's one run, one day whose invoice breaks its total: that day posts
    nothing (no invoice, receipt or journal entry, as in a one-day run), every other day posts all three, the
    invoice and receipt steps list the refused day and succeed (a failed step would skip the later steps
    for the whole range), and the journal step, the last, fails naming it."""
    write_mapping(tmp_path, monkeypatch, posting_mode="detail", revenue_mode="invoice_driven")
    golden_marts.clone_into(fresh_db)
    with psycopg.connect(libpq_url(fresh_db)) as conn:
        bad_day = conn.execute(
            "update finance.fct_invoice_lines set document_total = document_total + 1"
            " where charge_id = 'ch_GOLD0001' returning posting_date"
        ).fetchone()[0]
        entry_days = {
            r[0]
            for r in conn.execute("select distinct posting_date from finance.fct_journal_lines where is_selected_mode")
        }
        charges = {
            r[0]: r[1] for r in conn.execute("select distinct charge_id, posting_date from finance.fct_invoice_lines")
        }
    dates = posting_dates(fresh_db)
    span = [(dates[0] + timedelta(days=i)).isoformat() for i in range((dates[-1] - dates[0]).days + 1)]
    from stripe_sage_pipeline.definitions import defs

    with sage_sandbox(tmp_path / "sage") as srv:
        monkeypatch.setenv("SAGEPRO_BASE_URL", srv.base_url)
        result = (
            defs()
            .resolve_job_def("load_job")
            .execute_in_process(
                tags={"dagster/asset_partition_range_start": span[0], "dagster/asset_partition_range_end": span[-1]},
                raise_on_error=False,
            )
        )
        failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert [e.step_key for e in failures] == ["sage__journal_entries"]
        message = failures[0].event_specific_data.error.message
        assert f"1 of {len(span)} day(s) refused" in message and f"{bad_day}: PartitionBlocked" in message
        mats = result.get_asset_materialization_events()
        invoices_meta = next(m.materialization.metadata for m in mats if m.asset_key.path[-1] == "invoices")
        assert list(invoices_meta["refused_days"].value) == [bad_day.isoformat()]
        client, _ = client_for(srv)
        invoiced = {i["reference"] for i in client.list_all("/invoices")}
        assert invoiced == {c for c, d in charges.items() if d != bad_day} and "ch_GOLD0001" not in invoiced
        assert len(list(client.list_all("/cash-receipts"))) == len(invoiced)
        posted_days = {e["posting_date"] for e in client.list_all("/journal-entries")}
        assert bad_day.isoformat() not in posted_days
        assert posted_days and posted_days <= {d.isoformat() for d in entry_days - {bad_day}}


def test_golden_invoice_driven_revenue(fresh_db, golden_marts, tmp_path, monkeypatch):
    """revenue_mode invoice_driven: an invoice and a cash receipt per charge replace its entry; same GL."""
    mapping = write_mapping(tmp_path, monkeypatch, posting_mode="detail", revenue_mode="invoice_driven")
    g = golden_marts.clone_into(fresh_db)
    with sage_sandbox(tmp_path / "sage") as srv:
        client, counter = client_for(srv)
        stats = post_everything(fresh_db, client, mapping, counter)
        assert (stats["invoices"].created, stats["cash-receipts"].created, stats["journal-entries"].created) == (
            4,
            4,
            4,
        )
        assert sum(s.dead_lettered + s.held for s in stats.values()) == 0
        got = movement(client, ALL_ACCOUNTS)
        want = expected_tb(g)
        assert {k: v for k, v in got.items() if v} == {k: v for k, v in want.items() if v}
        invoice = client.find_by_external_ref("invoices", "ch_GOLD0001")
        assert (invoice["custno"], invoice["subtotal"], invoice["tax"], invoice["balance"]) == (
            "ACMEC-0001",
            "100.00",
            "8.00",
            "0.00",
        )
        receipt = client.find_by_external_ref("cash-receipts", "txn_GOLDc1")
        assert (receipt["amount"], receipt["fee_amount"], receipt["applications"][0]["invno"]) == (
            "108.00",
            "3.43",
            invoice["invno"],
        )
        assert client.find_by_external_ref("journal-entries", "txn_GOLDc1") is None
        again = post_everything(fresh_db, client, mapping, counter)
        assert sum(s.posted for s in again.values()) == 0


def test_paid_payout_that_fails_later_gets_a_reversing_entry(fresh_db, golden_marts, tmp_path, monkeypatch):
    """po_GOLD0001 is posted as paid, then fails (bank return): a reversal entry is posted, the original stays."""
    from transform_helpers import bt, load_stripe_objects, payout

    mapping = write_mapping(tmp_path, monkeypatch, posting_mode="payout_summary")
    g = golden_marts.clone_into(fresh_db)
    with sage_sandbox(tmp_path / "sage") as srv:
        client, counter = client_for(srv)
        post_everything(fresh_db, client, mapping, counter)
        failed_at = 1784160000 + 2 * 86400
        load_stripe_objects(
            fresh_db,
            {
                "balance_transactions": [
                    bt(
                        "txn_GOLDpf1",
                        24541,
                        0,
                        "payout_reversal",
                        "po_GOLD0001",
                        created=failed_at,
                        type_="payout_failure",
                    )
                ],
                "payouts": [
                    payout("po_GOLD0001", 24541, "txn_GOLDp1", 1784160000, status="failed", failure_bt="txn_GOLDpf1")
                ],
            },
        )
        transform.dbt_build(url=fresh_db)
        stats = post_everything(fresh_db, client, mapping, counter)
        assert stats["journal-entries"].created == 1 and stats["journal-entries"].reversed == 0
        reversal = client.find_by_external_ref("journal-entries", "txn_GOLDpf1")
        assert reversal["posting_date"] == "2026-07-18"
        assert {(ln["glacnt"], ln["debit"], ln["credit"]) for ln in reversal["lines"]} == {
            ("1150", "245.41", "0.00"),
            ("1010", "0.00", "245.41"),
        }
        assert client.find_by_external_ref("journal-entries", "po_GOLD0001")["status"] == "posted"
        got = movement(client, list(expected_tb(g)))
        assert got == expected_tb(g) | {"1010": Decimal("77.38"), "1150": Decimal("245.41")}
