"""Dagster's instance storage on the pipeline's Postgres, as `stripe-sage demo` and `stripe-sage run` use it."""

from __future__ import annotations

import dagster as dg
import psycopg
import pytest
from ui_helpers import create_database, write_dagster_home

from stripe_sage_pipeline.defs.resources import PostgresResource
from stripe_sage_pipeline.runtime.dagster_home import hold_storage_connections


def _sessions(admin: psycopg.Connection, database: str) -> int:
    """Sessions the server has counted for a database (a session is counted when it ends)."""
    admin.execute("select pg_stat_clear_snapshot()")
    return admin.execute("select sessions from pg_stat_database where datname = %s", (database,)).fetchone()[0]


@pytest.mark.parametrize("held", [None, "by the caller", "by the run's PostgresResource"])
def test_an_instance_running_jobs_in_process_keeps_its_connections(
    pg_server, fresh_db, tmp_path, monkeypatch, held
) -> None:
    """A job executed in process writes each event to the instance: by default on a new server session each;
    held (`hold_storage_connections`, as `stripe-sage demo` and `run` call it, or as every run that uses the
    pipeline's database does through `PostgresResource`) on the same few; the same run recorded either way."""
    database = create_database(pg_server, "dagster")
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", pg_server.url(database, driver="postgresql+psycopg2"))
    monkeypatch.setenv("DAGSTER_HOME", str(write_dagster_home(tmp_path / "home", {})))

    @dg.op(required_resource_keys={"postgres"} if held == "by the run's PostgresResource" else set())
    def twenty_log_lines(context) -> None:
        for i in range(60):
            context.log.info(f"line {i}")

    @dg.job(resource_defs={"postgres": PostgresResource(database_url=fresh_db)})
    def chatty():
        twenty_log_lines()

    with psycopg.connect(
        f"host=127.0.0.1 port={pg_server.port} user=postgres dbname=postgres", autocommit=True
    ) as admin:
        instance = dg.DagsterInstance.get()
        if held == "by the caller":
            hold_storage_connections(instance)
        before = _sessions(admin, database)
        result = chatty.execute_in_process(instance=instance)
        opened = _sessions(admin, database) - before
        logged = [e for e in instance.all_logs(result.run_id) if e.user_message.startswith("line ")]
        instance.dispose()

    assert result.success and len(logged) == 60
    if held is None:
        assert opened >= 60, opened  # one session per write, at least one per log line
    elif held == "by the caller":
        assert opened <= 5, opened  # the pooled one stays open; only a few overflow connections end
    else:
        # The run's first events (start, plan, step start) are written before its resources are set up.
        assert opened <= 25, opened
