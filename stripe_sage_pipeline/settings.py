"""The one place that decides embedded vs external Postgres and sandbox vs real Stripe/Sage.

Everything is read from the environment (see `.env.example`). Secrets are kept as plain values
here only so that resources can be built from them; they are never logged: `Settings.__repr__`
masks them, and Dagster resources receive them as `dg.EnvVar`s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Defaults for the sandboxes only: a real deployment sets its own key and Sage credentials.
SANDBOX_STRIPE_KEY = "sk_test_emulator"
SANDBOX_WEBHOOK_SECRET = "whsec_emulator"
SANDBOX_SAGE_USER = "pipeline"
SANDBOX_SAGE_PASSWORD = "pipeline-secret"
SANDBOX_INTACCT_CLIENT_ID = "pipeline.app.sandbox"
SANDBOX_INTACCT_CLIENT_SECRET = "intacct-sandbox-secret"
SANDBOX_INTACCT_USERNAME = "pipeline@STRIPESAGE"

_SECRET_FIELDS = {"stripe_api_key", "stripe_webhook_secret", "sagepro_password", "database_url",
                  "intacct_client_secret", "intacct_refresh_token"}


def sdk_api_version() -> str:
    """The Stripe API version the installed `stripe` SDK speaks (the default STRIPE_API_VERSION)."""
    import stripe

    return str(stripe.api_version)


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


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


def load_settings() -> Settings:
    """Build `Settings` from the environment."""
    data_dir = Path(_env("STRIPE_SAGE_DATA_DIR", str(PROJECT_ROOT / ".data"))).expanduser().resolve()
    stripe_key = _env("STRIPE_API_KEY", SANDBOX_STRIPE_KEY)
    # Stripe's own limits: 100 req/s live, 25 req/s in test mode; keep a margin below either.
    default_rate = "90" if stripe_key.startswith(("sk_live_", "rk_live_")) else "22"
    return Settings(
        data_dir=data_dir,
        database_url=_env("STRIPE_SAGE_DATABASE_URL"),
        embedded_pg_port=int(_env("STRIPE_SAGE_PG_PORT", "54329")),
        stripe_api_key=stripe_key,
        stripe_api_base=_env("STRIPE_API_BASE"),
        stripe_account=_env("STRIPE_ACCOUNT"),
        stripe_webhook_secret=_env("STRIPE_WEBHOOK_SECRET", SANDBOX_WEBHOOK_SECRET),
        stripe_rate_limit_per_s=float(_env("STRIPE_RATE_LIMIT_PER_S", default_rate)),
        stripe_api_version=_env("STRIPE_API_VERSION") or sdk_api_version(),
        sagepro_base_url=_env("SAGEPRO_BASE_URL"),
        sagepro_user=_env("SAGEPRO_USER", SANDBOX_SAGE_USER),
        sagepro_password=_env("SAGEPRO_PASSWORD", SANDBOX_SAGE_PASSWORD),
        mapping_file=Path(_env("STRIPE_SAGE_MAPPING", str(PROJECT_ROOT / "mapping.yaml"))),
        sage_target=(_env("SAGE_TARGET", "sagepro") or "sagepro").lower(),
        intacct_base_url=_env("INTACCT_BASE_URL"),
        intacct_client_id=_env("INTACCT_CLIENT_ID", SANDBOX_INTACCT_CLIENT_ID),
        intacct_client_secret=_env("INTACCT_CLIENT_SECRET", SANDBOX_INTACCT_CLIENT_SECRET),
        intacct_username=_env("INTACCT_USERNAME", SANDBOX_INTACCT_USERNAME),
        intacct_refresh_token=_env("INTACCT_REFRESH_TOKEN"),
        intacct_rate_per_minute=int(_env("INTACCT_RATE_PER_MINUTE", "110")),
        intacct_locations=_env("INTACCT_LOCATIONS"),
        stripe_extract_workers=int(_env("STRIPE_EXTRACT_WORKERS", "0")) or None,
    )
