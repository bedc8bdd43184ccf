"""Faults: Sage 429/503/commit-then-504 (seeded) and Stripe 5xx during extraction end in exactly the state
of a fault-free run; so does a load killed with SIGKILL mid-partition and run again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from load_helpers import client_for, ledger, post_everything, sage_sandbox, sage_state, write_mapping

from stripe_sage_pipeline.extract import extract
from stripe_sage_pipeline.extract.client import StripeReader
from stripe_sage_pipeline.extract.staging import ensure_schema
from stripe_sage_pipeline.extract.tables import TABLES
from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_pipeline.transform import build as transform
from stripe_sage_pipeline.transform.mapping import load_mapping
from stripe_sage_sandboxes.stripe_emulator import EmulatorConfig, EmulatorServer, EmulatorState, generate
from tests.extract_helpers import window_of

TESTS = Path(__file__).resolve().parents[1]


def _reset_ledger(url: str) -> None:
    """Forget what was posted (a new Sage company), keeping the custno cross-reference."""
    with psycopg.connect(libpq_url(url)) as conn:
        conn.execute(
            "truncate sage_sync.posting_ledger, sage_sync.dead_letter_history,"
            " sage_sync.customer_sync_state, sage_sync.sync_cursors"
        )


@pytest.fixture(scope="module")
def faulty_data(pg_server, tmp_path_factory):
    """Four generated days extracted from the emulator while it answers 5% 5xx; marts built in detail mode."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(f"host=127.0.0.1 port={pg_server.port} user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'create database "{name}"')
    url = pg_server.url(name)
    tmp = tmp_path_factory.mktemp("faults")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STRIPE_SAGE_DATABASE_URL", url)
        mapping = write_mapping(tmp, mp, posting_mode="detail")
        state = EmulatorState(EmulatorConfig(seed=5, fault_5xx_rate=0.05))
        generate(state, seed=5, days=4, volume=0.4)
        srv = EmulatorServer(state, port=0).start()
        try:
            reader = StripeReader(
                "sk_test_emulator",
                srv.url,
                rate_limit_per_s=None,
                backoff_base_s=0.01,
                backoff_cap_s=0.1,
                max_retries=10,
            )
            conninfo = libpq_url(url)
            with psycopg.connect(conninfo) as conn:
                ensure_schema(conn)
            start, end = window_of(state.summary())
            for table in TABLES:
                extract.extract_window(reader, conninfo, table, start, end)
            assert reader.stats.server_errors > 0, "the emulator injected no 5xx"
        finally:
            srv.stop()
        transform.dbt_build(url=url, mapping=mapping)
        yield {
            "url": url,
            "mapping": mapping,
            "mapping_file": os.environ["STRIPE_SAGE_MAPPING"],
            "tmp": tmp,
            "stripe_5xx": reader.stats.server_errors,
        }


@pytest.fixture(scope="module")
def reference(faulty_data):
    """Sage's state after a fault-free load of the same marts."""
    url = faulty_data["url"]
    if _has_ledger(url):
        _reset_ledger(url)
    with sage_sandbox(faulty_data["tmp"] / "sage-ref") as srv:
        client, counter = client_for(srv)
        stats = post_everything(url, client, faulty_data["mapping"], counter)
        state = sage_state(client)
    assert stats["journal-entries"].created > 150
    assert sum(s.dead_lettered for s in stats.values()) == 0
    return state


def _has_ledger(url: str) -> bool:
    with psycopg.connect(libpq_url(url)) as conn:
        return conn.execute("select to_regclass('sage_sync.posting_ledger') is not null").fetchone()[0]


def _assert_same(state: dict, ref: dict) -> None:
    for resource, refs in state["refs"].items():
        assert refs == ref["refs"][resource], resource
        assert set(refs.values()) <= {1}, f"duplicate {resource}"
    assert state["postings"] == ref["postings"]


def test_fault_run_ends_in_the_fault_free_state(faulty_data, reference):
    url = faulty_data["url"]
    _reset_ledger(url)
    with sage_sandbox(
        faulty_data["tmp"] / "sage-faults",
        fault_429_rate=0.10,
        fault_5xx_rate=0.10,
        fault_commit_504_rate=0.05,
        seed=11,
    ) as srv:
        client, counter = client_for(srv)
        stats = post_everything(url, client, faulty_data["mapping"], counter)
        faults = [e.fault for e in srv.request_log if e.fault]
        assert faults.count("commit-504") >= 3 and faults.count("429") > 10 and faults.count("503") > 10
        assert sum(s.transient_failures for s in stats.values()) == 0
        replays = stats["journal-entries"].replayed + stats["customers"].replayed
        assert replays >= 1  # a commit-then-504 came back as the stored answer, not as a second entry
        _assert_same(sage_state(client), reference)
    assert {r["status"] for r in ledger(url)} == {"posted"}
    assert faulty_data["stripe_5xx"] > 0


KILLABLE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from load_helpers import post_everything
    from stripe_sage_pipeline.transform.mapping import load_mapping
    from stripe_sage_pipeline.load.post import make_client
    client, counter = make_client({base!r}, "pipeline", "pipeline-secret", rate_per_minute=900)
    post_everything({url!r}, client, load_mapping(), counter)
    print("finished", flush=True)
""")


def test_sigkill_mid_partition_then_rerun_ends_the_same(faulty_data, reference):
    url = faulty_data["url"]
    _reset_ledger(url)
    with sage_sandbox(faulty_data["tmp"] / "sage-kill") as srv:
        env = {**os.environ, "STRIPE_SAGE_DATABASE_URL": url, "STRIPE_SAGE_MAPPING": faulty_data["mapping_file"]}
        code = KILLABLE.format(tests=str(TESTS), base=srv.base_url, url=url)
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        at_kill = None
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if _has_ledger(url):
                    rows = ledger(
                        url,
                        "select status, count(*) as n from sage_sync.posting_ledger"
                        " where resource = 'journal-entries' group by status",
                    )
                    counts = {r["status"]: r["n"] for r in rows}
                    if counts.get("posted", 0) >= 40 and counts.get("computed", 0) > 0:
                        at_kill = counts
                        os.kill(proc.pid, signal.SIGKILL)
                        break
                time.sleep(0.05)
        finally:
            proc.wait(timeout=30)
        assert at_kill is not None, proc.stderr.read().decode()[-2000:]
        assert proc.returncode == -signal.SIGKILL
        client, counter = client_for(srv)
        partial = sage_state(client)
        assert 0 < sum(partial["refs"]["journal-entries"].values()) < sum(reference["refs"]["journal-entries"].values())
        # Run again (in-process, no rate limit): only what is missing is posted, nothing twice.
        stats = post_everything(url, client, load_mapping(), counter)
        _assert_same(sage_state(client), reference)
        assert stats["journal-entries"].unchanged >= at_kill["posted"]
    assert {r["status"] for r in ledger(url)} == {"posted"}
