"""Month-end backfill as finance launches it from the UI: GraphQL against a running webserver and daemon.

The mutation's variables are the ones the 1.13 UI sends from "Materialize" → a partition range →
"Launch backfill" on an asset job: the asset selection, the chosen partition keys, no re-execution,
and the job's partition set (`<job>_partition_set`) as selector. The load assets' single-run backfill
policy makes the daemon launch ONE load_job run for the month (a partition range), which posts the
days in date order; the test waits for the backfill's terminal status and checks Sage.
"""

from __future__ import annotations

import time
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from load_helpers import client_for, expected_tb, sage_sandbox, sage_state
from ui_helpers import DagsterUI, dagster_ui

from stripe_sage_pipeline.load.post import gl_movement
from stripe_sage_pipeline.runtime.run_launcher import PID_TAG, WORKER_TAG

JULY_2026 = [(date(2026, 7, 1) + timedelta(days=i)).isoformat() for i in range(31)]
LOAD_ASSET_KEYS = [["sage", "customers"], ["sage", "invoices"], ["sage", "cash_receipts"], ["sage", "journal_entries"]]
BACKFILL_TIMEOUT_S = 600
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
# The backfill needs the daemon's backfill and run-queue loops, not the sensors: each sensor tick is a call to
# the code server and a dozen storage connections (dagster-postgres opens one per query in the daemon), about
# two thirds of an idle daemon's connections. They tick every 10 minutes here, which this test never reaches.
QUIET_SENSORS = {"STRIPE_SAGE_SENSOR_INTERVAL_S": "600", "STRIPE_SAGE_EVENT_SENSOR_INTERVAL_S": "600"}

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

