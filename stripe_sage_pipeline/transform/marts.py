"""The finance marts as a shared resource: one writer at a time, readers never mid-rewrite.

A dbt build rewrites incremental models with `delete+insert`; two builds interleaving, or a load
reading a mart between the delete and the insert, would see rows twice or not at all. Every build
of the marts therefore holds the marts lock *exclusively* and every load that plans from them holds
it *shared* (a PostgreSQL advisory lock, so it holds across processes and runs however they were
launched, and a killed process releases it with its connection). PostgreSQL queues a waiting
writer ahead of later readers, so a stream of loads cannot starve a build.

`built_mapping` is the one source of truth for the posting mode (and the rest of the mapping) that
the marts in the database were built with: what the last complete build recorded, not a re-read of
mapping.yaml, which may have changed since.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

import psycopg

from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_pipeline.transform.mapping import CONFIG_SCHEMA, Mapping, parse_mapping

log = logging.getLogger(__name__)

LOCK_NAME = "stripe_sage:finance_marts"
DEFAULT_WAIT_S = 3600.0
# Dagster's view of the same rule. One step that writes the marts (or their configuration) at a time,
# across runs: a second build shows as waiting for this pool (dagster.yaml: one slot per pool).
MARTS_POOL = "finance_marts"
# Runs that build or read the marts (transform_job, fast_path_job, load_job, the re-drive) carry this
# tag and share one slot of the run queue (dagster.yaml: tag_concurrency_limits), so a load never
# starts between a build and its blocking checks.
MARTS_RUN_TAG_KEY = "stripe_sage/finance_marts"
MARTS_RUN_TAG = {MARTS_RUN_TAG_KEY: "1"}


class MartsLockTimeout(TimeoutError):
    """The marts stayed locked by another build or load for longer than allowed."""


@contextlib.contextmanager
def marts_lock(
    url: str, *, exclusive: bool, wait_s: float = DEFAULT_WAIT_S, on_wait: Callable[[str], None] | None = None
) -> Iterator[float]:
    """Hold the marts lock (exclusive: a build; shared: a load) for the block; yields the seconds waited.

    The lock lives on its own connection, closed (and so released) on exit, also when the block raises.
    """
    conn = psycopg.connect(libpq_url(url), autocommit=True)
    mode = "exclusive" if exclusive else "shared"
    suffix = "" if exclusive else "_shared"
    t0 = time.monotonic()
    try:
        if not conn.execute(f"select pg_try_advisory_lock{suffix}(hashtext(%s))", (LOCK_NAME,)).fetchone()[0]:
            msg = (
                f"finance marts are {'in use' if exclusive else 'being rebuilt'}: waiting for the {mode} marts lock"
                f" (at most {wait_s:.0f}s)"
            )
            (on_wait or log.info)(msg)
            conn.execute(f"set lock_timeout = '{int(wait_s * 1000)}ms'")
            try:
                conn.execute(f"select pg_advisory_lock{suffix}(hashtext(%s))", (LOCK_NAME,))
            except psycopg.errors.LockNotAvailable as err:
                raise MartsLockTimeout(
                    f"the finance marts stayed locked for more than {wait_s:.0f}s; see the"
                    " running transform_job / fast_path_job / load_job runs"
                ) from err
        yield time.monotonic() - t0
    finally:
        conn.close()


def built_mapping(url: str) -> Mapping | None:
    """The mapping the marts were last completely built with (None before the first complete build)."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        if conn.execute("select to_regclass(%s)", (f"{CONFIG_SCHEMA}.build_state",)).fetchone()[0] is None:
            return None
        has_column = conn.execute(
            "select 1 from information_schema.columns where table_schema = %s and table_name = 'build_state'"
            " and column_name = 'mapping'",
            (CONFIG_SCHEMA,),
        ).fetchone()
        if not has_column:
            return None
        row = conn.execute(
            f"select mapping from {CONFIG_SCHEMA}.build_state where mapping is not null order by built_at desc limit 1"
        ).fetchone()
    return parse_mapping(row[0], f"{CONFIG_SCHEMA}.build_state") if row else None
