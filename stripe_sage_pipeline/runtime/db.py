"""Connections to the one Postgres database: embedded by default, external by URL in production.

Schemas: `stripe_staging` (extracted Stripe objects), `finance` (dbt marts), `sage_sync` (posting
ledger, dead letters, cross-references). Dagster's instance storage uses a database of its own
(`dagster`) on the same server.
"""

from __future__ import annotations

import functools
from urllib.parse import urlsplit, urlunsplit

import psycopg

from stripe_sage_pipeline.runtime.embedded_pg import EmbeddedPostgres
from stripe_sage_pipeline.settings import Settings, load_settings


@functools.lru_cache(maxsize=8)
def _embedded(data_dir: str, port: int) -> EmbeddedPostgres:
    from pathlib import Path

    return EmbeddedPostgres(Path(data_dir), port).start()


def database_url(settings: Settings | None = None, database: str = "stripe_sage") -> str:
    """SQLAlchemy URL (`postgresql+psycopg://…`) of the pipeline's database; starts the embedded server if needed."""
    s = settings or load_settings()
    if s.database_url:
        url = s.database_url
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://") :]
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        if database != "stripe_sage":
            parts = urlsplit(url)
            url = urlunsplit(parts._replace(path=f"/{database}"))
        return url
    return _embedded(str(s.data_dir), s.embedded_pg_port).url(database)


def libpq_url(sqlalchemy_url: str) -> str:
    """The same URL without the SQLAlchemy driver suffix, for psycopg and psql."""
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


def connect(url: str | None = None, autocommit: bool = False) -> psycopg.Connection:
    """A psycopg connection to the pipeline's database (or to `url`)."""
    return psycopg.connect(libpq_url(url or database_url()), autocommit=autocommit)


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe for logs and the UI."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
