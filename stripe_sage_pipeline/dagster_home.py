"""Prepares DAGSTER_HOME so that Dagster's instance storage lives in the pipeline's Postgres."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .db import database_url, libpq_url
from .settings import PROJECT_ROOT, Settings, load_settings


def prepare_dagster_home(settings: Settings | None = None) -> Path:
    """Set DAGSTER_HOME (default: <data_dir>/dagster_home) with the project's dagster.yaml and its env vars."""
    s = settings or load_settings()
    home = Path(os.environ.get("DAGSTER_HOME") or s.data_dir / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists() or target.read_text() != (PROJECT_ROOT / "dagster.yaml").read_text():
        shutil.copyfile(PROJECT_ROOT / "dagster.yaml", target)
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ.setdefault("DAGSTER_POSTGRES_URL", libpq_url(database_url(s, database="dagster")))
    os.environ.setdefault("STRIPE_SAGE_MAX_CONCURRENT_RUNS", "4")
    os.environ.setdefault("DAGSTER_TELEMETRY_ENABLED", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    return home
