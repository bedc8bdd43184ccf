"""Shared fixtures: one real embedded PostgreSQL server, fresh databases on it, the golden marts.

`make test` runs the suite in several processes (pytest-xdist); the controller starts one server they all
use (`pg_server`); a plain `pytest` starts a server of its own. Every test that touches the database gets
a fresh database (`fresh_db`), so tests never see each other's rows; `STRIPE_SAGE_DATABASE_URL` points
the code under test at it.

The worked example's staging and marts are built by dbt once per mapping on the server, in a template
database, and copied into a test's database with `CREATE DATABASE … TEMPLATE` (`golden_marts`): a copy
takes a fraction of a second where a dbt build takes many.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from filelock import FileLock

from stripe_sage_pipeline.runtime.embedded_pg import EmbeddedPostgres, free_port
from stripe_sage_pipeline.runtime.gc_policy import relax_for_process

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DAGSTER_TELEMETRY_ENABLED", "false")
# The hourly partitions start where the tests' data starts (the worked example is July 2026), as a
# user sets STRIPE_SAGE_START_DATE to the account's first day: Dagster lists every hourly partition of
# the staging assets in each run that reads them (16.8k from the default 2025-01-01, 4.4k from here).
# The subprocess tests (demo, run) clear STRIPE_* and use their own defaults.
os.environ.setdefault("STRIPE_SAGE_START_DATE", "2026-06-01-00:00")
# dbt with one thread: the worked example's models take milliseconds in Postgres, so dbt's threads only
# contend for their process's interpreter (four full-refresh builds: 12.4-13.4 CPU-s with 1 thread,
# 15.5-16.6 with the default 4), and the test processes already keep both cores busy (alone, one
# process is slower with 1 thread: nothing runs side by side). The Dagster runs the tests start
# inherit it; the demo and `run` subprocess tests clear STRIPE_* and keep the default.
os.environ.setdefault("STRIPE_SAGE_DBT_THREADS", "1")

GOLDEN = Path(__file__).resolve().parents[1] / "examples" / "payout_worked_example.json"


_TIERS = ("unit", "integration", "e2e")

# `make test` spreads the tests over processes (pytest-xdist). Each process builds dbt in-process into a
# target folder of its own (manifest, run results, partial parse), so two builds never write one file.
# (A plain `pytest` run gets one too, `pytest-main`: test builds never mix with a user's `target/builds`.)
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
_DBT_TARGETS = Path(__file__).resolve().parents[1] / "dbt_project" / "target"
_dbt_own = _DBT_TARGETS / f"pytest-{_WORKER or 'main'}"
os.environ["DBT_TARGET_PATH"] = str(_dbt_own)
os.environ["DBT_LOG_PATH"] = str(_dbt_own / "logs")


# The server the `make test` controller starts for all its processes ("<port>|<data folder>"): one
# server, so the golden templates below are built once for the run instead of once per process.
_SHARED_PG = "STRIPE_SAGE_TEST_PG"
_OWN_PG = pytest.StashKey[EmbeddedPostgres]()


def pytest_collection_finish(session):
    """Every test module is imported (dbt, Dagster, GX with them): freeze that out of the collector's walks
    and collect young objects less often, as the warm run worker and the dbt server do (runtime.gc_policy)."""
    relax_for_process()


def pytest_configure(config):
    """Before any test process starts: parse the dbt manifest the Dagster definitions read, once (so
    processes that import the definitions together never parse it at the same time), and, when the
    tests are spread over processes, start the one PostgreSQL server they share."""
    if _WORKER or config.option.collectonly or config.getoption("markexpr", "") == "unit":
        return
    from stripe_sage_pipeline.transform.build import DBT_PROJECT_DIR
    from stripe_sage_pipeline.transform.manifest import ensure_fresh_manifest

    ensure_fresh_manifest(DBT_PROJECT_DIR, DBT_PROJECT_DIR / "target" / "manifest.json")
    # Earlier runs' dbt build folders: one per connection, and each run's server has a port of its own, so
    # a new run never reuses them. An hour's grace for another run on the machine.
    for stale in _DBT_TARGETS.glob("pytest-*/builds/*"):
        if stale.stat().st_mtime < time.time() - 3600:
            shutil.rmtree(stale, ignore_errors=True)
    if getattr(config.option, "numprocesses", None) and _SHARED_PG not in os.environ:
        pg = _start_server()
        config.stash[_OWN_PG] = pg
        os.environ[_SHARED_PG] = f"{pg.port}|{pg.data_dir}"  # the processes inherit it


def pytest_unconfigure(config):
    """Stop the shared server (the controller's, after every process ended)."""
    pg = config.stash.get(_OWN_PG, None)
    if pg is not None:
        os.environ.pop(_SHARED_PG, None)
        _stop_server(pg)


def _start_server() -> EmbeddedPostgres:
    # Its data lives outside pytest's temporary root: the server runs as an unprivileged user, and every
    # pytest session that starts (another run on a shared machine) resets that root to mode 0700, which
    # would cut a running server off from its own files.
    data_dir = Path(tempfile.mkdtemp(prefix="stripe-sage-test-pg-"))
    (data_dir / "locks").mkdir()
    return EmbeddedPostgres(data_dir, free_port()).start()


def _stop_server(pg: EmbeddedPostgres) -> None:
    pg.stop()
    shutil.rmtree(pg.data_dir, ignore_errors=True)


# The longest tests (a minute or more each, most of it waiting on a daemon or a browser) start first, so
# that `make test`'s processes do not end the run on one long test while the others sit idle.
_FIRST = ("test_ui_backfill.py", "test_automation.py", "test_demo.py", "test_demo_intacct.py", "test_run.py")


def pytest_collection_modifyitems(config, items):
    """Mark every test with its tier, from its folder (tests/unit, tests/integration, tests/e2e); order
    the end-to-end tier first, its longest files ahead, then integration, then unit."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in _TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))

    def rank(item) -> tuple[int, int]:
        parts = Path(str(item.fspath)).parts
        tier = next((i for i, t in enumerate(reversed(_TIERS)) if t in parts), len(_TIERS))
        name = parts[-1]
        return tier, _FIRST.index(name) if name in _FIRST else len(_FIRST)

    items.sort(key=rank)  # stable: pytest's order within a file (and its fixtures' reuse) is kept


@pytest.fixture(scope="session")
def pg_server() -> EmbeddedPostgres:
    """A real PostgreSQL server (from the pip wheel) on 127.0.0.1 for the whole session: the one the
    `make test` controller shares with its processes, else one of this session's own."""
    shared = os.environ.get(_SHARED_PG)
    if shared:
        port, data_dir = shared.split("|", 1)
        yield EmbeddedPostgres(Path(data_dir), int(port))
        return
    pg = _start_server()
    yield pg
    _stop_server(pg)


def admin_connection(pg_server: EmbeddedPostgres) -> psycopg.Connection:
    """An autocommit connection to the server's `postgres` database (CREATE/DROP DATABASE)."""
    return psycopg.connect(f"host=127.0.0.1 port={pg_server.port} user=postgres dbname=postgres", autocommit=True)


# One name for every test's fresh database in this process. dbt keeps its parse of the project only for
# the connection it was made for (host, port, user, database): a new name per test would make every dbt
# build parse the whole project again.
FRESH_DB = "t_" + (_WORKER or "main")


@pytest.fixture
def fresh_db(pg_server, monkeypatch) -> str:
    """A new empty database (the previous test's is dropped first); returns its SQLAlchemy URL and points
    STRIPE_SAGE_DATABASE_URL at it."""
    suites = sys.modules.get("stripe_sage_pipeline.quality.suites")
    if suites is not None:
        suites.forget_data_sources()  # their pooled connections belong to the dropped database
    with admin_connection(pg_server) as conn:
        conn.execute(f'drop database if exists "{FRESH_DB}" with (force)')
        conn.execute(f'create database "{FRESH_DB}"')
    url = pg_server.url(FRESH_DB)
    monkeypatch.setenv("STRIPE_SAGE_DATABASE_URL", url)
    return url


@pytest.fixture(scope="session")
def golden_path() -> Path:
    """The worked example vendored in examples/."""
    assert GOLDEN.exists(), f"missing {GOLDEN}"
    return GOLDEN


class GoldenMarts:
    """The worked example in staging with its finance marts built, once per mapping per server.

    `clone_into(url)` replaces the test's (new, empty) database by a copy of the template built under
    the active mapping (STRIPE_SAGE_MAPPING, or the one given): exactly the database that loading
    the golden objects and running `dbt build` there would give, at the cost of a file copy.
    """

    def __init__(self, pg_server: EmbeddedPostgres, golden_path: Path):
        self.pg_server = pg_server
        self.golden = json.loads(golden_path.read_text())
        self.builds = 0  # dbt builds of a template: one per distinct mapping in the session
        self._templates: dict[str, str] = {}

    def template(self, mapping: Any) -> str:
        """The name of the template database for `mapping`, built (load + dbt build) on first use."""
        content = json.dumps(mapping.model_dump(mode="json"), sort_keys=True)
        name = "golden_" + hashlib.sha256(content.encode()).hexdigest()[:12]
        if name in self._templates:
            return name
        # One build per mapping on the server, whichever process asks first; the others wait for it.
        with FileLock(self.pg_server.data_dir / "locks" / f"{name}.lock"):
            with admin_connection(self.pg_server) as conn:
                built = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
            if not built:
                self._build(name, mapping)
        self._templates[name] = self.pg_server.url(name)
        return name

    def _build(self, name: str, mapping: Any) -> None:
        """Load the worked example and run dbt under the fresh database's name (dbt's parse of the
        project stays valid for this process), then rename the database to the template's name."""
        from transform_helpers import load_stripe_objects

        from stripe_sage_pipeline.transform import build as transform

        with admin_connection(self.pg_server) as conn:
            conn.execute(f'drop database if exists "{FRESH_DB}" with (force)')
            conn.execute(f'create database "{FRESH_DB}"')
        url = self.pg_server.url(FRESH_DB)
        # dbt_build points the process's STRIPE_SAGE_DBT_* variables at its database: put them back.
        saved = {var: os.environ.get(var) for var in transform.dbt_env(url)}
        try:
            load_stripe_objects(url, self.golden["stripe"])
            transform.dbt_build(url=url, mapping=mapping)
        finally:
            for var, value in saved.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
        with admin_connection(self.pg_server) as conn:
            conn.execute(f'alter database "{FRESH_DB}" rename to "{name}"')
        self.builds += 1

    def clone_into(self, url: str, mapping: Any = None) -> dict[str, Any]:
        """Make the database of `url` a copy of the golden template for `mapping` (default: the active
        mapping); returns the worked example (parsed JSON). The database must have no open connection."""
        from stripe_sage_pipeline.transform.mapping import load_mapping

        template = self.template(mapping or load_mapping())
        database = url.rsplit("/", 1)[1]
        with admin_connection(self.pg_server) as conn:
            # CREATE DATABASE … TEMPLATE needs the template to have no other session.
            conn.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s and pid <> pg_backend_pid()",
                (template,),
            )
            conn.execute(f'drop database if exists "{database}" with (force)')
            conn.execute(f'create database "{database}" template "{template}"')
        return self.golden


@pytest.fixture(scope="session")
def golden_marts(pg_server, golden_path) -> GoldenMarts:
    """Golden staging + marts, built once per mapping per session; `golden_marts.clone_into(fresh_db)`."""
    return GoldenMarts(pg_server, golden_path)
