"""Fewer requests for the same staged rows: the sized, probed plan and the update path's `expand[]`."""

from __future__ import annotations

import psycopg
import pytest

from stripe_sage_pipeline.extract import extract
from stripe_sage_pipeline.extract.client import StripeReader
from stripe_sage_pipeline.extract.staging import ensure_schema
from stripe_sage_pipeline.extract.tables import SCHEMA, TABLES
from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_sandboxes.stripe_emulator import EmulatorConfig, EmulatorServer, EmulatorState, generate
from tests.extract_helpers import snapshot, window_of

KEY = "sk_test_emulator"


@pytest.fixture(scope="module")
def emulator():
    """Four generated days served on an ephemeral port (read-only for these tests)."""
    state = EmulatorState(EmulatorConfig(seed=5))
    generate(state, seed=5, days=4, volume=0.5)
    srv = EmulatorServer(state, port=0).start()
    yield state, srv
    srv.stop()


def _db(pg_server, name: str) -> str:
    with psycopg.connect(f"host=127.0.0.1 port={pg_server.port} user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'drop database if exists "{name}"')
        c.execute(f'create database "{name}"')
    conninfo = libpq_url(pg_server.url(name))
    with psycopg.connect(conninfo) as conn:
        ensure_schema(conn)
    return conninfo


def test_sized_plan_stages_the_same_rows_as_fixed_chunks_with_fewer_requests(emulator, pg_server):
    """All tables at once, sized from the limit and latency, probed: same rows, same sums as 16 fixed chunks per table."""
    state, srv = emulator
    start, end = window_of(state.summary())
    fixed_db, sized_db = _db(pg_server, "req_fixed"), _db(pg_server, "req_sized")
    fixed = StripeReader(KEY, srv.url, rate_limit_per_s=None)
    for t in TABLES:  # the previous plan: table after table, 16 chunks each
        extract.extract_window(fixed, fixed_db, t, start, end, workers=8, pieces=16)
    sized = StripeReader(KEY, srv.url, rate_limit_per_s=1000)
    res = extract.extract_windows(sized, sized_db, list(TABLES), start, end)
    assert res.errors == {}
    assert res.in_flight >= 2
    assert snapshot(sized_db) == snapshot(fixed_db)
    with psycopg.connect(sized_db) as conn:
        sums = {
            c: {"amount": a, "fee": f, "net": n}
            for c, a, f, n in conn.execute(
                f"select currency, sum(amount)::bigint, sum(fee)::bigint, sum(net)::bigint from {SCHEMA}.balance_transactions group by 1"
            )
        }
    assert sums == state.summary()["balance_transactions"]
    # Per table: its pages, one partly filled page per chunk, and one per payout membership list.
    staged = {t: n for t, n in ((t, r.rows) for t, r in res.results.items())}
    members = sum(r.payout_members for r in res.results.values())
    floor = sum(-(-n // 100) or 1 for n in staged.values())
    assert sized.stats.requests < fixed.stats.requests
    assert (
        sized.stats.requests
        <= floor + sum(res.chunks.values()) + res.pieces_taken + state.summary()["counts"]["payouts"] + members // 100
    )


def test_update_path_stages_what_listing_stages_with_one_request_per_changed_object(emulator, pg_server):
    """Re-fetching every charge, refund, payout and dispute: identical rows, balance transactions brought along by expand[]."""
    state, srv = emulator
    start, end = window_of(state.summary())
    listed_db, refetched_db = _db(pg_server, "req_listed"), _db(pg_server, "req_refetched")
    extract.extract_windows(StripeReader(KEY, srv.url, rate_limit_per_s=None), listed_db, list(TABLES), start, end)
    changed = {t: {o["id"] for o in state.iter_rendered(t)} for t in ("charges", "refunds", "payouts", "disputes")}
    reader = StripeReader(KEY, srv.url, rate_limit_per_s=None)
    n = extract.refetch_objects(reader, refetched_db, changed)
    listed, refetched = snapshot(listed_db), snapshot(refetched_db)
    for t in changed:
        assert refetched[t] == listed[t] and len(refetched[t]) == len(changed[t]), t
    # Every balance transaction those objects point at, row for row as listed.
    bt_ids = set()
    with psycopg.connect(listed_db) as conn:
        for t, cols in (
            ("charges", ["balance_transaction_id"]),
            ("refunds", ["balance_transaction_id"]),
            ("payouts", ["balance_transaction_id", "failure_balance_transaction_id"]),
        ):
            for col in cols:
                bt_ids |= {r[0] for r in conn.execute(f"select {col} from {SCHEMA}.{t} where {col} is not null")}
        bt_ids |= {
            r[0]
            for r in conn.execute(f"select jsonb_array_elements(balance_transactions)->>'id' from {SCHEMA}.disputes")
        }
        pages = conn.execute(
            f"select coalesce(sum(greatest(1, ceil(n / 100.0))), 0)::int from (select p.id, count(m.balance_transaction_id) n "
            f"from {SCHEMA}.payouts p left join {SCHEMA}.payout_balance_transactions m on m.payout_id = p.id "
            "where p.automatic and p.status in ('paid', 'in_transit', 'failed') group by p.id) x"
        ).fetchone()[0]
        # The rest belong to no object re-fetched here (Stripe fees, fee credits, reserve holds, top-ups,
        # adjustments): the hourly listing of balance transactions stages those; they never change afterwards.
        standalone = conn.execute(
            f"select id, source_id from {SCHEMA}.balance_transactions where not (id = any(%s))", (list(bt_ids),)
        ).fetchall()
    every_changed_id = set().union(*changed.values())
    assert all(source not in every_changed_id for _, source in standalone), standalone
    assert [r for r in listed["balance_transactions"] if r[1] in bt_ids] == refetched["balance_transactions"]
    assert n["balance_transactions"] == len(bt_ids) == len(listed["balance_transactions"]) - len(standalone)
    assert refetched["payout_balance_transactions"] == listed["payout_balance_transactions"]
    # One request per object plus the ?payout= pages: not one for any balance transaction.
    assert reader.stats.requests == sum(len(ids) for ids in changed.values()) + pages


def test_history_job_extracts_every_table_in_one_sized_run(emulator, fresh_db, monkeypatch):
    """`stripe_history_job` through Dagster: every table of the window staged, with the explicit worker setting."""
    from tests.extract_helpers import counts, partition_key

    state, srv = emulator
    start, end = window_of(state.summary())
    monkeypatch.setenv("STRIPE_API_BASE", srv.url)
    monkeypatch.setenv("STRIPE_RATE_LIMIT_PER_S", "1000")
    monkeypatch.setenv("STRIPE_EXTRACT_WORKERS", "3")
    import dagster as dg

    from stripe_sage_pipeline.definitions import defs

    instance = dg.DagsterInstance.ephemeral()
    config = {"start": partition_key(start), "end": partition_key(end - 3600)}
    result = (
        defs()
        .resolve_job_def("stripe_history_job")
        .execute_in_process(run_config={"ops": {"extract_history": {"config": config}}}, instance=instance)
    )
    assert result.success
    assert counts(fresh_db) == {t: state.summary()["counts"][t] for t in TABLES}
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any(", 3 in flight," in m for m in messages)  # STRIPE_EXTRACT_WORKERS won over the sizing


def _extract_cursors(url: str) -> list[tuple[str, int]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            f"select stream, cursor_created from {SCHEMA}._sync_state where stream like 'extract:%' order by 1"
        ).fetchall()


def test_a_cut_chunk_stops_at_the_cut_and_a_rerun_resumes_there(emulator, pg_server):
    """`Span.cut` gives the older half away: the chunk stages only what is above the cut, leaves its resume
    cursor at the cut, and a re-run of the window (the piece lost, as in a killed run) stages the rest.
    The window ends where the cut falls on the half hour of an hour with charges on both sides of it:
    that hour is staged in two parts, by two chunks."""
    state, srv = emulator
    _, last = window_of(state.summary())
    created = [o["created"] for o in state.iter_rendered("charges")]
    start = min(created) - min(created) % 3600  # the charges' hours (the window also holds older customers)
    split = [h for h in range(start, last, 3600) if any(h <= c < h + 1800 for c in created)]
    split = [h for h in split if any(h + 1800 <= c < h + 3600 for c in created) and 2 * h + 3600 - start <= last]
    hour = split[-1]
    end = 2 * hour + 3600 - start  # the window's middle is the half hour
    clean_db, cut_db = _db(pg_server, "req_clean"), _db(pg_server, "req_cut")
    reader = StripeReader(KEY, srv.url, rate_limit_per_s=None)
    extract.extract_windows(reader, clean_db, ["charges"], start, end)
    span = extract.Span(start, end)
    piece = span.cut(3600)
    assert piece == (start, hour + 1800)
    res = extract.extract_chunk(reader, cut_db, "charges", start, end, span=span)
    with psycopg.connect(cut_db) as conn:
        (oldest,) = conn.execute(f"select min(created) from {SCHEMA}.charges").fetchone()
        staged = conn.execute(f"select count(*) from {SCHEMA}.charges").fetchone()[0]
    above = sum(1 for o in state.iter_rendered("charges") if piece[1] <= o["created"] < end)
    assert oldest.timestamp() >= piece[1] and staged == res.rows == above > 0
    assert _extract_cursors(cut_db) == [(f"extract:charges:{start}:{end}", piece[1])]
    extract.extract_windows(reader, cut_db, ["charges"], start, end, pieces=1)
    assert snapshot(cut_db)["charges"] == snapshot(clean_db)["charges"]
    assert _extract_cursors(cut_db) == []


def test_idle_workers_cut_running_chunks_and_the_window_stages_the_same_rows(emulator, pg_server, monkeypatch):
    """More workers than chunks: idle workers take the older halves of running chunks; the rows are those
    of a one-chunk-per-table run, and no resume cursor is left behind. (The whole window is one part here:
    four days of this small history in four parts are a page or less each, with nothing left to cut.)"""
    monkeypatch.setattr(extract, "PROBES_PER_TABLE", 1)
    state, srv = emulator
    start, end = window_of(state.summary())
    one_db, cut_db = _db(pg_server, "req_one"), _db(pg_server, "req_cuts")
    extract.extract_windows(
        StripeReader(KEY, srv.url, rate_limit_per_s=None), one_db, list(TABLES), start, end, pieces=1
    )
    reader = StripeReader(KEY, srv.url, rate_limit_per_s=None)
    res = extract.extract_windows(reader, cut_db, list(TABLES), start, end, workers=12)
    assert res.errors == {}
    assert res.pieces_taken > 0
    assert snapshot(cut_db) == snapshot(one_db)
    assert _extract_cursors(cut_db) == []


class _Recording(StripeReader):
    """A reader that notes each GET it sends (path and params) before sending it to the emulator."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[str, dict]] = []

    def _get(self, path, params):
        self.sent.append((path, dict(params)))
        return super()._get(path, params)


def test_the_first_round_trip_probes_every_part_and_each_probe_page_is_read_once(emulator, pg_server):
    """The window's parts are probed at once, before any chunk starts; each probe's page is its part's newest
    chunk's first page (never fetched again), and the rows are those of a one-chunk-per-table run."""
    state, srv = emulator
    start, end = window_of(state.summary())
    one_db, parts_db = _db(pg_server, "req_one_chunk"), _db(pg_server, "req_parts")
    extract.extract_windows(
        StripeReader(KEY, srv.url, rate_limit_per_s=None), one_db, list(TABLES), start, end, pieces=1
    )
    reader = _Recording(KEY, srv.url, rate_limit_per_s=1000)
    res = extract.extract_windows(reader, parts_db, list(TABLES), start, end)
    assert res.errors == {}
    parts = extract._chunks(start, end, extract.PROBES_PER_TABLE)
    assert len(parts) == extract.PROBES_PER_TABLE and parts[0][0] == start and parts[-1][1] == end
    lists = [(path, p) for path, p in reader.sent if "payout" not in p]  # payout memberships are listed by id
    probes = lists[: len(TABLES) * len(parts)]
    assert sorted((path, p["created"]["gte"], p["created"]["lt"]) for path, p in probes) == sorted(
        (TABLES[t].list_path, s, e) for t in TABLES for s, e in parts
    )
    assert not any("starting_after" in p for _, p in probes)
    # After the probes, a part's newest page is never asked for again: its chunk goes on after the probe's last object.
    part_ends = {e for _, e in parts}
    again = [
        (path, p) for path, p in lists[len(probes) :] if p["created"]["lt"] in part_ends and "starting_after" not in p
    ]
    assert again == []
    assert snapshot(parts_db) == snapshot(one_db)
    assert _extract_cursors(parts_db) == []
