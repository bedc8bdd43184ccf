"""Start the transform after a save: `transform_job` through a running Dagster webserver's GraphQL API.

The studio does not run dbt itself: the transformation belongs to Dagster (its run history, its
checks, the load it triggers). When no webserver answers at the configured URL, nothing is started
and the page says how to run it.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

TRANSFORM_JOB = "transform_job"
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"


@dataclass
class LaunchResult:
    """A run id when started; otherwise the reason, in a sentence for the page."""

    run_id: str | None
    message: str

    @property
    def started(self) -> bool:
        """True when Dagster accepted the run."""
        return self.run_id is not None


def launch_transform(dagster_url: str | None, tags: dict[str, str] | None = None, timeout_s: int = 15) -> LaunchResult:
    """Submit `transform_job` to the Dagster webserver at `dagster_url` (None: not configured)."""
    if not dagster_url:
        return LaunchResult(
            None,
            "no Dagster webserver configured: run the transform from Dagster "
            "(materialize the finance assets, or `transform_job`).",
        )
    import httpx
    from dagster_graphql import DagsterGraphQLClient

    parts = urlsplit(dagster_url)
    try:
        httpx.get(dagster_url.rstrip("/") + "/server_info", timeout=3).raise_for_status()
    except httpx.HTTPError:
        return LaunchResult(
            None,
            f"no Dagster webserver answers at {dagster_url}: the mapping is saved; run "
            f"{TRANSFORM_JOB} from Dagster (`stripe-sage ui`) to apply it.",
        )
    try:
        client = DagsterGraphQLClient(
            parts.hostname or "127.0.0.1",
            port_number=parts.port,
            use_https=parts.scheme == "https",
            timeout=timeout_s,
            path_prefix=parts.path.rstrip("/"),
        )
        run_id = client.submit_job_execution(TRANSFORM_JOB, tags=tags or {})
    except Exception as err:  # unreachable server, unknown job, GraphQL error: say which, start nothing
        reason = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        return LaunchResult(
            None,
            f"Dagster at {dagster_url} did not start {TRANSFORM_JOB} ({reason}); "
            "the mapping is saved: start the transform from Dagster when it is up.",
        )
    return LaunchResult(run_id, f"{TRANSFORM_JOB} started in Dagster: run {run_id}")
