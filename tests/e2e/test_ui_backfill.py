"""Month-end backfill as finance launches it from the UI: GraphQL against a running webserver and daemon.

The mutation's variables are the ones the 1.13 UI sends from "Materialize" → a partition range →
"Launch backfill" on an asset job: the asset selection, the chosen partition keys, no re-execution,
and the job's partition set (`<job>_partition_set`) as selector. The daemon then launches one
load_job run per day; the test waits for the backfill's terminal status and checks Sage.
"""

from __future__ import annotations

import os
import time
from datetime import date, timedelta
from decimal import Decimal

import pytest
from load_helpers import client_for, expected_tb, sage_sandbox, sage_state
from ui_helpers import DagsterUI, dagster_ui

from stripe_sage_pipeline.load.post import gl_movement

JULY_2026 = [(date(2026, 7, 1) + timedelta(days=i)).isoformat() for i in range(31)]
LOAD_ASSET_KEYS = [["sage", "customers"], ["sage", "invoices"], ["sage", "cash_receipts"], ["sage", "journal_entries"]]
BACKFILL_TIMEOUT_S = 600
# The queue admits a run only while its pool has a free slot: with the project's default of one
# `sage_api` slot the 31 runs go strictly one after another. A slot per CPU (the documented
# STRIPE_SAGE_POOL_LIMIT knob) lets days run side by side, which also exercises concurrent posting.
PARALLEL = str(max(2, min(4, os.cpu_count() or 2)))
UI_ENV = {"STRIPE_SAGE_POOL_LIMIT": PARALLEL, "STRIPE_SAGE_MAX_CONCURRENT_RUNS": PARALLEL}

PARTITION_KEYS_QUERY = """
query PartitionKeys($repositorySelector: RepositorySelector!, $partitionSetName: String!) {
  partitionSetOrError(repositorySelector: $repositorySelector, partitionSetName: $partitionSetName) {
    __typename
    ... on PartitionSet {
      pipelineName
      partitionsOrError { __typename ... on Partitions { results { name } } ... on PythonError { message } }
    }
    ... on Error { message }
  }
}
"""

JOB_ASSETS_QUERY = """
query JobAssets($selector: PipelineSelector!) {
  pipelineOrError(params: $selector) {
    __typename
    ... on Pipeline { name isAssetJob partitionKeysOrError { __typename } }
    ... on Error { message }
  }
  assetNodes(pipeline: $selector) { assetKey { path } }
}
"""

LAUNCH_BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId launchedRunIds }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}
"""

BACKFILL_STATUS = """
query Backfill($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    __typename
    ... on PartitionBackfill {
      id
      status
      numPartitions
      partitionNames
      partitionSetName
      isAssetBackfill
      error { message stack }
      runs(limit: 100) { runId status tags { key value } }
    }
    ... on Error { message }
  }
}
"""

CONFIG_VALID = """
query ConfigValid($selector: PipelineSelector!, $runConfigData: RunConfigData) {
  isPipelineConfigValid(pipeline: $selector, mode: "default", runConfigData: $runConfigData) { __typename }
}
"""

RUN_ERRORS = """
query RunErrors($runId: ID!) {
  logsForRun(runId: $runId, limit: 1000) {
    __typename
    ... on EventConnection {
      events {
        __typename
        ... on MessageEvent { message level stepKey }
        ... on ExecutionStepFailureEvent { error { message stack } }
        ... on RunFailureEvent { error { message } }
      }
    }
  }
}
"""


def month_partitions_from_ui(ui: DagsterUI, job: str, month_prefix: str) -> list[str]:
    """The job's partition keys as the UI lists them, narrowed to one month (the range finance drags)."""
    data = ui.graphql(
        PARTITION_KEYS_QUERY,
        {"repositorySelector": ui.repository_selector(), "partitionSetName": f"{job}_partition_set"},
    )["partitionSetOrError"]
    assert data["__typename"] == "PartitionSet", data
    assert data["partitionsOrError"]["__typename"] == "Partitions", data
    return [p["name"] for p in data["partitionsOrError"]["results"] if p["name"].startswith(month_prefix)]


def job_asset_keys(ui: DagsterUI, job: str) -> list[list[str]]:
    """The asset keys of an asset job, as the launch dialog collects them."""
    selector = {**ui.repository_selector(), "pipelineName": job}
    data = ui.graphql(JOB_ASSETS_QUERY, {"selector": selector})
    assert data["pipelineOrError"]["__typename"] == "Pipeline" and data["pipelineOrError"]["isAssetJob"], data
    return [node["assetKey"]["path"] for node in data["assetNodes"]]


def in_process_config(ui: DagsterUI, job: str) -> dict | None:
    """Run config selecting the in-process executor, when the job still defaults to multiprocess.

    A load_job run is four short steps in one pool that admits one step at a time, so a process per
    step buys nothing and costs ~5 s of imports each (dagster-dbt); finance can set the same config in
    the launchpad before "Launch backfill". None when the job already runs in process.
    """
    config = {"execution": {"config": {"in_process": {}}}}
    selector = {**ui.repository_selector(), "pipelineName": job}
    result = ui.graphql(CONFIG_VALID, {"selector": selector, "runConfigData": config})["isPipelineConfigValid"]
    return config if result["__typename"] == "PipelineConfigValidationValid" else None


