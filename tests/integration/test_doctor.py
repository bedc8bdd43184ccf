"""`stripe-sage doctor` against real servers: each check passing, and failing with the line that says what to do."""

from __future__ import annotations

import http.server
import threading

import pytest
import yaml
from load_helpers import PASSWORD, USER, sage_sandbox

from stripe_sage_pipeline.cli import checks, main
from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_pipeline.runtime.embedded_pg import free_port
from stripe_sage_pipeline.settings import PROJECT_ROOT, load_settings
from stripe_sage_sandboxes.stripe_emulator import EmulatorConfig, EmulatorServer, EmulatorState
from stripe_sage_sandboxes.stripe_emulator.objects import API_VERSION as EMULATOR_VERSION

KEY = "sk_test_doctor"


@pytest.fixture(scope="module")
def emulator():
    srv = EmulatorServer(EmulatorState(EmulatorConfig(api_key=KEY)), port=0).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def sage(tmp_path_factory):
    with sage_sandbox(tmp_path_factory.mktemp("sage")) as srv:
        yield srv


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean slate: no Stripe/Sage settings, a Dagster home of the test's own."""
    for name in (
        "STRIPE_API_KEY",
        "STRIPE_API_BASE",
        "STRIPE_API_VERSION",
        "STRIPE_ACCOUNT",
        "SAGEPRO_BASE_URL",
        "SAGEPRO_USER",
        "SAGEPRO_PASSWORD",
        "STRIPE_SAGE_MAPPING",
        "DAGSTER_POSTGRES_URL",
        "SAGE_TARGET",
        "STRIPE_SAGE_START_DATE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return monkeypatch


def _check(name: str) -> checks.CheckResult:
    return checks.CHECKS[name](load_settings())


# -- mapping ---------------------------------------------------------------------------------------------


def test_mapping_check_passes_on_the_shipped_mapping(env):
    r = _check("mapping")
    assert r.ok and str(PROJECT_ROOT / "mapping.yaml") in r.detail and "mode" in r.detail
    assert r.line().startswith("✓ mapping: ")


def test_mapping_check_names_the_bad_key_and_the_fix(env, tmp_path):
    data = yaml.safe_load((PROJECT_ROOT / "mapping.yaml").read_text())
    (tmp_path / "mapping.yaml").write_text(yaml.safe_dump({**data, "posting_mode": "sideways"}))
    env.setenv("STRIPE_SAGE_MAPPING", str(tmp_path / "mapping.yaml"))
    r = _check("mapping")
    assert not r.ok and r.line().startswith("✗ mapping: ")
    assert "posting_mode" in r.detail and "'sideways'" in r.detail and "fix the file" in r.detail
    env.setenv("STRIPE_SAGE_MAPPING", str(tmp_path / "missing.yaml"))
    r = _check("mapping")
    assert not r.ok and "not found" in r.detail


# -- database and Dagster home ----------------------------------------------------------------------------


def test_database_check_passes_on_a_reachable_server(env, fresh_db):
    r = _check("database")
    assert r.ok and "PostgreSQL" in r.detail and "STRIPE_SAGE_DATABASE_URL" in r.detail


def test_database_check_names_the_address_and_the_fix(env):
    env.setenv("STRIPE_SAGE_DATABASE_URL", f"postgresql://finance:s3cret@127.0.0.1:{free_port()}/stripe_sage")
    r = _check("database")
    assert not r.ok and "cannot reach the database" in r.detail and "STRIPE_SAGE_DATABASE_URL" in r.detail
    assert "s3cret" not in r.detail and "***" in r.detail


def test_dagster_check_passes_when_the_home_is_writable_and_the_instance_loads(env, fresh_db, tmp_path):
    env.setenv("DAGSTER_POSTGRES_URL", libpq_url(fresh_db).replace("postgresql://", "postgresql+psycopg2://"))
    r = _check("dagster")
    assert r.ok, r.detail
    assert str(tmp_path / "dagster_home") in r.detail and "0 runs" in r.detail


def test_dagster_check_fails_on_an_unwritable_home_and_on_unreachable_storage(env, fresh_db, tmp_path):
    (tmp_path / "a-file").write_text("")
    env.setenv("DAGSTER_HOME", str(tmp_path / "a-file" / "home"))
    r = _check("dagster")
    assert not r.ok and "not writable" in r.detail and "DAGSTER_HOME" in r.detail

    env.setenv("DAGSTER_HOME", str(tmp_path / "home2"))
    env.setenv("DAGSTER_POSTGRES_URL", f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/dagster")
    r = _check("dagster")
    assert not r.ok and "does not answer" in r.detail and "DAGSTER_POSTGRES_URL" in r.detail


# -- Stripe ------------------------------------------------------------------------------------------------


def test_stripe_check_passes_at_the_pinned_version(env, emulator):
    env.setenv("STRIPE_API_BASE", emulator.url)
    env.setenv("STRIPE_API_KEY", KEY)
    env.setenv("STRIPE_API_VERSION", EMULATOR_VERSION)
    r = _check("stripe")
    assert r.ok, r.detail
    assert f"API version {EMULATOR_VERSION}" in r.detail and "test key" in r.detail


def test_stripe_check_fails_without_a_key_with_a_wrong_key_unreachable_or_at_another_version(env, emulator):
    r = _check("stripe")  # the sandbox default key against Stripe itself
    assert not r.ok and "STRIPE_API_KEY is not set" in r.detail

    env.setenv("STRIPE_API_BASE", emulator.url)
    env.setenv("STRIPE_API_VERSION", EMULATOR_VERSION)
    env.setenv("STRIPE_API_KEY", "sk_test_wrong")
    r = _check("stripe")
    assert not r.ok and "rejected STRIPE_API_KEY" in r.detail and "sk_test_wrong" not in r.detail

    env.setenv("STRIPE_API_KEY", KEY)
    env.setenv("STRIPE_API_BASE", f"http://127.0.0.1:{free_port()}")
    r = _check("stripe")
    assert not r.ok and "cannot reach Stripe" in r.detail and "Connection refused" in r.detail
    assert "\n" not in r.line()

    # A server that answers at a version other than the one asked for (as Stripe does for an old account
    # default when no version is sent): a real socket, a fixed answer.
    class OtherVersion(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's hook
            body = b'{"object": "list", "data": [], "has_more": false, "url": "/v1/balance_transactions"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Stripe-Version", "2019-02-19")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OtherVersion)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        env.setenv("STRIPE_API_BASE", f"http://127.0.0.1:{srv.server_address[1]}")
        env.setenv("STRIPE_API_VERSION", EMULATOR_VERSION)
        r = _check("stripe")
    finally:
        srv.shutdown()
    assert not r.ok and "answered at API version 2019-02-19" in r.detail and EMULATOR_VERSION in r.detail


# -- Sage Pro ----------------------------------------------------------------------------------------------


def test_sage_check_passes_with_the_right_credentials(env, sage):
    env.setenv("SAGEPRO_BASE_URL", sage.base_url)
    env.setenv("SAGEPRO_USER", USER)
    env.setenv("SAGEPRO_PASSWORD", PASSWORD)
    r = _check("sage")
    assert r.ok and sage.base_url in r.detail


def test_sage_check_fails_unset_refused_unreachable_or_at_a_wrong_path(env, sage):
    r = _check("sage")
    assert not r.ok and "SAGEPRO_BASE_URL is not set" in r.detail

    env.setenv("SAGEPRO_BASE_URL", sage.base_url)
    env.setenv("SAGEPRO_PASSWORD", "wrong-password")
    r = _check("sage")
    assert not r.ok and "rejected SAGEPRO_USER/SAGEPRO_PASSWORD" in r.detail and "wrong-password" not in r.detail

    env.setenv("SAGEPRO_PASSWORD", PASSWORD)
    env.setenv("SAGEPRO_BASE_URL", f"http://127.0.0.1:{free_port()}/sagepro/v1/PRO01")
    r = _check("sage")
    assert not r.ok and "did not answer" in r.detail and "SAGEPRO_BASE_URL" in r.detail

    env.setenv("SAGEPRO_BASE_URL", sage.root_url + "/elsewhere")
    r = _check("sage")
    assert not r.ok and "404" in r.detail and "/sagepro/v1/<company>" in r.detail


# -- the command -------------------------------------------------------------------------------------------


def test_doctor_command_prints_one_line_per_check_and_exits_by_the_outcome(env, emulator, sage, capsys):
    env.setenv("STRIPE_API_BASE", emulator.url)
    env.setenv("STRIPE_API_KEY", KEY)
    env.setenv("STRIPE_API_VERSION", EMULATOR_VERSION)
    env.setenv("SAGEPRO_BASE_URL", sage.base_url)
    assert main(["doctor", "--only", "mapping", "--only", "stripe", "--only", "sage"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line[:2] for line in lines[:3]] == ["✓ ", "✓ ", "✓ "] and lines[3] == "All 3 checks passed."

    env.setenv("SAGEPRO_PASSWORD", "wrong-password")
    assert main(["doctor", "--only", "stripe", "--only", "sage"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("✓ stripe") and lines[1].startswith("✗ sage pro") and lines[2] == "1 of 2 checks failed."


def test_sage_check_follows_the_target_to_sage_intacct(env, tmp_path):
    from stripe_sage_sandboxes.targets import start_target_sandbox

    srv, _, target_env = start_target_sandbox("intacct", tmp_path / "intacct")
    try:
        for name, value in target_env.items():
            env.setenv(name, value)
        r = _check("sage")
        assert r.ok and r.name == "sage intacct" and "GL accounts" in r.detail, r.detail
        env.setenv("INTACCT_CLIENT_SECRET", "wrong-secret")
        r = _check("sage")
        assert not r.ok and "refused the credentials" in r.detail and "INTACCT_CLIENT_SECRET" in r.detail
        assert "wrong-secret" not in r.detail
    finally:
        srv.stop()
    r = _check("sage")
    assert not r.ok and "did not answer" in r.detail and "INTACCT_BASE_URL" in r.detail
