"""The Dagster code location as `dagster dev` loads it: every stage present, every reference resolved."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dbt.version import __version__ as dbt_core_version

from stripe_sage_pipeline import definitions
from stripe_sage_pipeline.extract.tables import SCHEMA, TABLES
from stripe_sage_pipeline.transform.build import staging_views


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    loaded = definitions.defs()
    dg.Definitions.validate_loadable(loaded)  # what the webserver does before serving the location
    return loaded


def test_every_stage_contributes_its_assets(defs: dg.Definitions) -> None:
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    # extract → stage: one asset per staging table
    assert {f"{SCHEMA}/{t}" for t in TABLES} <= keys
    # transform: the mapping, the dbt staging views, the classification and the marts
    schema, views = staging_views()
    assert {f"{schema}/{v}" for v in views} <= keys
    assert {
        "finance/mapping",
        "finance_intermediate/int_balance_transactions__classified",
        "finance/fct_journal_lines",
        "finance/fct_invoice_lines",
        "finance/fct_payout_reconciliation",
        "finance/dim_customers",
    } <= keys
    # load: the Sage resources and the dead-letter re-drive
    assert {
        "sage/customers",
        "sage/invoices",
        "sage/cash_receipts",
        "sage/journal_entries",
        "sage/dead_letters",
    } <= keys
    # report: the month-end close pack
    assert "reporting/close_pack" in keys
    # check: dbt data tests, dbt unit tests and the Great Expectations suites, all on assets of the graph
    checks = graph.asset_check_keys
    assert {c.asset_key for c in checks} <= graph.get_all_asset_keys()
    names = {c.name for c in checks}
    assert {"journal_lines_balance", "classify_categories_fallback_and_suspense"} <= names
    assert any(n.startswith("unique_fct_journal_lines_journal_line_id") for n in names)
    # every asset says what it is (docstrings reach the UI as descriptions)
    undocumented = sorted(
        k.to_user_string()
        for k in graph.get_all_asset_keys()
        if graph.get(k).is_materializable and not graph.get(k).description
    )
    assert undocumented == []


def test_every_job_schedule_and_sensor_resolves(defs: dg.Definitions) -> None:
    jobs = {j.name for j in defs.resolve_all_job_defs()}
    assert {
        "extract_job",
        "stripe_history_job",
        "update_path_job",
        "transform_job",
        "load_job",
        "redrive_dead_letters_job",
        "customer_sync_job",
    } <= jobs
    for schedule in defs.schedules:
        assert schedule.job_name in jobs, schedule.name
    sensors = {s.name: s for s in defs.sensors}
    assert {
        "transform_after_extract_sensor",
        "load_after_transform_sensor",
        "stripe_webhook_inbox_sensor",
        "payout_paid_sensor",
        "stripe_events_poll_sensor",
        "run_failure_alert_sensor",
    } <= set(sensors)
    for sensor in sensors.values():
        for target in sensor.targets:
            assert target.job_name in jobs, (sensor.name, target.job_name)
    assert {"postgres", "stripe", "sage"} <= set(defs.resources)


def test_a_stage_that_fails_to_import_fails_the_code_location(monkeypatch: pytest.MonkeyPatch) -> None:
    # `None` in sys.modules makes the import raise, as a syntax error or a missing dependency would.
    monkeypatch.setitem(sys.modules, "stripe_sage_pipeline.defs.quality", None)
    with pytest.raises(ImportError, match="stripe_sage_pipeline.defs.quality"):
        definitions.defs()


def test_dbt_resource_runs_dbt_through_the_quick_version_entry_point(defs: dg.Definitions) -> None:
    """dagster-dbt asks `<dbt_executable> --version` before each build: the project's entry point answers
    with the installed dbt-core's version (the one line dagster-dbt reads) and passes other commands to dbt."""
    exe = defs.resources["dbt"].dbt_executable
    assert Path(exe).name == "stripe-sage-dbt"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    assert re.search(r"(\d+\.\d+\.\d+)", out).group(1) == dbt_core_version  # dagster-dbt's own pattern
    # Anything else is dbt's own command line, arguments and all (every Dagster dbt step runs a whole
    # `build` through it; here dbt answers for one of its commands without parsing the project).
    out = subprocess.run([exe, "parse", "--help"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("Usage: dbt parse [OPTIONS]") and "--target-path" in out


def test_dbt_resource_hands_dagster_dbt_no_in_process_adapter(
    defs: dg.Definitions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dagster-dbt would register a dbt adapter in the run's process before each invocation (for row counts
    and column metadata, which the project does not fetch); the project's resource gives it none. Caught at
    the boundary where dagster-dbt starts the dbt process: what it would start, and with which adapter."""
    from dagster_dbt import DbtCliResource
    from dagster_dbt.core.dbt_cli_invocation import DbtCliInvocation

    started: list[dict] = []

    def capture(**kwargs):
        started.append(kwargs)
        return kwargs

    monkeypatch.setattr(DbtCliInvocation, "run", staticmethod(capture))
    ours = defs.resources["dbt"]
    ours.cli(["build"])
    assert started[-1]["adapter"] is None
    assert started[-1]["args"][0] == ours.dbt_executable and "build" in started[-1]["args"]
    # dagster-dbt's own resource, on the same project, does open one: the override is what removes it.
    DbtCliResource(project_dir=ours.project_dir, dbt_executable=ours.dbt_executable).cli(["build"])
    assert started[-1]["adapter"] is not None
