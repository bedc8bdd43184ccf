"""Dagster resources: Postgres, Stripe and Sage Pro, configured from the environment.

Secrets are `dg.EnvVar`s when the variable is set, so Dagster shows the variable's name in the UI,
never its value. When unset, the sandbox defaults apply (they are not secrets).
"""

import dataclasses

import dagster as dg
from pydantic import PrivateAttr

from stripe_sage_pipeline.extract.client import StripeReader
from stripe_sage_pipeline.runtime.dagster_home import hold_storage_connections
from stripe_sage_pipeline.runtime.db import database_url
from stripe_sage_pipeline.settings import (
    SANDBOX_INTACCT_CLIENT_ID,
    SANDBOX_INTACCT_CLIENT_SECRET,
    SANDBOX_INTACCT_USERNAME,
    SANDBOX_SAGE_PASSWORD,
    SANDBOX_SAGE_USER,
    SANDBOX_STRIPE_KEY,
    env_is_set,
    load_settings,
)


def env_or(name: str, default: str | None) -> str | dg.EnvVar | None:
    """An EnvVar when the variable is set (its value stays out of the UI), else the default."""
    return dg.EnvVar(name) if env_is_set(name) else default


class PostgresResource(dg.ConfigurableResource):
    """The pipeline's PostgreSQL database: the embedded server unless STRIPE_SAGE_DATABASE_URL is set.

    While a run uses it, the run's Dagster instance keeps its own storage connections open too
    (`hold_storage_connections`): otherwise dagster-postgres connects anew for each event the run writes.
    """

    database_url: str | None = None

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Pool the run's instance-storage connections for the rest of the run (see the class docstring)."""
        if context.instance is not None:
            hold_storage_connections(context.instance)

    def url(self) -> str:
        """SQLAlchemy URL of the database (starts the embedded server on first use)."""
        if self.database_url:
            # The configured URL wins over whatever the process inherited; os.environ is left alone.
            return database_url(dataclasses.replace(load_settings(), database_url=self.database_url))
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
    extract_workers: int | None = None  # requests in flight while extracting; None: sized from limit and latency

    _reader: StripeReader | None = PrivateAttr(default=None)

    def reader(self) -> StripeReader:
        """One rate-limited reader per run, shared by its threads."""
        if self._reader is None:
            self._reader = StripeReader(
                self.api_key, self.api_base, self.stripe_account or None, rate_limit_per_s=self.rate_limit_per_s
            )
        return self._reader


class SageResource(dg.ConfigurableResource):
    """The accounting target the load posts to (SAGE_TARGET): the Sage Pro REST facade or Sage Intacct."""

    target: str = "sagepro"
    base_url: str | None = None
    user: str = SANDBOX_SAGE_USER
    password: str = SANDBOX_SAGE_PASSWORD
    rate_per_minute: int | None = 110
    max_concurrency: int = 4
    intacct_base_url: str | None = None
    intacct_client_id: str = SANDBOX_INTACCT_CLIENT_ID
    intacct_client_secret: str = SANDBOX_INTACCT_CLIENT_SECRET
    intacct_username: str = SANDBOX_INTACCT_USERNAME
    intacct_refresh_token: str | None = None
    intacct_locations: str | None = None

    def client(self, **overrides):
        """The target's client plus its request counter, e.g. `client, counter = sage.client()`.

        `sagepro`: a `SageClient`; `intacct`: an `IntacctTarget`. The load stage takes either.
        """
        from stripe_sage_pipeline.sage.factory import make_target_client

        return make_target_client(
            self, rate_per_minute=self.rate_per_minute, max_concurrency=self.max_concurrency, **overrides
        )

    # The factory reads settings-shaped attributes.
    @property
    def sage_target(self) -> str:
        """The target's name."""
        return self.target

    @property
    def sagepro_base_url(self) -> str | None:
        """Sage Pro facade URL."""
        return self.base_url

    @property
    def sagepro_user(self) -> str:
        """Sage Pro user."""
        return self.user

    @property
    def sagepro_password(self) -> str:
        """Sage Pro password."""
        return self.password


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources built from the environment (see .env.example)."""
    s = load_settings()
    return {
        "postgres": PostgresResource(database_url=env_or("STRIPE_SAGE_DATABASE_URL", None)),
        "stripe": StripeResource(
            api_key=env_or("STRIPE_API_KEY", SANDBOX_STRIPE_KEY),
            api_base=s.stripe_api_base,
            stripe_account=s.stripe_account,
            rate_limit_per_s=s.stripe_rate_limit_per_s,
            extract_workers=s.stripe_extract_workers,
        ),
        "sage": SageResource(
            target=s.sage_target,
            intacct_base_url=s.intacct_base_url,
            intacct_client_id=env_or("INTACCT_CLIENT_ID", s.intacct_client_id),
            intacct_client_secret=env_or("INTACCT_CLIENT_SECRET", s.intacct_client_secret),
            intacct_username=env_or("INTACCT_USERNAME", s.intacct_username),
            intacct_refresh_token=env_or("INTACCT_REFRESH_TOKEN", None),
            intacct_locations=s.intacct_locations,
            base_url=s.sagepro_base_url,
            user=env_or("SAGEPRO_USER", SANDBOX_SAGE_USER),
            password=env_or("SAGEPRO_PASSWORD", SANDBOX_SAGE_PASSWORD),
            rate_per_minute=s.intacct_rate_per_minute if s.sage_target == "intacct" else s.sagepro_rate_per_minute,
        ),
    }
