"""The README's main command, run as a new user runs it: a subprocess on its own embedded defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from stripe_sage_pipeline.runtime.embedded_pg import EmbeddedPostgres, free_port


def test_demo_on_the_golden_example_prints_reconciled_payouts_and_the_golden_gl_movement(tmp_path, golden_path):
    """`stripe-sage demo --load golden --json`: both payouts reconciled, Sage's GL equals the golden trial balance."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "SAGEPRO_", "DAGSTER_"))}
    env.update({"STRIPE_SAGE_DATA_DIR": str(tmp_path / "data"), "STRIPE_SAGE_PG_PORT": str(port)})
    # dbt's own folder for this server: its partial parse (valid for one connection) never replaces the one
    # this test process keeps for the shared test server.
    env.update({"DBT_TARGET_PATH": str(tmp_path / "dbt-target"), "DBT_LOG_PATH": str(tmp_path / "dbt-target")})
    # As an external database would be given: a URL with a password (the embedded server trusts, so it works).
    pg = EmbeddedPostgres(tmp_path / "data", port).start()
    password = "Demo-Db-Pa55word"
    env["STRIPE_SAGE_DATABASE_URL"] = pg.url().replace("postgres@", f"postgres:{password}@", 1)
    assert password in env["STRIPE_SAGE_DATABASE_URL"]
    try:
        out = subprocess.run(
            [sys.executable, "-m", "stripe_sage_pipeline.cli", "demo", "--load", str(golden_path), "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        pg.stop()
    assert out.returncode == 0, out.stderr[-3000:]
    assert password not in out.stdout and password not in out.stderr  # no secret in any output, --json included
    summary = json.loads(out.stdout)
    expected = json.loads(Path(golden_path).read_text())["expected"]
    stripe = json.loads(Path(golden_path).read_text())["stripe"]

    for table in ("customers", "charges", "refunds", "disputes", "payouts", "balance_transactions"):
        assert summary["rows"][table] == len(stripe[table]), table
    assert summary["payouts"] == {"reconciled": 2}
    assert summary["dead_letters"]["count"] == 0
    assert summary["postings"]["journal-entries"] == {"posted": 2}  # payout summary mode: one entry per payout
    tb = {k: v for k, v in expected["trial_balance_change_after_both_payouts"].items() if k != "note"}
    gl = summary["gl_movement"]["usd"]
    for account, amount in tb.items():
        assert Decimal(gl.get(account, "0.00")) == Decimal(amount), account
    assert sum(Decimal(v) for v in gl.values()) == 0
    assert (
        summary["tie_out"]["usd"]["sage_bank_movement"] == summary["tie_out"]["usd"]["stripe_paid_payouts"] == "322.79"
    )
    # The month's close pack, written by the reporting asset: both payouts reconciled and tied out.
    pack = Path(summary["close_pack"]).read_text()
    assert "/2026-07/" in summary["close_pack"] and "The month closes clean" in pack and "322.79" in pack
    # The partitions start at the data's first day, remembered for `stripe-sage ui` on the same home.
    remembered = (tmp_path / "data" / "dagster_home" / "partitions_start").read_text().strip()
    assert remembered == summary["window"]["from"][:10] + "-00:00"
