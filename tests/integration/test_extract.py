"""Extraction from the Stripe emulator (over a socket, through the official SDK) into real Postgres."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import dagster as dg
import psycopg
import pytest
import stripe

from stripe_sage_pipeline.extract import extract
from stripe_sage_pipeline.extract.client import StripeReader
from stripe_sage_pipeline.extract.staging import ensure_schema
from stripe_sage_pipeline.extract.tables import SCHEMA, TABLES
from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_sandboxes.stripe_emulator import EmulatorConfig, EmulatorServer, EmulatorState, generate
from tests.extract_helpers import counts, partition_key, snapshot, window_of

KEY = "sk_test_emulator"


@pytest.fixture
def emulator():
    """Four generated days (ending today 00:00 UTC) served on an ephemeral port."""
    state = EmulatorState(EmulatorConfig(seed=3))
    generate(state, seed=3, days=4, volume=0.5)
    srv = EmulatorServer(state, port=0).start()
    yield state, srv
    srv.stop()


def _prepare(url: str) -> str:
    conninfo = libpq_url(url)
    with psycopg.connect(conninfo) as conn:
        ensure_schema(conn)
    return conninfo


def _extract_all(reader: StripeReader, conninfo: str, start: int, end: int) -> None:
    for t in TABLES:
        extract.extract_window(reader, conninfo, t, start, end)


def test_staging_equals_emulator_per_object_per_hour_and_in_sums(emulator, fresh_db, monkeypatch):
    """A single-run backfill through Dagster stages exactly what Stripe serves: counts, hours, Σ amount/fee/net."""
    state, srv = emulator
    summary = state.summary()
    _, end = window_of(summary)
    start = end - 5 * 86400  # the generated days (customers may be older: they are counted by hour below)
    monkeypatch.setenv("STRIPE_API_BASE", srv.url)
    monkeypatch.setenv("STRIPE_RATE_LIMIT_PER_S", "1000")
    from stripe_sage_pipeline.definitions import defs

    d = defs()
    result = d.resolve_job_def("extract_job").execute_in_process(
        tags={
            "dagster/asset_partition_range_start": partition_key(start),
            "dagster/asset_partition_range_end": partition_key(end - 3600),
        },
    )
    assert result.success
    in_window = {
        t: {
            h: n
            for h, n in summary["counts_by_hour"][t].items()
            if partition_key(start)[:10] + "T" + partition_key(start)[11:13] <= h
        }
        for t in TABLES
    }
    got = counts(fresh_db)
    for table in TABLES:
        assert got[table] == sum(in_window[table].values()), table
    assert got["balance_transactions"] == summary["counts"]["balance_transactions"]  # every BT is in the window
    assert got["balance_transactions"] > 100 and got["charges"] > 50
    conninfo = libpq_url(fresh_db)
    with psycopg.connect(conninfo) as conn:
        for table in TABLES:
            per_hour = dict(
                conn.execute(
                    f"select to_char(created at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24'), count(*) from {SCHEMA}.{table} group by 1"
                ).fetchall()
            )
            assert per_hour == in_window[table], table
        sums = {
            c: {"amount": a, "fee": f, "net": n}
            for c, a, f, n in conn.execute(
                f"select currency, sum(amount)::bigint, sum(fee)::bigint, sum(net)::bigint from {SCHEMA}.balance_transactions group by 1"
            )
        }
        members = dict(
            conn.execute(f"select payout_id, count(*) from {SCHEMA}.payout_balance_transactions group by 1").fetchall()
        )
        currencies = {r[0] for r in conn.execute(f"select distinct currency from {SCHEMA}.charges")}
        automatic = [r[0] for r in conn.execute(f"select id from {SCHEMA}.payouts where automatic")]
    assert sums == summary["balance_transactions"]
    assert {"jpy", "kwd", "usd"} <= currencies
    # Every automatic payout's membership was fetched through ?payout= (all pages), as Stripe lists it.
    client = stripe.StripeClient(KEY, base_addresses={"api": srv.url})
    for po in automatic:
        listed = sum(
            1 for _ in client.v1.balance_transactions.list(params={"payout": po, "limit": 100}).auto_paging_iter()
        )
        assert members.get(po, 0) == listed, po


def test_extracting_a_window_twice_changes_nothing(emulator, fresh_db):
    """Re-running any window is harmless: rows are upserted by id."""
    state, srv = emulator
    conninfo = _prepare(fresh_db)
    start, end = window_of(state.summary())
    reader = StripeReader(KEY, srv.url, rate_limit_per_s=None)
    _extract_all(reader, conninfo, start, end)
    first = snapshot(fresh_db)
    _extract_all(reader, conninfo, start, end)
    assert snapshot(fresh_db) == first
    assert sum(len(v) for v in first.values()) > 300


def test_refund_three_days_after_its_charge_reaches_the_charge_row_through_the_update_path(emulator, fresh_db):
    """The Events API path re-fetches a charge refunded days later; its refund and balance transaction arrive too."""
    state, srv = emulator
    conninfo = _prepare(fresh_db)
    start, end = window_of(state.summary())
    reader = StripeReader(KEY, srv.url, rate_limit_per_s=None)
    extract.ensure_events_cursor(reader, conninfo)
    _extract_all(reader, conninfo, start, end)
    with psycopg.connect(conninfo) as conn:
        charge_id, amount, created = conn.execute(
            f"select id, amount, extract(epoch from created)::bigint from {SCHEMA}.charges "
            "where amount_refunded = 0 and not disputed and status = 'succeeded' order by created desc limit 1"
        ).fetchone()
    state.set_clock(now=created + 3 * 86400)
    client = stripe.StripeClient(KEY, base_addresses={"api": srv.url})
    refund = client.v1.refunds.create(params={"charge": charge_id, "amount": amount // 2})
    res = extract.sync_events(reader, conninfo)
    assert res.events_new >= 1 and not res.fallback_relist
    with psycopg.connect(conninfo) as conn:
        refunded = conn.execute(f"select amount_refunded from {SCHEMA}.charges where id = %s", (charge_id,)).fetchone()[
            0
        ]
        r_row = conn.execute(
            f"select amount, charge_id, balance_transaction_id from {SCHEMA}.refunds where id = %s", (refund.id,)
        ).fetchone()
        bt = conn.execute(
            f"select amount, reporting_category from {SCHEMA}.balance_transactions where id = %s", (r_row[2],)
        ).fetchone()
        ev = conn.execute(
            f"select count(*) from {SCHEMA}.events where object_id in (%s, %s)", (charge_id, refund.id)
        ).fetchone()[0]
    assert refunded == amount // 2
    assert r_row[:2] == (amount // 2, charge_id)
    assert bt == (-(amount // 2), "refund")
    assert ev >= 2
    # A second pass sees the same events again inside its look-back and changes nothing.
    again = extract.sync_events(reader, conninfo)
    assert again.events_new == 0


def test_events_cursor_older_than_retention_falls_back_to_relisting(emulator, fresh_db):
    """The age guard: a cursor past the Events API's 30 days re-lists mutable objects instead of trusting events."""
    state, srv = emulator
    conninfo = _prepare(fresh_db)
    reader = StripeReader(KEY, srv.url, rate_limit_per_s=None)
    with psycopg.connect(conninfo) as conn:
        conn.execute(
            f"insert into {SCHEMA}._sync_state (stream, stripe_account, cursor_created) values ('events', '', %s)",
            (int(time.time()) - 40 * 86400,),
        )
    res = extract.sync_events(reader, conninfo, relist_horizon_s=10 * 86400)
    assert res.fallback_relist
    got = counts(fresh_db)
    assert got["charges"] == state.summary()["counts"]["charges"]
    with psycopg.connect(conninfo) as conn:
        cursor = conn.execute(f"select cursor_created from {SCHEMA}._sync_state where stream = 'events'").fetchone()[0]
    assert cursor > time.time() - 31 * 86400


