"""Run the dbt project (dbt_project/) against the pipeline's Postgres, without Dagster.

dbt reads its connection from STRIPE_SAGE_DBT_* variables (dbt_project/profiles.yml); `dbt_env`
derives them from the one database URL so there is a single source of truth. Before dbt runs, the
mapping is validated and written to the `finance_config` tables, and the staging schema is created
if the extractor has not run yet, so a build on an empty database works.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg

from .db import database_url, libpq_url
from .mapping import CONFIG_SCHEMA, Mapping, load_mapping, write_config
from .settings import PROJECT_ROOT
from .stripe_extract.staging import ensure_schema

DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"
MARTS_SCHEMA = "finance"


def dbt_env(url: str | None = None) -> dict[str, str]:
    """The STRIPE_SAGE_DBT_* variables that profiles.yml reads, derived from a SQLAlchemy/libpq URL."""
    parts = urlsplit(libpq_url(url or database_url()))
    return {
        "STRIPE_SAGE_DBT_HOST": parts.hostname or "127.0.0.1",
        "STRIPE_SAGE_DBT_PORT": str(parts.port or 5432),
        "STRIPE_SAGE_DBT_USER": unquote(parts.username or "postgres"),
        "STRIPE_SAGE_DBT_PASSWORD": unquote(parts.password or ""),
        "STRIPE_SAGE_DBT_DBNAME": parts.path.lstrip("/") or "stripe_sage",
    }


def apply_dbt_env(url: str | None = None) -> dict[str, str]:
    """Set the dbt connection variables in this process (dbt subprocesses inherit them)."""
    env = dbt_env(url)
    os.environ.update(env)
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    return env


def prepare_database(url: str | None = None, mapping: Mapping | None = None) -> Mapping:
    """Create the staging schema if absent and write the (validated) mapping into finance_config."""
    m = mapping or load_mapping()
    with psycopg.connect(libpq_url(url or database_url())) as conn:
        ensure_schema(conn)
        write_config(conn, m)
        conn.commit()
    return m


def mapping_changed_since_last_build(url: str | None = None) -> bool:
    """True when the mapping in finance_config differs from the one the marts were last built with."""
    with psycopg.connect(libpq_url(url or database_url())) as conn:
        conn.execute(f"create table if not exists {CONFIG_SCHEMA}.build_state (fingerprint text not null, built_at timestamptz not null default now())")
        built = conn.execute(f"select fingerprint from {CONFIG_SCHEMA}.build_state order by built_at desc limit 1").fetchone()
        active = conn.execute(f"select fingerprint from {CONFIG_SCHEMA}.settings").fetchone()
        conn.commit()
    return built is not None and active is not None and built[0] != active[0]


def record_build(url: str | None = None) -> None:
    """Remember which mapping the marts were built with (after a successful full build)."""
    with psycopg.connect(libpq_url(url or database_url())) as conn:
        conn.execute(f"create table if not exists {CONFIG_SCHEMA}.build_state (fingerprint text not null, built_at timestamptz not null default now())")
        conn.execute(f"delete from {CONFIG_SCHEMA}.build_state")
        conn.execute(f"insert into {CONFIG_SCHEMA}.build_state (fingerprint) select fingerprint from {CONFIG_SCHEMA}.settings")
        conn.commit()


@dataclass
class DbtResult:
    """Outcome of one dbt invocation: success, per-node statuses, and the failures' messages."""

    success: bool
    statuses: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    full_refresh: bool = False

    def raise_on_failure(self) -> DbtResult:
        """Raise with every failing node's message when the run did not succeed."""
        if not self.success:
            detail = "\n".join(f"  {k}: {v}" for k, v in self.failures.items()) or "  (see dbt logs)"
            raise RuntimeError(f"dbt failed:\n{detail}")
        return self


def dbt_args(
    command: str = "build",
    select: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    full_refresh: bool = False,
    vars: dict[str, Any] | None = None,
    target_path: str | Path | None = None,
) -> list[str]:
    """Command-line arguments for a dbt invocation on this project (pure; unit-tested)."""
    import json

    args = [command, "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR)]
    if target_path is not None:
        args += ["--target-path", str(target_path)]
    for flag, value in (("--select", select), ("--exclude", exclude)):
        if value:
            args += [flag, *([value] if isinstance(value, str) else list(value))]
    if full_refresh and command in ("build", "run", "seed"):
        args.append("--full-refresh")
    if vars:
        args += ["--vars", json.dumps(vars)]
    return args


def dbt_build(
    select: str | Sequence[str] | None = None,
    full_refresh: bool = False,
    vars: dict[str, Any] | None = None,
    *,
    url: str | None = None,
    mapping: Mapping | None = None,
    exclude: str | Sequence[str] | None = None,
    command: str = "build",
    prepare: bool = True,
    raise_on_failure: bool = True,
) -> DbtResult:
    """Prepare the database and run `dbt build` (models, unit tests and data tests) in-process.

    A mapping that changed since the last build forces a full refresh: incremental models would
    otherwise keep rows classified under the old accounts.
    """
    from dbt.cli.main import dbtRunner

    url = url or database_url()
    if prepare:
        prepare_database(url, mapping)
    apply_dbt_env(url)
    if not full_refresh and mapping_changed_since_last_build(url):
        full_refresh = True
    res = dbtRunner().invoke(dbt_args(command, select, exclude, full_refresh, vars))
    statuses: dict[str, str] = {}
    failures: dict[str, str] = {}
    results = getattr(res.result, "results", None) or []
    for r in results:
        name = r.node.unique_id
        status = str(r.status)
        statuses[name] = status
        if status in ("error", "fail", "runtime error"):
            failures[name] = (r.message or "").strip()[:2000]
    if res.exception is not None:
        failures["<dbt>"] = str(res.exception)
    out = DbtResult(success=bool(res.success), statuses=statuses, failures=failures, full_refresh=full_refresh)
    if out.success and command == "build" and not select and not exclude:
        record_build(url)
    return out.raise_on_failure() if raise_on_failure else out
