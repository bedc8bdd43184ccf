"""Run the dbt project (dbt_project/) against the pipeline's Postgres, without Dagster.

dbt reads its connection from STRIPE_SAGE_DBT_* variables (dbt_project/profiles.yml); `dbt_env`
derives them from the one database URL so there is a single source of truth. Before dbt runs, the
mapping is validated and written to the `finance_config` tables, and the staging schema is created
if the extractor has not run yet, so a build on an empty database works.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg

from stripe_sage_pipeline.extract.staging import ensure_schema
from stripe_sage_pipeline.runtime.db import database_url, libpq_url
from stripe_sage_pipeline.settings import PROJECT_ROOT
from stripe_sage_pipeline.transform.mapping import CONFIG_SCHEMA, Mapping, load_mapping, write_config

DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"


@functools.cache
def dbt_project_config() -> dict[str, Any]:
    """dbt_project.yml, parsed once per process."""
    import yaml

    return yaml.safe_load((DBT_PROJECT_DIR / "dbt_project.yml").read_text())


def dbt_vars() -> dict[str, Any]:
    """The project variables of dbt_project.yml (look-backs, currency exponents, test scope)."""
    return dict(dbt_project_config()["vars"])


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
    """Set the dbt connection variables in this process (dbt subprocesses inherit them).

    dbt's debug log file is off unless DBT_LOG_LEVEL_FILE says otherwise: formatting every SQL statement
    and adapter event into `dbt.log` was ~7-10% of a build's CPU, and a Dagster run's dbt folder (where
    the file went) is deleted after a successful build; the build's own output (info level) is in the
    run's logs. `DBT_LOG_LEVEL_FILE=debug` brings the file back.
    """
    env = dbt_env(url)
    os.environ.update(env)
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    os.environ.setdefault("DBT_LOG_LEVEL_FILE", "none")
    return env


def prepare_database(url: str | None = None, mapping: Mapping | None = None) -> Mapping:
    """Create the staging schema if absent and write the (validated) mapping into finance_config."""
    m = mapping or load_mapping()
    with psycopg.connect(libpq_url(url or database_url())) as conn:
        ensure_schema(conn)
        write_config(conn, m)
        conn.commit()
    return m


BUILD_STATE_DDL = f"""
create table if not exists {CONFIG_SCHEMA}.build_state (fingerprint text not null, built_at timestamptz not null default now());
alter table {CONFIG_SCHEMA}.build_state add column if not exists code_fingerprint text;
alter table {CONFIG_SCHEMA}.build_state add column if not exists mapping jsonb;
"""

# What dbt's result depends on besides the data: the SQL, macros, tests and project settings.
_CODE_PATHS = ("dbt_project.yml", "models", "macros", "tests")


def code_fingerprint(project_dir: Path = DBT_PROJECT_DIR) -> str:
    """A hash of the dbt project's code (models, macros, tests, dbt_project.yml): changes on every edit."""
    import hashlib

    h = hashlib.sha256()
    for top in _CODE_PATHS:
        root = project_dir / top
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            h.update(f.relative_to(project_dir).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def staging_views() -> tuple[str, list[str]]:
    """The schema of the dbt staging views and their names (models/staging/*.sql)."""
    schema = dbt_project_config()["models"]["stripe_sage"]["staging"]["+schema"]
    return schema, sorted(p.stem for p in (DBT_PROJECT_DIR / "models" / "staging").glob("*.sql"))


@dataclass(frozen=True)
class BuildPlan:
    """How the next `dbt build` runs, decided from what changed since the last complete build.

    * `full_refresh`: asked for, or the mapping changed (incremental models would otherwise keep
      rows classified under the old accounts);
    * `code_steps`: the steps whose result depends only on the dbt code -- re-creating the staging
      views, and dbt's unit tests (fixed inputs, testing the SQL itself) -- run on the first build,
      when the dbt code changed since the last complete build, on a full refresh, and when a
      staging view is missing. An hourly run over unchanged code skips them: the views would be
      re-created identical, and the unit tests cannot give another result (dbt advises running
      them in development and CI, not on every production run). The data tests on the views'
      columns go with them; the staging tables' keys and NOT NULL columns and the Great
      Expectations staging suite hold those properties on every run.
    """

    full_refresh: bool
    code_steps: bool
    reasons: tuple[str, ...] = ()

    def flags(self) -> list[str]:
        """The `dbt build` flags of this plan."""
        if self.full_refresh:
            return ["--full-refresh"]
        if self.code_steps:
            return []
        return ["--exclude", "config.materialized:view", "--exclude-resource-type", "unit_test"]


def plan_build(url: str | None = None, full_refresh: bool = False) -> BuildPlan:
    """Decide full refresh and the code steps of the next build (see `BuildPlan`)."""
    schema, views = staging_views()
    with psycopg.connect(libpq_url(url or database_url())) as conn:
        conn.execute(BUILD_STATE_DDL)
        built = conn.execute(
            f"select fingerprint, code_fingerprint from {CONFIG_SCHEMA}.build_state order by built_at desc limit 1"
        ).fetchone()
        active = conn.execute(f"select fingerprint from {CONFIG_SCHEMA}.settings").fetchone()
        present = conn.execute(
            "select count(*) from information_schema.views where table_schema = %s and table_name = any(%s)",
            (schema, views),
        ).fetchone()[0]
        conn.commit()
    reasons = []
    if full_refresh:
        reasons.append("full refresh requested")
    elif built is not None and active is not None and built[0] != active[0]:
        full_refresh = True
        reasons.append("mapping changed since the last build: full refresh of incremental models")
    code_steps = full_refresh
    if built is None or built[1] != code_fingerprint():
        code_steps = True
        reasons.append("first build, or the dbt code changed since the last build: views re-created, unit tests run")
    elif present < len(views):
        code_steps = True
        reasons.append("a staging view is missing: views re-created, unit tests run")
    return BuildPlan(full_refresh=full_refresh, code_steps=code_steps, reasons=tuple(reasons))


def record_build(url: str | None = None, mapping: Mapping | None = None) -> None:
    """Remember the mapping and the dbt code a complete, successful build used (see `plan_build`).

    With `mapping` (the one the build wrote to finance_config), the whole mapping is kept too: the
    loads read the posting mode from it (`transform.marts.built_mapping`), not from mapping.yaml.
    """
    from psycopg.types.json import Jsonb

    doc = Jsonb(mapping.model_dump(mode="json")) if mapping is not None else None
    with psycopg.connect(libpq_url(url or database_url())) as conn:
        conn.execute(BUILD_STATE_DDL)
        conn.execute(f"delete from {CONFIG_SCHEMA}.build_state")
        conn.execute(
            f"insert into {CONFIG_SCHEMA}.build_state (fingerprint, code_fingerprint, mapping)"
            f" select fingerprint, %s, %s from {CONFIG_SCHEMA}.settings",
            (code_fingerprint(), doc),
        )
        conn.commit()


@dataclass
class DbtResult:
    """Outcome of one dbt invocation: success, per-node statuses, and the failures' messages."""

    success: bool
    statuses: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    full_refresh: bool = False
    plan: BuildPlan | None = None  # how a `build` was planned (None for other commands)

    def raise_on_failure(self) -> DbtResult:
        """Raise with every failing node's message when the run did not succeed."""
        if not self.success:
            detail = (
                "\n".join(f"  {k}: {v}" for k, v in self.failures.items())
                or "  (see dbt's output above; DBT_LOG_LEVEL_FILE=debug keeps its debug log in logs/dbt.log)"
            )
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


def dbt_target_dir() -> Path:
    """dbt's target folder: the one DBT_TARGET_PATH names (dbt's and dagster-dbt's own variable; relative
    to the project), else the project's `target`. Each Dagster build gets a folder in it and starts from
    the partial parse kept there; in-process builds have theirs in `builds/`."""
    return DBT_PROJECT_DIR / os.environ.get("DBT_TARGET_PATH", "target")


def build_target(url: str, vars: dict[str, Any] | None = None) -> Path:
    """The target folder of an in-process invocation: one per connection (database, server, user) and per
    set of `--vars`, in `builds/` of `dbt_target_dir()`, named `<database>-<hash of host, port, user>`.

    dbt keeps its partial parse only for the connection and the vars it was made for (its state check
    hashes host, port, user and database): builds against several databases (a development and a
    production one, or the tests' servers) each keep theirs instead of parsing the whole project again
    (~4 s of CPU) every time another one built.
    """
    import hashlib
    import json

    parts = urlsplit(libpq_url(url))
    server = f"{parts.hostname or ''}:{parts.port or 5432}:{unquote(parts.username or '')}"
    key = (unquote(parts.path.lstrip("/")) or "default") + "-" + hashlib.sha256(server.encode()).hexdigest()[:8]
    if vars:
        key += "-" + hashlib.sha256(json.dumps(vars, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return dbt_target_dir() / "builds" / key


MANIFESTS_KEPT = 8  # (target folder, dbt code) pairs: a process builds into a few databases at most
_manifests: dict[tuple[str, str], Any] = {}


def parsed_manifest(target: Path, vars: dict[str, Any] | None = None) -> Any:
    """dbt's parse of the project for in-process invocations into `target`, kept for the process.

    A `Manifest` handed to `dbtRunner(manifest=...)` spares each invocation loading and checking its
    partial parse (~10-15% of an in-process build's CPU); dbt documents this reuse for programmatic
    invocations. The target folder already stands for the connection (its database is in every node)
    and the `--vars`; the key adds the dbt code's fingerprint, so an edited model, macro, test or
    dbt_project.yml is parsed again. None when the parse fails: the invocation then parses, and reports,
    by itself.
    """
    from dbt.cli.main import dbtRunner

    key = (str(target), code_fingerprint())
    manifest = _manifests.get(key)
    if manifest is None:
        res = dbtRunner().invoke(dbt_args("parse", vars=vars, target_path=target) + ["--no-write-json"])
        if not res.success or res.result is None:
            return None
        manifest = _manifests[key] = res.result
        while len(_manifests) > MANIFESTS_KEPT:
            del _manifests[next(iter(_manifests))]
    return manifest


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
    """Prepare the database and run `dbt build` (models, unit tests and data tests) in-process (no JSON
    artifacts are written: the results are returned), on the process's parse of the project (`parsed_manifest`).

    A `build` follows `plan_build`: a mapping that changed since the last build forces a full
    refresh; the staging views and the unit tests are skipped while the dbt code is unchanged.
    """
    from dbt.cli.main import dbtRunner

    from stripe_sage_pipeline.transform.dbt_patches import quicken_dbt
    from stripe_sage_pipeline.transform.marts import marts_lock

    quicken_dbt()

    url = url or database_url()
    with marts_lock(url, exclusive=True):  # one build at a time; no load reads the marts meanwhile
        if prepare:
            mapping = prepare_database(url, mapping)
        apply_dbt_env(url)
        extra: list[str] = []
        plan = None
        if command == "build":
            plan = plan_build(url, full_refresh)
            full_refresh, extra = plan.full_refresh, [f for f in plan.flags() if f != "--full-refresh"]
        target = build_target(url, vars)
        # The results come back in `res`; manifest.json and run_results.json would be written for nobody
        # (8% of an in-process build's CPU). The partial parse is kept all the same.
        args = dbt_args(command, select, exclude, full_refresh, vars, target) + ["--no-write-json", *extra]
        res = dbtRunner(manifest=parsed_manifest(target, vars)).invoke(args)
        if res.success and command == "build" and not select and not exclude:
            record_build(url, mapping)
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
    out = DbtResult(
        success=bool(res.success), statuses=statuses, failures=failures, full_refresh=full_refresh, plan=plan
    )
    return out.raise_on_failure() if raise_on_failure else out