def test_extraction_killed_mid_partition_and_rerun_equals_a_clean_run(emulator, fresh_db, pg_server):
    """SIGKILL in the middle of a backfill, then a re-run: staging ends equal to an uninterrupted run."""
    state, srv = emulator
    conninfo = _prepare(fresh_db)
    start, end = window_of(state.summary())
    script = textwrap.dedent(f"""
        from stripe_sage_pipeline.extract import extract
        from stripe_sage_pipeline.extract.client import StripeReader
        r = StripeReader({KEY!r}, {srv.url!r}, rate_limit_per_s=40)
        extract.extract_window(r, {conninfo!r}, "balance_transactions", {start}, {end}, workers=1, pieces=1)
    """)
    # Each page takes 0.8 s to arrive, so the kill lands between the first committed hour and the rest,
    # however busy the machine is.
    state.config.latency_ms = 800
    proc = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
    deadline = time.time() + 60
    while time.time() < deadline:
        if counts(fresh_db)["balance_transactions"] > 0:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state.config.latency_ms = 0
    partial = counts(fresh_db)["balance_transactions"]
    total = state.summary()["counts"]["balance_transactions"]
    assert 0 < partial < total, "the kill should land mid-backfill"
    with psycopg.connect(conninfo) as conn:
        resume = conn.execute(f"select count(*) from {SCHEMA}._sync_state where stream like 'extract:%'").fetchone()[0]
    assert resume == 1  # the chunk's resume cursor survived the kill
    reader = StripeReader(KEY, srv.url, rate_limit_per_s=None)
    extract.extract_window(reader, conninfo, "balance_transactions", start, end, pieces=1)
    resumed = snapshot(fresh_db)["balance_transactions"]
    # The clean run, in a database of its own.
    with psycopg.connect(f"host=127.0.0.1 port={pg_server.port} user=postgres dbname=postgres", autocommit=True) as c:
        c.execute("drop database if exists clean_run")
        c.execute("create database clean_run")
    clean_url = pg_server.url("clean_run")
    clean = _prepare(clean_url)
    extract.extract_window(reader, clean, "balance_transactions", start, end)
    assert resumed == snapshot(clean_url)["balance_transactions"]
    assert len(resumed) == total


