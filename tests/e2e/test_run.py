"""`stripe-sage run --from … --to …` as an operator runs it: a subprocess against a Stripe and a Sage Pro server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime

from load_helpers import client_for, expected_tb, movement, sage_sandbox
from ui_helpers import create_database

from stripe_sage_sandboxes.stripe_emulator import EmulatorConfig, EmulatorServer, EmulatorState, load_golden
from stripe_sage_sandboxes.stripe_emulator.objects import API_VERSION as EMULATOR_VERSION


def test_run_extracts_transforms_and_posts_a_window_once(pg_server, fresh_db, golden_path, tmp_path):
    """The worked example's July: staged, reconciled and posted; Sage's GL is the golden trial balance."""
    g = json.loads(golden_path.read_text())
    state = EmulatorState(EmulatorConfig(seed=7))
    load_golden(state, str(golden_path))
    emulator = EmulatorServer(state, port=0).start()
    dagster_db = create_database(pg_server, "dagster_run")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "SAGEPRO_", "DAGSTER_"))}
    with sage_sandbox(tmp_path / "sage") as sage:
        env.update(
            {
                "STRIPE_SAGE_DATABASE_URL": fresh_db,
                "STRIPE_SAGE_DATA_DIR": str(tmp_path / "data"),
                "DAGSTER_POSTGRES_URL": f"postgresql+psycopg2://postgres@127.0.0.1:{pg_server.port}/{dagster_db}",
                "STRIPE_API_BASE": emulator.url,
                "STRIPE_API_KEY": "sk_test_emulator",
                "STRIPE_API_VERSION": EMULATOR_VERSION,
                "STRIPE_RATE_LIMIT_PER_S": "500",
                "SAGEPRO_BASE_URL": sage.base_url,
                "SAGEPRO_RATE_PER_MINUTE": "6000",
            }
        )
        cmd = [
            sys.executable,
            "-m",
            "stripe_sage_pipeline.cli",
            "run",
            "--from",
            "2026-07-01",
            "--to",
            "2026-07-15",
            "--json",
        ]
        try:
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            assert out.returncode == 0, out.stderr[-3000:]
            client, _ = client_for(sage)
            gl = movement(client, list(expected_tb(g)))
            client.close()
        finally:
            emulator.stop()

    summary = json.loads(out.stdout)
    assert summary["window"] == {"from": "2026-07-01", "to": "2026-07-15"}
    lo = datetime(2026, 7, 1, tzinfo=UTC).timestamp()
    hi = datetime(2026, 7, 16, tzinfo=UTC).timestamp()
    for table in ("charges", "refunds", "disputes", "payouts", "balance_transactions"):
        assert summary["extracted"][table] == sum(lo <= o["created"] < hi for o in g["stripe"][table]), table
    # Payout summary mode: one entry per payout, on its arrival day (the 4th and the 16th, after --to).
    assert summary["postings"]["journal-entries"] == {"posted": 2}
    assert summary["dead_letters_in_window"] == 0
    assert {date.fromisoformat(d) for d in summary["days_loaded"]} >= {date(2026, 7, 4), date(2026, 7, 16)}
    jobs = [r["job"] for r in summary["runs"]]
    assert jobs[:3] == ["stripe_history_job", "update_path_job", "transform_job"]
    assert jobs.count("load_job") == len(summary["days_loaded"])
    assert gl == expected_tb(g)