RUN_MATERIALIZATIONS = """
query RunMaterializations($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      assetMaterializations {
        assetKey { path }
        partition
        metadataEntries { label ... on IntMetadataEntry { intValue } }
      }
    }
  }
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
        tags = {t["key"]: t["value"] for t in run["tags"]}
        partition = tags.get("dagster/partition") or f"{tags.get(RANGE_START, '?')}...{tags.get(RANGE_END, '?')}"
        out.append(f"== run {run['runId']} partition {partition}: {run['status']}")
        logs = ui.graphql(RUN_ERRORS, {"runId": run["runId"]})["logsForRun"]
        for event in logs.get("events", []):
            if event.get("error"):
                out.append(f"  {event['__typename']}: {event['error']['message']}")
            elif event.get("level") == "ERROR":
                out.append(f"  {event.get('stepKey')}: {event['message']}")
    return "\n".join(out)


RUN_DONE = {"SUCCESS", "FAILURE", "CANCELED"}


def wait_for_backfill(
    ui: DagsterUI, backfill_id: str, timeout_s: float = BACKFILL_TIMEOUT_S, runs_only: bool = False
) -> dict:
    """Poll `partitionBackfillOrError` until a terminal status; fail with the failed runs' errors.

    `runs_only`: return as soon as the backfill's runs cover its partitions and have all ended. The
    backfill daemon looks every 30 s (a constant in Dagster 1.13), so its status turns terminal up to a
    tick after the last run ends; waiting for that once for several backfills saves a tick each.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        ui.assert_alive()
        backfill = ui.graphql(BACKFILL_STATUS, {"backfillId": backfill_id})["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        status = backfill["status"]
        if status in ("COMPLETED", "COMPLETED_SUCCESS"):
            return backfill
        if status in ("COMPLETED_FAILED", "FAILED", "CANCELED") or any(
            r["status"] in ("FAILURE", "CANCELED") for r in backfill["runs"]
        ):
            raise AssertionError(
                f"backfill {backfill_id} ended {status}: {backfill['error']}\n{failed_run_report(ui, backfill['runs'])}"
            )
        if (
            runs_only
            and covered_days(backfill) >= set(backfill["partitionNames"])
            and all(r["status"] in RUN_DONE for r in backfill["runs"])
        ):
            return backfill
        if time.monotonic() > deadline:
            counts: dict[str, int] = {}
            for run in backfill["runs"]:
                counts[run["status"]] = counts.get(run["status"], 0) + 1
            raise AssertionError(
                f"backfill {backfill_id} still {status} after {timeout_s:.0f}s, runs {counts}\n"
                f"{failed_run_report(ui, [r for r in backfill['runs'] if r['status'] == 'FAILURE'])}"
            )
        time.sleep(1)


def run_ranges(backfill: dict) -> list[tuple[str, str]]:
    """The partition range of each run of a backfill (a one-partition run counts as a range of one day)."""
    out = []
    for run in backfill["runs"]:
        tags = {t["key"]: t["value"] for t in run["tags"]}
        if "dagster/partition" in tags:
            out.append((tags["dagster/partition"], tags["dagster/partition"]))
        else:
            out.append((tags[RANGE_START], tags[RANGE_END]))
    return sorted(out)


def covered_days(backfill: dict) -> set[str]:
    """The days the backfill's runs cover, whether each run posts one day or a range."""
    days = set()
    for start, end in run_ranges(backfill):
        day = date.fromisoformat(start)
        while day <= date.fromisoformat(end):
            days.add(day.isoformat())
            day += timedelta(days=1)
    return days


def created_per_partition(ui: DagsterUI, run_id: str, asset: list[str]) -> dict[str, int]:
    """Partition → the `created` figure of that partition's materialization in a run."""
    data = ui.graphql(RUN_MATERIALIZATIONS, {"runId": run_id})["runOrError"]
    assert data["__typename"] == "Run", data
    out: dict[str, int] = {}
    for mat in data["assetMaterializations"]:
        if mat["assetKey"]["path"] == asset:
            assert mat["partition"] not in out, f"{mat['partition']} materialized twice"
            out[mat["partition"]] = next(e["intValue"] for e in mat["metadataEntries"] if e["label"] == "created")
    return out


def daemon_code_servers(daemon_pid: int) -> list[str]:
    """Command lines of the code servers among the daemon's children."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == daemon_pid and ("api grpc" in cmdline or "code-server" in cmdline):
            found.append(cmdline)
    return found


@pytest.mark.timeout(900)
def test_month_backfill_from_the_ui_posts_the_golden_trial_balance_once(pg_server, fresh_db, golden_marts, tmp_path):
    """July 2026 backfilled through the UI's GraphQL API: one run posts the month, Sage's GL is the golden trial
    balance, each day's materialization carries its own figures, and backfilling the month again posts nothing."""
    started = time.monotonic()
    golden = golden_marts.clone_into(fresh_db)
    want = expected_tb(golden)
    with (
        sage_sandbox(tmp_path / "sage") as srv,
        dagster_ui(pg_server, tmp_path / "dagster", fresh_db, srv.base_url, extra_env=QUIET_SENSORS) as ui,
    ):
        ready = time.monotonic()
        partitions = month_partitions_from_ui(ui, "load_job", "2026-07-")
        assert partitions == JULY_2026
        asset_keys = job_asset_keys(ui, "load_job")
        assert sorted(asset_keys) == sorted(LOAD_ASSET_KEYS)

        run_config = in_process_config(ui, "load_job")
        first_id = launch_backfill_like_the_ui(ui, "load_job", asset_keys, partitions, run_config)
        first = wait_for_backfill(ui, first_id, runs_only=True)
        first_done = time.monotonic()
        assert first["partitionSetName"] == "load_job_partition_set" and not first["isAssetBackfill"]
        assert sorted(first["partitionNames"]) == JULY_2026
        assert run_ranges(first) == [(JULY_2026[0], JULY_2026[-1])], "one run posts the month"
        assert {r["status"] for r in first["runs"]} == {"SUCCESS"}
        # The daemon launched it as a fork of the warm run worker (dagster.yaml's WarmRunLauncher).
        first_tags = {t["key"]: t["value"] for t in first["runs"][0]["tags"]}
        assert first_tags.get(PID_TAG, "").isdigit() and first_tags.get(WORKER_TAG, "").isdigit(), first_tags

        client, _ = client_for(srv)
        reported = {code: Decimal(net) for code, net in gl_movement(client).get("usd", {}).items()}
        for code, amount in want.items():
            assert reported.get(code, Decimal("0.00")) == amount, code
        assert {k: v for k, v in reported.items() if v} == {k: v for k, v in want.items() if v}
        # Each July entry posted exactly once: one journal entry per golden payout, none twice.
        state = sage_state(client)
        assert state["refs"]["journal-entries"] == {"po_GOLD0000": 1, "po_GOLD0001": 1}
        # Every day of the range has its own materialization with its own figures: the entries were
        # created on the payouts' days only, and nowhere else.
        created = created_per_partition(ui, first["runs"][0]["runId"], ["sage", "journal_entries"])
        assert sorted(created) == JULY_2026
        assert sum(created.values()) == 2
        payout_days = {e["posting_date"] for e in client.list_all("/journal-entries")}
        assert {day for day, n in created.items() if n} == payout_days

        # The same month again: one more run, which finds everything posted and writes nothing to Sage.
        writes_before = sum(1 for e in srv.request_log if e.method == "POST")
        second_id = launch_backfill_like_the_ui(ui, "load_job", asset_keys, partitions, run_config)
        second = wait_for_backfill(ui, second_id, runs_only=True)
        assert run_ranges(second) == [(JULY_2026[0], JULY_2026[-1])]
        assert {r["status"] for r in second["runs"]} == {"SUCCESS"}
        second_tags = {t["key"]: t["value"] for t in second["runs"][0]["tags"]}
        assert second_tags[WORKER_TAG] == first_tags[WORKER_TAG], "the second run reused the warm worker"
        assert second_tags[PID_TAG] != first_tags[PID_TAG]
        assert sum(1 for e in srv.request_log if e.method == "POST") == writes_before
        assert sage_state(client) == state
        assert sum(created_per_partition(ui, second["runs"][0]["runId"], ["sage", "journal_entries"]).values()) == 0
        # Both backfills end as finance sees them in the UI: completed, with their one run each.
        for backfill_id in (first_id, second_id):
            assert len(wait_for_backfill(ui, backfill_id)["runs"]) == 1
        # The daemon read the location from the one code server it shares with the webserver: it started
        # none of its own (on a python_module workspace it starts one at once, and a fresh one every 60 s).
        assert daemon_code_servers(ui.procs["daemon"].pid) == []
        print(
            f"\nUI ready {ready - started:.1f}s, first backfill's run done {first_done - ready:.1f}s,"
            f" total {time.monotonic() - started:.1f}s"
        )
