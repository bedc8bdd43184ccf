"""Pure rules of the resilience work: the Sage circuit breaker, the dbt manifest's staleness."""

from __future__ import annotations

import os
import threading

import httpx
import pytest

from stripe_sage_pipeline.sage.client import CircuitBreaker, SageClient
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
    breaker.check()  # (its thread checks again inside the client's semaphore, and passes)
    assert isinstance(_check_in_another_thread(breaker), SageUnavailable)  # ... and only one
    breaker.success()
    breaker.check()
    assert not breaker.is_open


def _check_in_another_thread(breaker: CircuitBreaker) -> BaseException | None:
    out: list[BaseException | None] = []

    def check() -> None:
        try:
            breaker.check()
            out.append(None)
        except SageUnavailable as err:
            out.append(err)

    t = threading.Thread(target=check)
    t.start()
    t.join(timeout=10)
    return out[0]


def test_a_failed_probe_reopens_the_breaker_for_another_cooldown():
    now = [0.0]
    breaker = CircuitBreaker("http://sage.invalid", threshold=2, window_s=1000, cooldown_s=30, clock=lambda: now[0])
    breaker.failure("ConnectError")
    assert breaker.failure("ConnectError")
    now[0] = 31.0
    breaker.check()
    assert breaker.failure("ConnectError")  # the probe got no answer either
    with pytest.raises(SageUnavailable):
        breaker.check()
    now[0] = 62.0
    breaker.check()  # the next cooldown passed: the next probe
    breaker.success()
    assert not breaker.is_open and _check_in_another_thread(breaker) is None


def test_sage_pro_client_sends_its_probe_after_the_cooldown_and_closes():
    """Regression: the client checks the breaker twice per attempt (before the rate limiter and inside the
    semaphore); the half-open probe used to fail its own second check, so it was never sent and the breaker
    stayed open for the life of the process."""
    now = [0.0]
    answers = ["503"] * 3 + ["ok"]
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        if answers.pop(0) == "503":
            return httpx.Response(503, json={"error": {"code": "ServiceUnavailable", "message": "down"}})
        return httpx.Response(200, json={"data": [], "has_more": False})

    base = "http://sage.invalid/sagepro/v1/PRO01"
    breaker = CircuitBreaker(base, threshold=3, window_s=1000, cooldown_s=30, clock=lambda: now[0])
    client = SageClient(base, "u", "p", transport=httpx.MockTransport(handler), sleep=lambda s: None, breaker=breaker)
    with pytest.raises(SageUnavailable, match="Sage Pro is unavailable"):
        client.get("/accounts")
    assert len(sent) == 3
    with pytest.raises(SageUnavailable):
        client.get("/accounts")  # open: nothing sent
    assert len(sent) == 3
    now[0] = 31.0
    client.get("/accounts")  # the probe is sent, answered, and closes the breaker
    assert len(sent) == 4 and not breaker.is_open
    client.close()


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
