"""Dead letters: a closed period, an unknown account and a too-long custno land in sage_sync.dead_letters
with their reason; after the fixes a re-drive (CLI, then the Dagster job) posts each exactly once."""

from __future__ import annotations

from collections import Counter

import httpx
import psycopg
from load_helpers import (
    client_for,
    expected_tb,
    ledger,
    movement,
    post_everything,
    sage_sandbox,
    write_mapping,
)

from stripe_sage_pipeline.cli.redrive import redrive_main
from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_pipeline.transform import build as transform


def _sql(url: str, *statements: str) -> None:
    with psycopg.connect(libpq_url(url)) as conn:
        for s in statements:
            conn.execute(s)


def test_dead_letters_then_fix_then_redrive_posts_each_once(fresh_db, golden_marts, tmp_path, monkeypatch, capsys):
    # Three faults at once: July 2026 is closed in Sage; dispute fees map to 6120, which Sage lacks;
    # a custno rule gone wrong gives Acme a 17-character custno.
    broken = write_mapping(
        tmp_path,
        monkeypatch,
        posting_mode="detail",
        chart_of_accounts={"6120": "Dispute Fees (new)"},
        fees={"by_category": {"dispute": "6120", "dispute_reversal": "6120"}},
    )
    g = golden_marts.clone_into(fresh_db)
    _sql(
        fresh_db,
        "alter table sage_sync.customer_xref drop constraint customer_xref_custno_check",
        "update sage_sync.customer_xref set custno = 'ACMECORPORATION-1' where customer_id = 'cus_GOLD0001'",
    )
    transform.dbt_build(url=fresh_db)

    with sage_sandbox(tmp_path / "sage", closed_periods=["2026-07"]) as srv:
        client, counter = client_for(srv)
        first = post_everything(fresh_db, client, broken, counter)
        dead = ledger(fresh_db, "select * from sage_sync.dead_letters order by resource, external_ref")
        by_ref = {(d["resource"], d["external_ref"]): d for d in dead}
        assert by_ref[("customers", "cus_GOLD0001")]["reason"] in ("FieldTooLong", "InvalidCharacters")
        assert by_ref[("customers", "cus_GOLD0001")]["field"] == "custno"
        assert by_ref[("journal-entries", "txn_GOLDd1")]["reason"] == "AccountNotFound"
        assert "6120" in by_ref[("journal-entries", "txn_GOLDd1")]["message"]
        closed = [d for d in dead if d["reason"] == "PeriodClosed"]
        assert {d["external_ref"] for d in closed} == {b["id"] for b in g["stripe"]["balance_transactions"]} - {
            "txn_GOLDd1"
        }
        assert all(d["field"] == "posting_date" and d["record"]["posting_date"] for d in closed)
        assert first["journal-entries"].dead_lettered == 8 and first["customers"].dead_lettered == 1
        # Re-running before the fix leaves them waiting: no request, no new dead letter.
        again = post_everything(fresh_db, client, broken, counter)
        assert again["journal-entries"].dead_letters_waiting == 8 and again["journal-entries"].requests == 0

        # The fixes: open the period (admin), restore the mapping, fix the custno rule's output.
        with httpx.Client(auth=("admin", "admin-secret")) as admin:
            admin.patch(f"{srv.base_url}/periods/2026-07", json={"status": "open"}).raise_for_status()
        write_mapping(tmp_path, monkeypatch, posting_mode="detail")
        _sql(
            fresh_db,
            "update sage_sync.customer_xref set custno = 'ACMEC-0001' where customer_id = 'cus_GOLD0001'",
            "alter table sage_sync.customer_xref add constraint customer_xref_custno_check"
            " check (custno ~ '^[A-Z0-9][A-Z0-9-]{0,9}$')",
        )
        transform.dbt_build(url=fresh_db)

        monkeypatch.setenv("SAGEPRO_BASE_URL", srv.base_url)
        assert redrive_main(["--resource", "customers"]) == 0
        out = capsys.readouterr().out
        assert "cus_GOLD0001" in out and "posted as ACMEC-0001" in out and "Re-drove 1 dead letter(s): 1 posted" in out

        from stripe_sage_pipeline.definitions import defs

        result = defs().resolve_job_def("redrive_dead_letters_job").execute_in_process()
        assert result.success
        meta = result.asset_materializations_for_node("redrive_dead_letters")[0].metadata
        assert meta["redriven"].value == 8 and meta["posted"].value == 8 and meta["still_dead"].value == 0

        # Exactly once each, and the books are the golden trial balance.
        entries = Counter(e["external_ref"] for e in client.list_all("/journal-entries"))
        assert entries == Counter({b["id"]: 1 for b in g["stripe"]["balance_transactions"]})
        customers = Counter(c["external_ref"] for c in client.list_all("/customers"))
        assert customers == Counter({"cus_GOLD0001": 1, "cus_GOLD0002": 1})
        assert client.get("/customers/ACMEC-0001")["external_ref"] == "cus_GOLD0001"
        assert movement(client, list(expected_tb(g))) == expected_tb(g)
        assert ledger(fresh_db, "select * from sage_sync.dead_letters") == []
        history = ledger(fresh_db, "select * from sage_sync.dead_letter_history")
        assert len(history) == 9 and all(h["resolved_at"] for h in history)
        rows = ledger(fresh_db)
        assert {r["status"] for r in rows} == {"posted"}
        assert {r["attempt"] for r in rows if r["external_ref"] == "txn_GOLDd1"} == {2}

        # A second re-drive finds nothing; the next regular load posts nothing.
        assert redrive_main([]) == 0
        assert "No dead letters" in capsys.readouterr().out
        before = len(srv.request_log)
        final = post_everything(fresh_db, client, write_mapping(tmp_path, monkeypatch, posting_mode="detail"), counter)
        assert sum(s.posted for s in final.values()) == 0
        assert not [e for e in srv.request_log[before:] if e.method == "POST"]
