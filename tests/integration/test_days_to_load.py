"""days_to_load is exact: every resource a load posts counts, and nothing else does."""

from __future__ import annotations

from datetime import UTC, date, datetime

from load_helpers import client_for, post_everything, posting_dates, sage_sandbox, write_mapping
from transform_helpers import load_stripe_objects

from stripe_sage_pipeline.automation import rules as automation
from stripe_sage_pipeline.load.customers import push_customers
from stripe_sage_pipeline.load.post import Poster, load_journal_entries
from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_pipeline.transform import build as transform
from stripe_sage_pipeline.transform.marts import built_mapping

TODAY = date(2026, 12, 31)


def test_days_to_load_covers_invoices_receipts_and_customers(fresh_db, golden_marts, tmp_path, monkeypatch):
    """Invoice-driven: journal entries posted alone leave exactly the invoice/receipt days; a changed customer a day."""
    mapping = write_mapping(tmp_path, monkeypatch, posting_mode="detail", revenue_mode="invoice_driven")
    g = golden_marts.clone_into(fresh_db)
    conninfo = libpq_url(fresh_db)
    assert built_mapping(fresh_db).revenue_mode == "invoice_driven"  # what the marts were built with
    every_day = automation.days_to_load(conninfo, today=TODAY)
    assert every_day == posting_dates(fresh_db)
    invoice_days = {
        datetime.fromtimestamp(c["created"], UTC).date() for c in g["stripe"]["charges"] if c.get("customer")
    }
    with sage_sandbox(tmp_path / "sage") as srv:
        client, counter = client_for(srv)
        poster = Poster(fresh_db, client, transport=counter)
        try:
            push_customers(fresh_db, client, mapping=mapping)
            for day in every_day:
                load_journal_entries(fresh_db, poster, day, mapping)
        finally:
            poster.close()
        # Journal entries and customers are in Sage: what is left are the invoices and their receipts.
        assert set(automation.days_to_load(conninfo, today=TODAY)) == invoice_days
        stats = post_everything(fresh_db, client, mapping, counter)
        assert stats["invoices"].created == 4 and stats["cash-receipts"].created == 4
        assert stats["journal-entries"].created == 0
        assert automation.days_to_load(conninfo, today=TODAY) == []

        # A Stripe-owned customer field changes: the day the customer was created (or a later one) loads.
        cus = dict(g["stripe"]["customers"][1], name="Globex Holdings Ltd")
        load_stripe_objects(fresh_db, {"customers": [cus]})
        transform.dbt_build(url=fresh_db)
        days = automation.days_to_load(conninfo, today=TODAY)
        assert days == [datetime.fromtimestamp(cus["created"], UTC).date()]
        pushed = push_customers(fresh_db, client, up_to=days[0], mapping=mapping)
        assert (pushed.posted, pushed.unchanged) == (1, 1)
        assert automation.days_to_load(conninfo, today=TODAY) == []


def test_days_to_load_skips_held_entries_and_reads_the_built_posting_mode(
    fresh_db, golden_marts, tmp_path, monkeypatch
):
    """A held summary entry adds no day; a mapping.yaml edited after the build does not change the mode used."""
    mapping = write_mapping(tmp_path, monkeypatch, posting_mode="payout_summary")
    golden_marts.clone_into(fresh_db)
    conninfo = libpq_url(fresh_db)
    with sage_sandbox(tmp_path / "sage") as srv:
        client, counter = client_for(srv)
        post_everything(fresh_db, client, mapping, counter)
        assert automation.days_to_load(conninfo, today=TODAY) == []
        # The payout loses a member: its summary entry no longer reconciles and is held, not re-listed forever.
        from transform_helpers import execute, query

        execute(
            fresh_db,
            "delete from stripe_staging.payout_balance_transactions where payout_id = 'po_GOLD0001'"
            " and balance_transaction_id = (select min(balance_transaction_id) from"
            " stripe_staging.payout_balance_transactions where payout_id = 'po_GOLD0001')",
        )
        execute(fresh_db, "update stripe_staging.payouts set _extracted_at = now() where id = 'po_GOLD0001'")
        transform.dbt_build(url=fresh_db)
        status = query(
            fresh_db,
            "select reconciliation_status from finance.fct_payout_reconciliation where payout_id = 'po_GOLD0001'",
        )
        assert status and status[0]["reconciliation_status"] != "reconciled"
        # The edited file says detail; the marts were built in payout_summary mode and stay the truth.
        write_mapping(tmp_path, monkeypatch, posting_mode="detail")
        assert built_mapping(fresh_db).posting_mode == "payout_summary"
        assert automation.days_to_load(conninfo, today=TODAY) == []
