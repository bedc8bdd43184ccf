"""Dagster resources: Postgres, Stripe and Sage Pro, configured from the environment.

Secrets are `dg.EnvVar`s when the variable is set, so Dagster shows the variable's name in the UI,
never its value. When unset, the sandbox defaults apply (they are not secrets).
"""


import os

import dagster as dg
from pydantic import PrivateAttr

from stripe_sage_pipeline.extract.client import StripeReader
from stripe_sage_pipeline.runtime.db import database_url
from stripe_sage_pipeline.settings import SANDBOX_SAGE_PASSWORD, SANDBOX_SAGE_USER, SANDBOX_STRIPE_KEY, load_settings


def env_or(name: str, default: str | None) -> str | dg.EnvVar | None:
    """An EnvVar when the variable is set (its value stays out of the UI), else the default."""
    return dg.EnvVar(name) if os.environ.get(name) else default


class PostgresResource(dg.ConfigurableResource):
    """The pipeline's PostgreSQL database: the embedded server unless STRIPE_SAGE_DATABASE_URL is set."""

    database_url: str | None = None

    def url(self) -> str:
        """SQLAlchemy URL of the database (starts the embedded server on first use)."""
        if self.database_url:
            os.environ.setdefault("STRIPE_SAGE_DATABASE_URL", self.database_url)
            return database_url(load_settings())
        return database_url()

    def conninfo(self) -> str:
        """The libpq URL, for psycopg."""
        return self.url().replace("postgresql+psycopg://", "postgresql://", 1)


class StripeResource(dg.ConfigurableResource):
    """Stripe, read through the official SDK (the emulator when STRIPE_API_BASE points at it)."""

    api_key: str
    api_base: str | None = None
    stripe_account: str | None = None
    rate_limit_per_s: float = 22.0

    _reader: StripeReader | None = PrivateAttr(default=None)

    def reader(self) -> StripeReader:
        """One rate-limited reader per run, shared by its threads."""
        if self._reader is None:
            self._reader = StripeReader(
                self.api_key, self.api_base, self.stripe_account or None, rate_limit_per_s=self.rate_limit_per_s
            )
        return self._reader


class SageResource(dg.ConfigurableResource):
    """The Sage Pro REST facade (the sandbox in the demo)."""

    base_url: str | None = None
    user: str = SANDBOX_SAGE_USER
    password: str = SANDBOX_SAGE_PASSWORD
    rate_per_minute: int | None = 110
    max_concurrency: int = 4

    def client(self, **overrides):
        """A `SageClient` plus its request counter (`CountingTransport`), e.g. `client, counter = sage.client()`."""
        from stripe_sage_pipeline.load.post import make_client

        base_url = self.base_url or "http://127.0.0.1:8765/sagepro/v1/PRO01"
        return make_client(base_url, self.user, self.password, rate_per_minute=self.rate_per_minute,
                           max_concurrency=self.max_concurrency, **overrides)


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources built from the environment (see .env.example)."""
    s = load_settings()
    return {
        "postgres": PostgresResource(database_url=env_or("STRIPE_SAGE_DATABASE_URL", None)),
        "stripe": StripeResource(
            api_key=env_or("STRIPE_API_KEY", SANDBOX_STRIPE_KEY),
            api_base=os.environ.get("STRIPE_API_BASE") or None,
            stripe_account=os.environ.get("STRIPE_ACCOUNT") or None,
            rate_limit_per_s=s.stripe_rate_limit_per_s,
        ),
        "sage": SageResource(
            base_url=os.environ.get("SAGEPRO_BASE_URL") or None,
            user=env_or("SAGEPRO_USER", SANDBOX_SAGE_USER),
            password=env_or("SAGEPRO_PASSWORD", SANDBOX_SAGE_PASSWORD),
            # Keep under Sage's per-user limit (the sandbox's default is 120/min).
            rate_per_minute=int(os.environ.get("SAGEPRO_RATE_PER_MINUTE", "110")),
        ),
    }
