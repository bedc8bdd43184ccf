"""Pure rules of the resilience work: the Sage circuit breaker, the dbt manifest's staleness."""

from __future__ import annotations

import os

import pytest

from stripe_sage_pipeline.sage.client import CircuitBreaker
from stripe_sage_pipeline.sage.errors import SageUnavailable
from stripe_sage_pipeline.transform.manifest import manifest_is_stale


def test_breaker_ignores_scattered_faults_and_probes_after_the_cooldown():
    now = [0.0]
    breaker = CircuitBreaker("http://sage.invalid", threshold=3, window_s=20, cooldown_s=30, clock=lambda: now[0])
    for _ in range(10):  # a 503 here and there between answers never opens it
        assert breaker.failure("HTTP 503") is False
        breaker.check()
        breaker.success()
    assert not breaker.failure("timeout")
    now[0] = 25.0
    assert breaker.failure("timeout")  # two failures 25 s apart: Sage is not answering
    with pytest.raises(SageUnavailable, match=r"unavailable at http://sage\.invalid: timeout"):
        breaker.check()
    now[0] = 56.0
    breaker.check()  # the cooldown passed: one probe goes through ...
    with pytest.raises(SageUnavailable):
        breaker.check()  # ... and only one
    breaker.success()
    breaker.check()
    assert not breaker.is_open


def test_breaker_opens_after_threshold_failures_in_a_row():
    breaker = CircuitBreaker("http://sage.invalid", threshold=4, window_s=1000, cooldown_s=30, clock=lambda: 0.0)
    assert [breaker.failure("ConnectError") for _ in range(4)] == [False, False, False, True]
    with pytest.raises(SageUnavailable, match="4 attempts in a row"):
        breaker.check()


def test_manifest_is_stale_when_missing_or_older_than_any_project_file(tmp_path):
    project = tmp_path / "dbt"
    (project / "models" / "marts").mkdir(parents=True)
    (project / "dbt_project.yml").write_text("name: x")
    model = project / "models" / "marts" / "m.sql"
    model.write_text("select 1")
    manifest = project / "target" / "manifest.json"
    assert manifest_is_stale(project, manifest)
    manifest.parent.mkdir()
    manifest.write_text("{}")
    os.utime(model, (1_000, 1_000))
    os.utime(project / "dbt_project.yml", (1_000, 1_000))
    os.utime(manifest, (2_000, 2_000))
    assert not manifest_is_stale(project, manifest)
    os.utime(model, (3_000, 3_000))  # a model edited after the parse
    assert manifest_is_stale(project, manifest)


def test_postgres_resource_configuration_beats_an_inherited_variable(monkeypatch):
    from stripe_sage_pipeline.defs.resources import PostgresResource

    monkeypatch.setenv("STRIPE_SAGE_DATABASE_URL", "postgresql://inherited@old-host/db1")
    resource = PostgresResource(database_url="postgresql://configured@new-host/db2")
    assert resource.url() == "postgresql+psycopg://configured@new-host/db2"
    assert os.environ["STRIPE_SAGE_DATABASE_URL"] == "postgresql://inherited@old-host/db1"  # left alone


def test_sage_sandbox_releases_its_lock_when_begin_fails(tmp_path):
    """Another writer holds the SQLite file: the store's BEGIN IMMEDIATE raises; later writes from any thread
    still get the store's lock (before, the first failure kept it forever and every other thread hung)."""
    import sqlite3
    import threading

    from stripe_sage_sandboxes.sage.store import SageStore

    store = SageStore(tmp_path / "books.sqlite")
    other = sqlite3.connect(str(tmp_path / "books.sqlite"), isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    store._conn.execute("PRAGMA busy_timeout = 50")  # fail fast instead of the default five seconds
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store.create_customer({"custno": "C0001", "company": "Blocked"}, "pipeline")
    other.execute("ROLLBACK")
    other.close()

    done: list[dict] = []
    worker = threading.Thread(
        target=lambda: done.append(store.create_customer({"custno": "C0002", "company": "Next"}, "pipeline"))
    )
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive() and done and done[0]["custno"] == "C0002"
    store.close()