def launch_backfill_like_the_ui(
    ui: DagsterUI, job: str, asset_keys: list[list[str]], partitions: list[str], run_config: dict | None = None
) -> str:
    """`launchPartitionBackfill` with the parameters the UI's launch dialog sends for an asset job."""
    params = {
        "tags": [],
        "assetSelection": [{"path": key} for key in asset_keys],
        "partitionNames": partitions,
        "fromFailure": False,
        "selector": {"partitionSetName": f"{job}_partition_set", "repositorySelector": ui.repository_selector()},
    }
    if run_config is not None:
        params["runConfigData"] = run_config
    result = ui.graphql(LAUNCH_BACKFILL, {"backfillParams": params})["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    return result["backfillId"]


def failed_run_report(ui: DagsterUI, runs: list[dict]) -> str:
    """Error messages of the failed runs' steps, for the assertion message."""
    out = []
    for run in runs:
        if run["status"] == "SUCCESS":
            continue
        partition = next((t["value"] for t in run["tags"] if t["key"] == "dagster/partition"), "?")
        out.append(f"== run {run['runId']} partition {partition}: {run['status']}")
        logs = ui.graphql(RUN_ERRORS, {"runId": run["runId"]})["logsForRun"]
        for event in logs.get("events", []):
            if event.get("error"):
                out.append(f"  {event['__typename']}: {event['error']['message']}")
            elif event.get("level") == "ERROR":
                out.append(f"  {event.get('stepKey')}: {event['message']}")
    return "\n".join(out)


def wait_for_backfill(ui: DagsterUI, backfill_id: str, timeout_s: float = BACKFILL_TIMEOUT_S) -> dict:
    """Poll `partitionBackfillOrError` until a terminal status; fail with the failed runs' errors."""
    deadline = time.monotonic() + timeout_s
    while True:
        ui.assert_alive()
        backfill = ui.graphql(BACKFILL_STATUS, {"backfillId": backfill_id})["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        status = backfill["status"]
        if status in ("COMPLETED", "COMPLETED_SUCCESS"):
            return backfill
        if status in ("COMPLETED_FAILED", "FAILED", "CANCELED"):
            raise AssertionError(
                f"backfill {backfill_id} ended {status}: {backfill['error']}\n{failed_run_report(ui, backfill['runs'])}"
            )
        if time.monotonic() > deadline:
            counts: dict[str, int] = {}
            for run in backfill["runs"]:
                counts[run["status"]] = counts.get(run["status"], 0) + 1
            raise AssertionError(
                f"backfill {backfill_id} still {status} after {timeout_s:.0f}s, runs {counts}\n"
                f"{failed_run_report(ui, [r for r in backfill['runs'] if r['status'] == 'FAILURE'])}"
            )
        time.sleep(1)


@pytest.mark.timeout(1500)
def test_month_backfill_from_the_ui_posts_the_golden_trial_balance_once(pg_server, fresh_db, golden_marts, tmp_path):
    """July 2026 backfilled through the UI's GraphQL API: one run per day, and Sage's GL is the golden trial balance."""
    started = time.monotonic()
    golden = golden_marts.clone_into(fresh_db)
    want = expected_tb(golden)
    with (
        sage_sandbox(tmp_path / "sage") as srv,
        dagster_ui(pg_server, tmp_path / "dagster", fresh_db, srv.base_url, extra_env=UI_ENV) as ui,
    ):
        ready = time.monotonic()
        partitions = month_partitions_from_ui(ui, "load_job", "2026-07-")
        assert partitions == JULY_2026
        asset_keys = job_asset_keys(ui, "load_job")
        assert sorted(asset_keys) == sorted(LOAD_ASSET_KEYS)

        run_config = in_process_config(ui, "load_job")
        first_id = launch_backfill_like_the_ui(ui, "load_job", asset_keys, partitions, run_config)
        first = wait_for_backfill(ui, first_id)
        first_done = time.monotonic()
        assert first["partitionSetName"] == "load_job_partition_set" and not first["isAssetBackfill"]
        assert sorted(first["partitionNames"]) == JULY_2026
        run_partitions = sorted(
            next(t["value"] for t in r["tags"] if t["key"] == "dagster/partition") for r in first["runs"]
        )
        assert run_partitions == JULY_2026, "one run per day of the month"
        assert {r["status"] for r in first["runs"]} == {"SUCCESS"}

        client, _ = client_for(srv)
        reported = {code: Decimal(net) for code, net in gl_movement(client).get("usd", {}).items()}
        for code, amount in want.items():
            assert reported.get(code, Decimal("0.00")) == amount, code
        assert {k: v for k, v in reported.items() if v} == {k: v for k, v in want.items() if v}
        # Each July entry posted exactly once: one journal entry per golden payout, none twice.
        refs = sage_state(client)["refs"]["journal-entries"]
        assert refs == {"po_GOLD0000": 1, "po_GOLD0001": 1}

        # Backfilling the same month twice changes nothing: shown in-process by tests/test_load_golden.py,
        # not repeated here, where every launch costs a month of run start-ups.
        print(
            f"\nUI ready {ready - started:.1f}s, backfill {first_done - ready:.1f}s,"
            f" total {time.monotonic() - started:.1f}s"
        )
