"""`stripe-sage demo --target intacct`: the whole pipeline through Dagster into the Intacct emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from stripe_sage_pipeline.runtime.embedded_pg import EmbeddedPostgres, free_port


def test_demo_into_intacct_ties_the_golden_example(tmp_path, golden_path):
    """Same controller's summary as with Sage Pro: GL read back from Intacct = golden TB; bank = paid payouts."""
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STRIPE_", "SAGEPRO_", "DAGSTER_", "INTACCT_", "SAGE_TARGET"))
    }
    env.update({"STRIPE_SAGE_DATA_DIR": str(tmp_path / "data"), "STRIPE_SAGE_PG_PORT": str(port)})
    # dbt's own folder for this server: its partial parse (valid for one connection) never replaces the one
    # this test process keeps for the shared test server.
    env.update({"DBT_TARGET_PATH": str(tmp_path / "dbt-target"), "DBT_LOG_PATH": str(tmp_path / "dbt-target")})
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "stripe_sage_pipeline.cli",
                "demo",
                "--target",
                "intacct",
                "--load",
                str(golden_path),
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        EmbeddedPostgres(tmp_path / "data", port).stop()
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    expected = json.loads(Path(golden_path).read_text())["expected"]
    assert summary["target"] == "intacct"
    assert summary["dead_letters"]["count"] == 0
    assert summary["postings"]["journal-entries"] == {"posted": 2}
    tb = {k: Decimal(v) for k, v in expected["trial_balance_change_after_both_payouts"].items() if k != "note"}
    gl = {k: Decimal(v) for k, v in summary["gl_movement"]["usd"].items()}
    assert {k: v for k, v in gl.items() if v} == {k: v for k, v in tb.items() if v}
    assert (
        summary["tie_out"]["usd"]["sage_bank_movement"] == summary["tie_out"]["usd"]["stripe_paid_payouts"] == "322.79"
    )
    assert Decimal(summary["tie_out"]["usd"]["sage_trial_balance_total"]) == 0