def test_under_a_25_per_second_stripe_limit_no_429_escapes(emulator, fresh_db):
    """With the emulator enforcing 25 req/s, the client's limiter keeps under it and the run completes."""
    state, srv = emulator
    conninfo = _prepare(fresh_db)
    start, end = window_of(state.summary())
    state.config.rate_limit_per_s = 25
    before = dict(state.counters)
    reader = StripeReader(KEY, srv.url, rate_limit_per_s=22)
    extract.extract_window(reader, conninfo, "charges", start, end)
    assert counts(fresh_db)["charges"] == state.summary()["counts"]["charges"]
    assert state.counters["rate_limited"] - before.get("rate_limited", 0) == 0
    assert reader.stats.rate_limited == 0


def test_429s_from_an_unthrottled_client_are_retried_not_raised(emulator):
    """With no client limit, a burst meets the emulator's 25 req/s: every 429 is retried, none reaches the caller."""
    from concurrent.futures import ThreadPoolExecutor

    state, srv = emulator
    state.config.rate_limit_per_s = 25
    reader = StripeReader(KEY, srv.url, rate_limit_per_s=None, backoff_base_s=0.05)
    with ThreadPoolExecutor(8) as pool:
        pages = list(pool.map(lambda _: reader.request("/v1/charges", limit=3), range(80)))
    assert all(len(p["data"]) == 3 for p in pages)
    assert reader.stats.rate_limited > 0  # the server did push back ...
    assert reader.stats.retries >= reader.stats.rate_limited  # ... and every 429 was retried


def test_server_errors_are_retried(emulator, fresh_db):
    """A 5% rate of 5xx from Stripe costs retries, not rows."""
    state, srv = emulator
    conninfo = _prepare(fresh_db)
    start, end = window_of(state.summary())
    state.config.fault_5xx_rate = 0.05
    reader = StripeReader(KEY, srv.url, rate_limit_per_s=None, backoff_base_s=0.01)
    _extract_all(reader, conninfo, start, end)
    state.config.fault_5xx_rate = 0.0
    assert counts(fresh_db) == {t: state.summary()["counts"][t] for t in TABLES}
    assert reader.stats.server_errors > 0


