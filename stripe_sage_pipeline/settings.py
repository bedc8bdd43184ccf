"""The one place that decides embedded vs external Postgres and sandbox vs real Stripe/Sage.

Everything is read from the environment (see `.env.example`). Secrets are kept as plain values
here only so that resources can be built from them; they are never logged: `Settings.__repr__`
masks them, and Dagster resources receive them as `dg.EnvVar`s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import unquote, urlsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Defaults for the sandboxes only: a real deployment sets its own key and Sage credentials.
SANDBOX_STRIPE_KEY = "sk_test_emulator"
SANDBOX_WEBHOOK_SECRET = "whsec_emulator"
SANDBOX_SAGE_USER = "pipeline"
SANDBOX_SAGE_PASSWORD = "pipeline-secret"
SANDBOX_INTACCT_CLIENT_ID = "pipeline.app.sandbox"
SANDBOX_INTACCT_CLIENT_SECRET = "intacct-sandbox-secret"
SANDBOX_INTACCT_USERNAME = "pipeline@STRIPESAGE"

_SECRET_FIELDS = {
    "stripe_api_key",
    "stripe_webhook_secret",
    "sagepro_password",
    "database_url",
    "intacct_client_secret",
    "intacct_refresh_token",
    "studio_token",
}
# The variables whose values are secrets (alerts scrub them from every text they store or send).
SECRET_ENV_VARS = (
    "STRIPE_API_KEY",
    "SAGEPRO_PASSWORD",
    "STRIPE_WEBHOOK_SECRET",
    "INTACCT_CLIENT_SECRET",
    "INTACCT_REFRESH_TOKEN",
    "STRIPE_SAGE_STUDIO_TOKEN",
    "PGPASSWORD",
)
# URLs whose password is a secret (the host and database name are not): the password is scrubbed wherever it shows.
DATABASE_URL_ENV_VARS = ("STRIPE_SAGE_DATABASE_URL", "DAGSTER_POSTGRES_URL", "DATABASE_URL")


def sdk_api_version() -> str:
    """The Stripe API version the installed `stripe` SDK speaks (the default STRIPE_API_VERSION)."""
    import stripe

    return str(stripe.api_version)


def _read(name: str, default: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """A variable of the environment (or of `env`); unset and empty are the same."""
    value = (os.environ if env is None else env).get(name)
    return value if value not in (None, "") else default


def env_is_set(name: str) -> bool:
    """True when the variable has a non-empty value (resources then pass it to Dagster as an EnvVar)."""
    return _read(name) is not None


def pg_runtime_dir(env: Mapping[str, str] | None = None) -> Path:
    """STRIPE_SAGE_PG_RUNTIME_DIR (root only): where the embedded server's cluster goes when its user cannot
    enter the data folder. Read alone, without `load_settings` (which imports the Stripe SDK)."""
    return Path(_read("STRIPE_SAGE_PG_RUNTIME_DIR", "/var/lib/stripe-sage-pg", env) or "/var/lib/stripe-sage-pg")


def pg_bin_cache(env: Mapping[str, str] | None = None) -> Path:
    """STRIPE_SAGE_PG_BIN_CACHE (root only): where a copy of the wheel's PostgreSQL goes when the server's
    user cannot enter the virtualenv."""
    return Path(_read("STRIPE_SAGE_PG_BIN_CACHE", "/var/cache/stripe-sage-pg", env) or "/var/cache/stripe-sage-pg")


def dbt_server_enabled(env: Mapping[str, str] | None = None) -> bool:
    """STRIPE_SAGE_DBT_SERVER (default on): `stripe-sage-dbt` runs its commands in the warm dbt server
    (transform/dbt_server.py); 0/false/no/off runs each command in its own process."""
    return (_read("STRIPE_SAGE_DBT_SERVER", "1", env) or "1").strip().lower() not in ("0", "false", "no", "off")


def secret_values(min_length: int = 6) -> list[str]:
    """The values of the secret variables that are set, longest first (shorter ones are not real secrets)."""
    values = {_read(name) or "" for name in SECRET_ENV_VARS}
    values |= {p for name in DATABASE_URL_ENV_VARS for p in _url_passwords(_read(name) or "")}
    return sorted((v for v in values if len(v) >= min_length), key=len, reverse=True)


def _url_passwords(url: str) -> list[str]:
    """The password of a URL as written and percent-decoded (either may show in a message), or []."""
    try:
        password = urlsplit(url).password or ""
    except ValueError:
        return []
    return [password, unquote(password)] if password else []


@dataclass(frozen=True)
class Settings:
    """Runtime configuration, read once from the environment."""

    data_dir: Path
    database_url: str | None  # None: the embedded server under data_dir
    embedded_pg_port: int
    stripe_api_key: str
    stripe_api_base: str | None  # None: api.stripe.com through the SDK's default
    stripe_account: str | None  # Connect: the connected account id, part of every key when set
    stripe_webhook_secret: str
    stripe_rate_limit_per_s: float
    stripe_api_version: str  # every Stripe request is made at this version (STRIPE_API_VERSION)
    sagepro_base_url: str | None
    sagepro_user: str
    sagepro_password: str
    mapping_file: Path
    # Which accounting system the load stage posts to: "sagepro" (the REST contract) or "intacct".
    sage_target: str = "sagepro"
    intacct_base_url: str | None = None  # None: the emulator's default address
    intacct_client_id: str = SANDBOX_INTACCT_CLIENT_ID
    intacct_client_secret: str = SANDBOX_INTACCT_CLIENT_SECRET
    intacct_username: str = SANDBOX_INTACCT_USERNAME  # userId@companyId[|entityId], client-credentials grant
    intacct_refresh_token: str | None = None  # authorization-code grant: refresh instead of client credentials
    intacct_rate_per_minute: int = 110
    intacct_locations: str | None = None  # "usd=US-01,eur=EU-01": the location of each currency (default: ISO code)
    stripe_extract_workers: int | None = None  # None: sized from the rate limit and Stripe's latency
    start_date: str = "2025-01-01-00:00"  # first hourly partition (UTC); the daily ones start on its date
    sagepro_rate_per_minute: int = 110  # keep under Sage's per-user limit (the sandbox's default is 120/min)
    events_source: str = "webhooks"  # `webhooks` (the receiver's inbox) or `events_api` (poll Stripe)
    sensor_interval_s: int = 30
    event_sensor_interval_s: int = 5  # the webhook/payout/events-poll sensors: part of a webhook's latency
    alert_webhook_url: str | None = None  # Slack-compatible incoming webhook for alerts
    dagster_home: Path | None = None  # None: data_dir/dagster_home
    max_concurrent_runs: int | None = None  # None: dagster.yaml's
    pool_limit: int | None = None  # steps at once per API pool; None: dagster.yaml's
    studio_token: str | None = None  # the mapping studio's access token (required off 127.0.0.1)
    dagster_url: str | None = None  # the webserver the studio launches transform_job in; None: its default
    reap_dead_runs: bool = True  # crash recovery fails runs whose worker is gone (False: workers on other hosts)
    recovery_interval_s: int = 15  # how often the dead-run recovery sensor looks
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def embedded(self) -> bool:
        """True when Postgres is the embedded server started from the pip wheel."""
        return self.database_url is None

    def __repr__(self) -> str:  # secrets never reach logs, even through an f-string of the object
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS and value:
                value = "***"
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"


def _int(value: str | None) -> int | None:
    return int(value) if value is not None else None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from the environment (or from `env`, e.g. a subprocess's environment)."""

    def get(name: str, default: str | None = None) -> str | None:
        return _read(name, default, env)

    data_dir = Path(get("STRIPE_SAGE_DATA_DIR", str(PROJECT_ROOT / ".data"))).expanduser().resolve()
    stripe_key = get("STRIPE_API_KEY", SANDBOX_STRIPE_KEY)
    # Stripe's own limits: 100 req/s live, 25 req/s in test mode; keep a margin below either.
    default_rate = "90" if stripe_key.startswith(("sk_live_", "rk_live_")) else "22"
    return Settings(
        data_dir=data_dir,
        database_url=get("STRIPE_SAGE_DATABASE_URL"),
        embedded_pg_port=int(get("STRIPE_SAGE_PG_PORT", "54329")),
        stripe_api_key=stripe_key,
        stripe_api_base=get("STRIPE_API_BASE"),
        stripe_account=get("STRIPE_ACCOUNT"),
        stripe_webhook_secret=get("STRIPE_WEBHOOK_SECRET", SANDBOX_WEBHOOK_SECRET),
        stripe_rate_limit_per_s=float(get("STRIPE_RATE_LIMIT_PER_S", default_rate)),
        stripe_api_version=get("STRIPE_API_VERSION") or sdk_api_version(),
        sagepro_base_url=get("SAGEPRO_BASE_URL"),
        sagepro_user=get("SAGEPRO_USER", SANDBOX_SAGE_USER),
        sagepro_password=get("SAGEPRO_PASSWORD", SANDBOX_SAGE_PASSWORD),
        mapping_file=Path(get("STRIPE_SAGE_MAPPING", str(PROJECT_ROOT / "mapping.yaml"))),
        sage_target=(get("SAGE_TARGET", "sagepro") or "sagepro").lower(),
        intacct_base_url=get("INTACCT_BASE_URL"),
        intacct_client_id=get("INTACCT_CLIENT_ID", SANDBOX_INTACCT_CLIENT_ID),
        intacct_client_secret=get("INTACCT_CLIENT_SECRET", SANDBOX_INTACCT_CLIENT_SECRET),
        intacct_username=get("INTACCT_USERNAME", SANDBOX_INTACCT_USERNAME),
        intacct_refresh_token=get("INTACCT_REFRESH_TOKEN"),
        intacct_rate_per_minute=int(get("INTACCT_RATE_PER_MINUTE", "110")),
        intacct_locations=get("INTACCT_LOCATIONS"),
        stripe_extract_workers=int(get("STRIPE_EXTRACT_WORKERS", "0")) or None,
        start_date=get("STRIPE_SAGE_START_DATE", "2025-01-01-00:00"),
        sagepro_rate_per_minute=int(get("SAGEPRO_RATE_PER_MINUTE", "110")),
        events_source=get("STRIPE_SAGE_EVENTS_SOURCE", "webhooks"),
        sensor_interval_s=int(get("STRIPE_SAGE_SENSOR_INTERVAL_S", "30")),
        event_sensor_interval_s=int(
            get("STRIPE_SAGE_EVENT_SENSOR_INTERVAL_S", str(min(5, int(get("STRIPE_SAGE_SENSOR_INTERVAL_S", "30")))))
        ),
        alert_webhook_url=get("STRIPE_SAGE_ALERT_WEBHOOK_URL"),
        dagster_home=Path(get("DAGSTER_HOME", str(data_dir / "dagster_home"))).expanduser().resolve(),
        max_concurrent_runs=_int(get("STRIPE_SAGE_MAX_CONCURRENT_RUNS")),
        pool_limit=_int(get("STRIPE_SAGE_POOL_LIMIT")),
        studio_token=get("STRIPE_SAGE_STUDIO_TOKEN"),
        dagster_url=get("STRIPE_SAGE_DAGSTER_URL"),
        reap_dead_runs=(get("STRIPE_SAGE_REAP_DEAD_RUNS", "1") or "1").strip().lower() not in ("0", "false", "no"),
        recovery_interval_s=int(get("STRIPE_SAGE_RECOVERY_INTERVAL_S", "15")),
    )
