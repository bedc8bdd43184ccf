"""Shared fixtures: one real embedded PostgreSQL server per test session.

Every test that touches the database gets a fresh database (`fresh_db`) on that server, so tests
never see each other's rows. `STRIPE_SAGE_DATABASE_URL` points the code under test at it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

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
def pg_server(tmp_path_factory) -> EmbeddedPostgres:
    """A real PostgreSQL server (from the pip wheel) on 127.0.0.1 for the whole session."""
    data_dir = tmp_path_factory.mktemp("pg")
    pg = EmbeddedPostgres(data_dir, free_port()).start()
    yield pg
    pg.stop()


@pytest.fixture
def fresh_db(pg_server, monkeypatch) -> str:
    """A new empty database; returns its SQLAlchemy URL and points STRIPE_SAGE_DATABASE_URL at it."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(f"host=127.0.0.1 port={pg_server.port} user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    url = pg_server.url(name)
    monkeypatch.setenv("STRIPE_SAGE_DATABASE_URL", url)
    return url


@pytest.fixture(scope="session")
def golden_path() -> Path:
    """The worked example vendored in examples/."""
    assert GOLDEN.exists(), f"missing {GOLDEN}"
    return GOLDEN
