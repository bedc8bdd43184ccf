"""Each command, facing what it must expect (database, Stripe or Sage unreachable or refusing, a bad mapping, a
taken port), prints one line naming the cause and the fix, announces nothing first, and exits 1."""

from __future__ import annotations

import socket

import pytest
import yaml
from load_helpers import sage_sandbox

from stripe_sage_pipeline.cli import main
from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_pipeline.runtime.embedded_pg import free_port
from stripe_sage_pipeline.settings import PROJECT_ROOT
from stripe_sage_sandboxes.stripe_emulator import EmulatorConfig, EmulatorServer, EmulatorState
from stripe_sage_sandboxes.stripe_emulator.objects import API_VERSION as EMULATOR_VERSION


@pytest.fixture
def env(monkeypatch, tmp_path):
    for name in (
        "STRIPE_API_KEY",
        "STRIPE_API_BASE",
        "STRIPE_API_VERSION",
        "SAGEPRO_BASE_URL",
        "SAGEPRO_USER",
        "SAGEPRO_PASSWORD",
        "STRIPE_SAGE_MAPPING",
        "DAGSTER_POSTGRES_URL",
        "STRIPE_SAGE_START_DATE",
        "SAGE_TARGET",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("STRIPE_SAGE_DATA_DIR", str(tmp_path / "data"))
    return monkeypatch


@pytest.fixture
def dead_db(env):
    url = f"postgresql://finance:s3cret@127.0.0.1:{free_port()}/stripe_sage"
    env.setenv("STRIPE_SAGE_DATABASE_URL", url)
    return url


@pytest.fixture
def taken_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _one_line(capsys, command: str) -> tuple[str, str]:
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and out.err.startswith(f"stripe-sage {command}: "), out.err
    assert "Traceback" not in out.err + out.out
    return out.out, out.err


def test_demo_with_the_database_unreachable_checks_first_and_never_says_ready(dead_db, capsys):
    assert main(["demo", "--days", "1"]) == 1
    out, err = _one_line(capsys, "demo")
    assert "✓ mapping" in out and "✗ database" in out and "ready" not in out
    assert "cannot reach the database at postgresql://finance:***@127.0.0.1" in err and "s3cret" not in err


def test_demo_with_a_bad_mapping_names_the_key(env, fresh_db, tmp_path, capsys):
    data = yaml.safe_load((PROJECT_ROOT / "mapping.yaml").read_text())
    data["accounts"] = {**data["accounts"], "revenue": None}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(data))
    env.setenv("STRIPE_SAGE_MAPPING", str(tmp_path / "m.yaml"))
    assert main(["demo", "--days", "1"]) == 1
    out, err = _one_line(capsys, "demo")
    assert "✗ mapping" in out and "accounts.revenue" in err and "fix the file" in err


def test_redrive_with_the_database_unreachable(dead_db, capsys):
    assert main(["redrive"]) == 1
    _, err = _one_line(capsys, "redrive")
    assert "cannot reach the database" in err


def test_redrive_with_sage_unreachable_or_refusing(env, fresh_db, tmp_path, capsys):
    env.setenv("SAGEPRO_BASE_URL", f"http://127.0.0.1:{free_port()}/sagepro/v1/PRO01")
    assert main(["redrive"]) == 1
    _, err = _one_line(capsys, "redrive")
    assert "did not answer" in err and "SAGEPRO_BASE_URL" in err

    with sage_sandbox(tmp_path / "sage") as srv:
        env.setenv("SAGEPRO_BASE_URL", srv.base_url)
        env.setenv("SAGEPRO_PASSWORD", "wrong-password")
        assert main(["redrive"]) == 1
    _, err = _one_line(capsys, "redrive")
    assert "rejected SAGEPRO_USER/SAGEPRO_PASSWORD" in err and "wrong-password" not in err


def test_webhooks_with_the_database_unreachable_or_the_port_taken_announce_nothing(
    dead_db, fresh_db, taken_port, env, capsys
):
    env.setenv("STRIPE_SAGE_DATABASE_URL", dead_db)
    assert main(["webhooks", "--port", str(free_port())]) == 1
    out, err = _one_line(capsys, "webhooks")
    assert out == "" and "cannot reach the database" in err

    env.setenv("STRIPE_SAGE_DATABASE_URL", fresh_db)
    assert main(["webhooks", "--port", str(taken_port)]) == 1
    out, err = _one_line(capsys, "webhooks")
    assert out == "" and "already in use" in err and "--port" in err


def test_ui_with_the_database_unreachable_or_the_port_taken_announces_nothing(dead_db, taken_port, capsys):
    assert main(["ui", "--port", str(free_port())]) == 1
    out, err = _one_line(capsys, "ui")
    assert "Dagster UI" not in out and "cannot reach the database" in err

    assert main(["ui", "--port", str(taken_port)]) == 1
    out, err = _one_line(capsys, "ui")
    assert "Dagster UI" not in out and f"port {taken_port} is already in use" in err


def test_run_with_stripe_refusing_the_key_stops_before_any_job(env, fresh_db, capsys):
    env.setenv("DAGSTER_POSTGRES_URL", libpq_url(fresh_db).replace("postgresql://", "postgresql+psycopg2://"))
    srv = EmulatorServer(EmulatorState(EmulatorConfig(api_key="sk_test_right")), port=0).start()
    try:
        env.setenv("STRIPE_API_BASE", srv.url)
        env.setenv("STRIPE_API_VERSION", EMULATOR_VERSION)
        env.setenv("STRIPE_API_KEY", "sk_test_wrong")
        env.setenv("SAGEPRO_BASE_URL", f"http://127.0.0.1:{free_port()}/sagepro/v1/PRO01")
        assert main(["run", "--from", "2026-11-01", "--to", "2026-11-02"]) == 1
    finally:
        srv.stop()
    out, err = _one_line(capsys, "run")
    assert "✗ stripe" in out and "✗ sage pro" in out
    assert "2 check(s) failed, first: stripe:" in err and "rejected STRIPE_API_KEY" in err
