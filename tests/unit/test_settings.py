"""settings.py: every variable the pipeline reads, its default, and what never shows."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stripe_sage_pipeline import settings
from stripe_sage_pipeline.runtime.dagster_home import render_instance_config
from stripe_sage_pipeline.settings import PROJECT_ROOT, load_settings


def test_defaults_are_the_embedded_server_and_the_sandboxes() -> None:
    s = load_settings({})
    assert s.embedded and s.database_url is None and s.embedded_pg_port == 54329
    assert s.data_dir == (PROJECT_ROOT / ".data").resolve() and s.dagster_home == s.data_dir / "dagster_home"
    assert (s.stripe_api_key, s.stripe_api_base, s.stripe_account) == ("sk_test_emulator", None, None)
    assert s.stripe_rate_limit_per_s == 22.0  # under Stripe's 25/s test-mode limit
    assert (s.sagepro_base_url, s.sagepro_user, s.sagepro_rate_per_minute) == (None, "pipeline", 110)
    assert (s.start_date, s.events_source, s.sensor_interval_s) == ("2025-01-01-00:00", "webhooks", 30)
    assert (s.alert_webhook_url, s.max_concurrent_runs, s.pool_limit) == (None, None, None)
    assert s.mapping_file == PROJECT_ROOT / "mapping.yaml"
    assert (s.reap_dead_runs, s.recovery_interval_s) == (True, 15)
    assert settings.pg_runtime_dir({}) == Path("/var/lib/stripe-sage-pg")
    assert settings.pg_bin_cache({}) == Path("/var/cache/stripe-sage-pg")


def test_every_variable_is_read_and_empty_means_unset(tmp_path: Path) -> None:
    env = {
        "STRIPE_SAGE_DATA_DIR": str(tmp_path),
        "STRIPE_SAGE_DATABASE_URL": "postgresql://u:p@db:5432/fin",
        "STRIPE_SAGE_PG_PORT": "55000",
        "STRIPE_API_KEY": "sk_live_abc",
        "STRIPE_API_BASE": "http://127.0.0.1:1",
        "STRIPE_ACCOUNT": "acct_1",
        "STRIPE_WEBHOOK_SECRET": "whsec_x",
        "SAGEPRO_BASE_URL": "http://127.0.0.1:2",
        "SAGEPRO_USER": "u",
        "SAGEPRO_PASSWORD": "pw",
        "STRIPE_SAGE_MAPPING": str(tmp_path / "m.yaml"),
        "STRIPE_SAGE_START_DATE": "2026-07-01-00:00",
        "SAGEPRO_RATE_PER_MINUTE": "60",
        "STRIPE_SAGE_EVENTS_SOURCE": "events_api",
        "STRIPE_SAGE_SENSOR_INTERVAL_S": "5",
        "STRIPE_SAGE_ALERT_WEBHOOK_URL": "http://127.0.0.1:3/hook",
        "DAGSTER_HOME": str(tmp_path / "home"),
        "STRIPE_SAGE_MAX_CONCURRENT_RUNS": "2",
        "STRIPE_SAGE_POOL_LIMIT": "3",
        "STRIPE_RATE_LIMIT_PER_S": "",
        "STRIPE_SAGE_REAP_DEAD_RUNS": "No",
        "STRIPE_SAGE_RECOVERY_INTERVAL_S": "60",
        "STRIPE_SAGE_PG_RUNTIME_DIR": str(tmp_path / "run"),
        "STRIPE_SAGE_PG_BIN_CACHE": str(tmp_path / "bin"),
    }
    s = load_settings(env)
    assert not s.embedded and s.embedded_pg_port == 55000 and s.data_dir == tmp_path
    assert s.stripe_rate_limit_per_s == 90.0  # empty = unset: the live-key default
    assert (s.stripe_account, s.sagepro_rate_per_minute, s.events_source, s.sensor_interval_s) == (
        "acct_1",
        60,
        "events_api",
        5,
    )
    assert (s.start_date, s.alert_webhook_url, s.dagster_home) == (
        "2026-07-01-00:00",
        "http://127.0.0.1:3/hook",
        tmp_path / "home",
    )
    assert (s.max_concurrent_runs, s.pool_limit, s.mapping_file) == (2, 3, tmp_path / "m.yaml")
    assert (s.reap_dead_runs, s.recovery_interval_s) == (False, 60)
    assert (settings.pg_runtime_dir(env), settings.pg_bin_cache(env)) == (tmp_path / "run", tmp_path / "bin")
    # Secrets never reach a log line through the object's repr.
    text = repr(s)
    assert "sk_live_abc" not in text and "pw'" not in text and "u:p@db" not in text and "whsec_x" not in text


def test_secret_values_are_the_long_enough_secrets_longest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_0123456789")
    monkeypatch.setenv("SAGEPRO_PASSWORD", "short")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_abcdef")
    assert settings.secret_values() == ["sk_test_0123456789", "whsec_abcdef"]
    assert settings.env_is_set("STRIPE_API_KEY") and not settings.env_is_set("STRIPE_SAGE_NO_SUCH_VARIABLE")


def test_instance_config_takes_the_queue_and_pool_limits() -> None:
    default = yaml.safe_load(render_instance_config({}))
    tuned = yaml.safe_load(
        render_instance_config({"STRIPE_SAGE_MAX_CONCURRENT_RUNS": "7", "STRIPE_SAGE_POOL_LIMIT": "2"})
    )
    assert tuned["concurrency"]["runs"]["max_concurrent_runs"] == 7
    assert tuned["concurrency"]["pools"]["default_limit"] == 2
    assert default["concurrency"] == yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())["concurrency"]


def test_every_variable_read_is_documented_in_env_example() -> None:
    import re

    read = set(re.findall(r'get\("([A-Z0-9_]+)"', (PROJECT_ROOT / "stripe_sage_pipeline" / "settings.py").read_text()))
    documented = set(re.findall(r"^([A-Z0-9_]+)=", (PROJECT_ROOT / ".env.example").read_text(), re.MULTILINE))
    assert len(read) >= 20 and read <= documented, sorted(read - documented)
