"""Shared fixtures: one real embedded PostgreSQL server per test session.

Every test that touches the database gets a fresh database (`fresh_db`) on that server, so tests
never see each other's rows. `STRIPE_SAGE_DATABASE_URL` points the code under test at it.

The worked example's staging and marts are built by dbt once per mapping per session, in a template
database, and copied into a test's database with `CREATE DATABASE … TEMPLATE` (`golden_marts`):
a copy takes a fraction of a second where a dbt build takes many.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from stripe_sage_pipeline.runtime.embedded_pg import EmbeddedPostgres, free_port

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DAGSTER_TELEMETRY_ENABLED", "false")

GOLDEN = Path(__file__).resolve().parents[1] / "examples" / "payout_worked_example.json"


_TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config, items):
    """Mark every test with its tier, from its folder: tests/unit, tests/integration, tests/e2e."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in _TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def pg_server() -> EmbeddedPostgres:
    """A real PostgreSQL server (from the pip wheel) on 127.0.0.1 for the whole session.

    Its data lives outside pytest's temporary root: the server runs as an unprivileged user, and every
    pytest session that starts (another run on a shared machine) resets that root to mode 0700, which
    would cut a running server off from its own files.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="stripe-sage-test-pg-"))
    pg = EmbeddedPostgres(data_dir, free_port()).start()
    yield pg
    pg.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


def admin_connection(pg_server: EmbeddedPostgres) -> psycopg.Connection:
    """An autocommit connection to the server's `postgres` database (CREATE/DROP DATABASE)."""
    return psycopg.connect(f"host=127.0.0.1 port={pg_server.port} user=postgres dbname=postgres", autocommit=True)


@pytest.fixture
def fresh_db(pg_server, monkeypatch) -> str:
    """A new empty database; returns its SQLAlchemy URL and points STRIPE_SAGE_DATABASE_URL at it."""
    name = "t_" + uuid.uuid4().hex[:12]
    with admin_connection(pg_server) as conn:
        conn.execute(f'create database "{name}"')
    url = pg_server.url(name)
    monkeypatch.setenv("STRIPE_SAGE_DATABASE_URL", url)
    return url


@pytest.fixture(scope="session")
def golden_path() -> Path:
    """The worked example vendored in examples/."""
    assert GOLDEN.exists(), f"missing {GOLDEN}"
    return GOLDEN


class GoldenMarts:
    """The worked example in staging with its finance marts built, once per mapping per session.

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
        from transform_helpers import load_stripe_objects

        from stripe_sage_pipeline.transform import build as transform

        content = json.dumps(mapping.model_dump(mode="json"), sort_keys=True)
        name = "golden_" + hashlib.sha256(content.encode()).hexdigest()[:12]
        if name not in self._templates:
            with admin_connection(self.pg_server) as conn:
                conn.execute(f'drop database if exists "{name}" with (force)')
                conn.execute(f'create database "{name}"')
            url = self.pg_server.url(name)
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
            self.builds += 1
            self._templates[name] = url
        return name

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
