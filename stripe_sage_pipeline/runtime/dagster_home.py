"""Prepares DAGSTER_HOME so that Dagster's instance storage lives in the pipeline's Postgres."""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from stripe_sage_pipeline.runtime.db import database_url, libpq_url
from stripe_sage_pipeline.settings import PROJECT_ROOT, Settings, env_is_set, load_settings

if TYPE_CHECKING:
    import dagster as dg


def render_instance_config(env: dict[str, str] | None = None) -> str:
    """The project's dagster.yaml with the queue and pool limits of the settings (of `env` when given)."""
    s = load_settings(env)
    config = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    if s.max_concurrent_runs is not None:
        config["concurrency"]["runs"]["max_concurrent_runs"] = s.max_concurrent_runs
    if s.pool_limit is not None:
        config["concurrency"]["pools"]["default_limit"] = s.pool_limit
    return yaml.safe_dump(config, sort_keys=False)


PARTITIONS_START_FILE = "partitions_start"


def remember_partitions_start(home: Path, start: str) -> None:
    """Keep the first partition (`YYYY-MM-DD-HH:00`) the demo or `run` used, for later `ui` sessions on this home."""
    (home / PARTITIONS_START_FILE).write_text(start + "\n")


def prepare_dagster_home(settings: Settings | None = None) -> Path:
    """Set DAGSTER_HOME (default: <data_dir>/dagster_home) with the project's dagster.yaml and its env vars.

    STRIPE_SAGE_START_DATE, when unset, comes from what the last demo or `run` on this home remembered.
    """
    s = settings or load_settings()
    home = s.dagster_home or (s.data_dir / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    remembered = home / PARTITIONS_START_FILE
    if not env_is_set("STRIPE_SAGE_START_DATE") and remembered.is_file():
        os.environ["STRIPE_SAGE_START_DATE"] = remembered.read_text().strip()
    target = home / "dagster.yaml"
    rendered = render_instance_config()
    if not target.exists() or target.read_text() != rendered:
        target.write_text(rendered)
    os.environ["DAGSTER_HOME"] = str(home)
    # dagster-postgres speaks psycopg2; SQLAlchemy 2.1 would pick psycopg 3 for a bare postgresql:// URL.
    if not os.environ.get("DAGSTER_POSTGRES_URL"):  # (computing it starts the embedded server)
        dagster_url = libpq_url(database_url(s, database="dagster")).replace(
            "postgresql://", "postgresql+psycopg2://", 1
        )
        os.environ["DAGSTER_POSTGRES_URL"] = dagster_url
    os.environ.setdefault("DAGSTER_TELEMETRY_ENABLED", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    return home


# Instances already holding their connections (a second call would replace the pool, leaving the first's open).
_HELD: weakref.WeakSet = weakref.WeakSet()


def hold_storage_connections(instance: dg.DagsterInstance) -> dg.DagsterInstance:
    """Let an instance that executes runs in this process keep its Postgres connections open between writes.

    dagster-postgres opens a new connection for every read and write unless told otherwise (only the
    webserver is, by default): a run writes each of its events on a connection of its own, and the
    server forks a backend for each (200 events: 1.2-1.3 s on a connection each, 0.3-0.5 s pooled, on
    the embedded server). Pooled as the webserver pools them (one connection kept, more while writes
    overlap, recycled hourly), for the life of the instance; no statement timeout (a step's own writes
    may legitimately wait on a lock). Used by `stripe-sage demo` and `stripe-sage run`, and by every run
    worker through `PostgresResource` (a run worker's instance lives as long as its process). Storage
    that is not Postgres ignores it. Idempotent; returns the instance.
    """
    if instance not in _HELD:
        instance.optimize_for_webserver(statement_timeout=0, pool_recycle=3600, max_overflow=20)
        _HELD.add(instance)
    return instance