def test_a_malformed_object_fails_the_run_naming_object_and_field_and_commits_nothing_for_its_hour(
    emulator, fresh_db, monkeypatch
):
    """A balance transaction without `amount` fails the partition with its id and the field; it is kept, not dropped."""
    state, srv = emulator
    conninfo = _prepare(fresh_db)
    _, end = window_of(state.summary())
    hour = end - 2 * 86400 - 3600 * 7  # inside the generated days, whatever the customers' age
    good = {
        "id": "txn_GOODNEIGHBOUR",
        "object": "balance_transaction",
        "amount": 500,
        "available_on": hour + 90,
        "created": hour + 60,
        "currency": "usd",
        "description": None,
        "exchange_rate": None,
        "fee": 0,
        "fee_details": [],
        "net": 500,
        "reporting_category": "charge",
        "source": None,
        "status": "available",
        "type": "charge",
    }
    bad = {**good, "id": "txn_MISSINGAMOUNT", "created": hour + 120}
    del bad["amount"]
    state.add("balance_transactions", good, raw=True)
    state.add("balance_transactions", bad, raw=True)
    state.finalize()
    monkeypatch.setenv("STRIPE_API_BASE", srv.url)
    monkeypatch.setenv("STRIPE_RATE_LIMIT_PER_S", "1000")
    from stripe_sage_pipeline.definitions import defs

    result = (
        defs()
        .resolve_job_def("extract_job")
        .execute_in_process(
            partition_key=partition_key(hour),
            raise_on_error=False,
            asset_selection=[dg.AssetKey(["stripe_staging", "balance_transactions"])],
        )
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert "txn_MISSINGAMOUNT" in message and "'amount'" in message
    with psycopg.connect(conninfo) as conn:
        in_hour = conn.execute(
            f"select count(*) from {SCHEMA}.balance_transactions where created >= to_timestamp(%s) and created < to_timestamp(%s)",
            (hour, hour + 3600),
        ).fetchone()[0]
        rejected = conn.execute(f"select object_id, field from {SCHEMA}._rejected_objects").fetchall()
    assert in_hour == 0  # not even the well-formed neighbour of the same hour
    assert rejected == [("txn_MISSINGAMOUNT", "amount")]


def test_connect_account_is_part_of_every_key(emulator, fresh_db):
    """The same objects read for a connected account land under that account, beside the platform's."""
    state, srv = emulator
    conninfo = _prepare(fresh_db)
    start, end = window_of(state.summary())
    extract.extract_window(StripeReader(KEY, srv.url, rate_limit_per_s=None), conninfo, "charges", start, end)
    extract.extract_window(
        StripeReader(KEY, srv.url, stripe_account="acct_CONNECTED1", rate_limit_per_s=None),
        conninfo,
        "charges",
        start,
        end,
    )
    with psycopg.connect(conninfo) as conn:
        per_account = dict(conn.execute(f"select stripe_account, count(*) from {SCHEMA}.charges group by 1").fetchall())
    n = state.summary()["counts"]["charges"]
    assert per_account == {"": n, "acct_CONNECTED1": n}


def test_history_job_a_malformed_object_fails_only_its_table_hour_and_the_staging_checks_run(
    emulator, fresh_db, monkeypatch
):
    """stripe_history_job with one balance transaction without `amount` and one with an unknown currency: every
    other hour and table is extracted, the staging checks run on the history path and catch the currency, and
    the run fails at the end naming the bad object with the hour it was created in."""
    state, srv = emulator
    conninfo = _prepare(fresh_db)
    start, end = window_of(state.summary())
    hour = end - 2 * 86400 - 3600 * 7
    base = {
        "object": "balance_transaction",
        "amount": 500,
        "available_on": hour + 90,
        "created": hour + 60,
        "currency": "usd",
        "description": None,
        "exchange_rate": None,
        "fee": 0,
        "fee_details": [],
        "net": 500,
        "reporting_category": "charge",
        "source": None,
        "status": "available",
        "type": "charge",
    }
    bad = {**base, "id": "txn_MISSINGAMOUNT", "created": hour + 120}
    del bad["amount"]
    odd_currency = {**base, "id": "txn_ODDCURRENCY", "currency": "xyz", "created": hour - 3 * 3600}
    state.finalize()
    bts_in_bad_hour = (
        state.summary()["counts_by_hour"]["balance_transactions"].get(
            time.strftime("%Y-%m-%dT%H", time.gmtime(hour)), 0
        )
        + 1
    )  # + the malformed one's good neighbour below
    state.add("balance_transactions", {**base, "id": "txn_GOODNEIGHBOUR"}, raw=True)
    state.add("balance_transactions", odd_currency, raw=True)
    state.finalize()
    expected = state.summary()["counts"]  # the malformed object is added after: summary() cannot sum it
    state.add("balance_transactions", bad, raw=True)
    state.finalize()
    monkeypatch.setenv("STRIPE_API_BASE", srv.url)
    monkeypatch.setenv("STRIPE_RATE_LIMIT_PER_S", "1000")
    from stripe_sage_pipeline.definitions import defs

    result = (
        defs()
        .resolve_job_def("stripe_history_job")
        .execute_in_process(
            raise_on_error=False,
            run_config={
                "ops": {
                    "extract_history": {"config": {"start": partition_key(start), "end": partition_key(end - 3600)}}
                }
            },
        )
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_key == "check_staging_history"  # extraction itself went through every table
    message = str(failure.event_specific_data.error)
    bad_hour = time.strftime("%Y-%m-%dT%H:00Z", time.gmtime(hour))
    assert f"balance_transactions {bad_hour}: balance_transaction txn_MISSINGAMOUNT: field 'amount'" in message
    assert "staging_balance_transaction_currency_iso" in message
    evaluations = {
        e.event_specific_data.check_name: e.event_specific_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert evaluations["staging_balance_transaction_currency_iso"] is False
    assert evaluations["staging_charge_currency_iso"] is True

    got = counts(fresh_db)
    for table in TABLES:
        if table != "balance_transactions":
            assert got[table] == expected[table], table
    with psycopg.connect(conninfo) as conn:
        assert got["balance_transactions"] == expected["balance_transactions"] - bts_in_bad_hour
        in_hour = conn.execute(
            f"select count(*) from {SCHEMA}.balance_transactions where created >= to_timestamp(%s)"
            " and created < to_timestamp(%s)",
            (hour, hour + 3600),
        ).fetchone()[0]
        rejected = conn.execute(f"select object_id, field, partition_key from {SCHEMA}._rejected_objects").fetchall()
    assert in_hour == 0
    assert rejected == [("txn_MISSINGAMOUNT", "amount", bad_hour)]


def _customer(cid: str, email: str) -> dict:
    return {"id": cid, "object": "customer", "created": 1783934100, "email": email, "livemode": False}


def test_staging_copies_new_ids_straight_in_and_upserts_known_or_concurrent_ones(fresh_db):
    """New ids go straight in; a batch with a known id replaces it; an id another writer stages while the
    copy runs makes the copy roll back to its savepoint and the batch upsert, in the same transaction."""
    import threading

    from stripe_sage_pipeline.extract import staging

    url = libpq_url(fresh_db)
    table = TABLES["customers"]
    with psycopg.connect(url) as conn:
        ensure_schema(conn)
        conn.commit()

    def emails(conn) -> dict[str, str]:
        return dict(conn.execute(f"select id, email from {SCHEMA}.customers").fetchall())

    with psycopg.connect(url) as conn:
        rows = staging.rows_for(table, [_customer(f"cus_{i}", f"{i}@a.test") for i in range(3)])
        assert staging.upsert_rows(conn, table, rows) == 3
        conn.commit()
        again = staging.rows_for(table, [_customer("cus_1", "new@a.test"), _customer("cus_9", "9@a.test")])
        assert staging.upsert_rows(conn, table, again) == 2
        conn.commit()
        assert emails(conn) == {"cus_0": "0@a.test", "cus_1": "new@a.test", "cus_2": "2@a.test", "cus_9": "9@a.test"}

    # Another writer stages cus_20 between our check and our copy: its uncommitted row makes our copy
    # wait on the key; once it commits, the copy fails and the batch is upserted over it.
    with (
        psycopg.connect(url, autocommit=True) as watch,
        psycopg.connect(url) as other,
        psycopg.connect(url) as conn,
    ):
        staging.upsert_rows(other, table, staging.rows_for(table, [_customer("cus_20", "other@a.test")]))
        conn.execute("create table public.marker (n int)")  # the caller's own work in its transaction
        batch = staging.rows_for(table, [_customer("cus_20", "ours@a.test"), _customer("cus_21", "21@a.test")])
        done: list[int] = []
        worker = threading.Thread(target=lambda: done.append(staging.upsert_rows(conn, table, batch)))
        worker.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until our copy waits on the other writer's row
            waiting = watch.execute(  # autocommit: a transaction would see one snapshot of the activity
                "select count(*) from pg_stat_activity where wait_event_type = 'Lock' and query ilike 'copy%%'"
            ).fetchone()[0]
            if waiting:
                break
            time.sleep(0.05)
        other.commit()  # first: a failed wait must not leave the copy blocked on the other writer
        assert waiting, "the copy never waited on the other writer's key"
        worker.join(10)
        assert done == [2]
        conn.commit()
        assert conn.execute("select count(*) from public.marker").fetchone()[0] == 0  # the table survived
        got = emails(conn)
        assert got["cus_20"] == "ours@a.test" and got["cus_21"] == "21@a.test" and len(got) == 6
