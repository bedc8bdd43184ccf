"""`stripe-sage doctor`: every check a new deployment needs, each one line (✓ / ✗ and what to do).

Each check is a plain function of `Settings` returning a `CheckResult`; none raises. The order is the
order a person fixes things in: the mapping (a file), the database, the Dagster home (which lives in
the database), then the two remote APIs. The messages that say what to do are shared with the
command line's one-line errors (`cli/errors.py`), so a failure reads the same wherever it shows up.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from stripe_sage_pipeline.settings import SANDBOX_STRIPE_KEY, Settings, load_settings, sdk_api_version

TIMEOUT_S = 10.0


@dataclass(frozen=True)
class CheckResult:
    """One line of the doctor: what was checked, whether it passed, what was found or what to do."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        """`✓ name: detail` or `✗ name: detail` (the detail of a failure ends with the fix)."""
        return f"{'✓' if self.ok else '✗'} {self.name}: {self.detail}"


def pinned_stripe_version(settings: Settings) -> str:
    """The Stripe API version every request is made at: STRIPE_API_VERSION when set, else the SDK's pin."""
    return getattr(settings, "stripe_api_version", None) or sdk_api_version()


# -- the checks --------------------------------------------------------------------------------------


def check_mapping(settings: Settings) -> CheckResult:
    """The mapping file exists and validates (accounts, categories, posting mode, …)."""
    from stripe_sage_pipeline.transform.mapping import MappingError, load_mapping

    try:
        m = load_mapping(settings.mapping_file)
    except MappingError as exc:
        first = exc.problems[0] if exc.problems else ("?", "", str(exc))
        more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
        return CheckResult(
            "mapping",
            False,
            f"{settings.mapping_file}: {first[0]}: {first[2]} (got {first[1]!r}){more}"
            " — fix the file (or point STRIPE_SAGE_MAPPING at another)",
        )
    return CheckResult(
        "mapping",
        True,
        f"{settings.mapping_file} is valid ({m.posting_mode} mode, "
        f"{len(m.currencies)} currencies, {len(m.categories)} categories)",
    )


def check_database(settings: Settings) -> CheckResult:
    """The pipeline's database answers (the embedded server is started when it is the one configured)."""
    import psycopg

    from stripe_sage_pipeline.runtime.db import database_url, libpq_url, redact_url
    from stripe_sage_pipeline.runtime.embedded_pg import EmbeddedPostgresError

    try:
        url = libpq_url(database_url(settings))
    except EmbeddedPostgresError as exc:
        return CheckResult("database", False, str(exc))
    try:
        with psycopg.connect(url, connect_timeout=int(TIMEOUT_S)) as conn:
            version = conn.execute("show server_version").fetchone()[0]
    except psycopg.Error as exc:
        return CheckResult("database", False, database_problem(redact_url(url), exc, settings))
    where = "embedded server" if settings.embedded else "STRIPE_SAGE_DATABASE_URL"
    return CheckResult("database", True, f"PostgreSQL {version} at {redact_url(url)} ({where})")


def check_dagster_home(settings: Settings) -> CheckResult:
    """DAGSTER_HOME is writable and the Dagster instance (storage in Postgres) loads."""
    import dagster as dg

    from stripe_sage_pipeline.runtime.dagster_home import prepare_dagster_home

    try:
        home = prepare_dagster_home(settings)
        probe = home / ".doctor-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return CheckResult(
            "dagster home",
            False,
            f"{exc.filename or 'DAGSTER_HOME'} is not writable ({exc.strerror})"
            " — set DAGSTER_HOME (or STRIPE_SAGE_DATA_DIR) to a writable folder",
        )
    except Exception as exc:  # the embedded server behind DAGSTER_POSTGRES_URL did not start
        return CheckResult(
            "dagster home", False, f"{first_line(exc)} — run `stripe-sage doctor` after fixing the database"
        )
    # Dagster retries a dead storage for a quarter of a minute, a warning per try: ask the server once first.
    storage = os.environ.get("DAGSTER_POSTGRES_URL", "")
    if storage.startswith("postgresql"):
        import psycopg

        from stripe_sage_pipeline.runtime.db import redact_url

        plain = "postgresql://" + storage.split("://", 1)[1]
        try:
            psycopg.connect(plain, connect_timeout=int(TIMEOUT_S)).close()
        except psycopg.Error as exc:
            return CheckResult(
                "dagster home",
                False,
                f"Dagster's storage at {redact_url(plain)} does not answer "
                f"({first_line(exc)}) — check DAGSTER_POSTGRES_URL (default: the pipeline's database)",
            )
    try:
        with dg.DagsterInstance.get() as instance:
            runs = instance.get_runs_count()
    except Exception as exc:
        return CheckResult(
            "dagster home",
            False,
            f"the Dagster instance in {home} does not load ({first_line(exc)})"
            " — check DAGSTER_POSTGRES_URL; after a Dagster upgrade run `dagster instance migrate`",
        )
    return CheckResult("dagster home", True, f"{home} is writable; the instance loads ({runs} runs recorded)")


def check_stripe(settings: Settings) -> CheckResult:
    """A key is set and Stripe answers a read of balance transactions at the pinned API version."""
    import stripe

    version = pinned_stripe_version(settings)
    where = settings.stripe_api_base or "api.stripe.com"
    if not settings.stripe_api_key:
        return CheckResult("stripe", False, "STRIPE_API_KEY is not set — set a secret (sk_) or restricted (rk_) key")
    if settings.stripe_api_base is None and settings.stripe_api_key == SANDBOX_STRIPE_KEY:
        return CheckResult(
            "stripe",
            False,
            "STRIPE_API_KEY is not set (the default key only works with the emulator)"
            " — set your secret or restricted key, or STRIPE_API_BASE for the emulator",
        )
    kwargs = {"base_addresses": {"api": settings.stripe_api_base}} if settings.stripe_api_base else {}
    client = stripe.StripeClient(
        settings.stripe_api_key,
        stripe_version=version,
        max_network_retries=0,
        http_client=stripe.new_default_http_client(timeout=TIMEOUT_S),
        **kwargs,
    )
    params = {"limit": 1}
    if settings.stripe_account:
        params["stripe_account"] = settings.stripe_account
    try:
        response = client.raw_request("get", "/v1/balance_transactions", **params)
    except stripe.StripeError as exc:
        return CheckResult("stripe", False, stripe_problem(where, exc))
    answered = response.headers.get("Stripe-Version") or response.headers.get("stripe-version")
    if answered and answered != version:
        return CheckResult(
            "stripe",
            False,
            f"{where} answered at API version {answered}, the pipeline reads at {version}"
            " — point STRIPE_API_BASE at a server that serves the pinned version",
        )
    mode = "live" if settings.stripe_api_key.startswith(("sk_live_", "rk_live_")) else "test"
    account = f", account {settings.stripe_account}" if settings.stripe_account else ""
    return CheckResult("stripe", True, f"{where} accepts the {mode} key at API version {version}{account}")


def check_sage(settings: Settings) -> CheckResult:
    """The target answers and accepts the credentials for a read: SAGEPRO_BASE_URL with SAGEPRO_USER/PASSWORD,
    or (SAGE_TARGET=intacct) INTACCT_BASE_URL with the OAuth client and user."""
    from stripe_sage_pipeline.sage.client import SageClient
    from stripe_sage_pipeline.sage.errors import SageError

    if getattr(settings, "sage_target", "sagepro") == "intacct":
        return _check_intacct(settings)
    url = settings.sagepro_base_url
    if not url:
        return CheckResult(
            "sage pro",
            False,
            "SAGEPRO_BASE_URL is not set — set it, e.g. "
            "http://127.0.0.1:8765/sagepro/v1/PRO01 (`stripe-sage sandbox sage` serves one)",
        )
    try:
        with SageClient(
            url, settings.sagepro_user, settings.sagepro_password, timeout_s=TIMEOUT_S, max_retries=0
        ) as client:
            page = client.get("/accounts", {"$top": 1})
    except SageError as exc:
        return CheckResult("sage pro", False, sage_problem(url, exc))
    except Exception as exc:  # a malformed URL or a non-JSON answer
        return CheckResult(
            "sage pro",
            False,
            f"{url} did not answer like Sage Pro ({first_line(exc)}) — check SAGEPRO_BASE_URL (…/sagepro/v1/<company>)",
        )
    if not isinstance(page, dict) or "value" not in page:
        return CheckResult("sage pro", False, f"{url} did not answer like Sage Pro — check SAGEPRO_BASE_URL")
    return CheckResult("sage pro", True, f"{url} accepts user {settings.sagepro_user!r}")


def _check_intacct(settings: Settings) -> CheckResult:
    from stripe_sage_pipeline.sage.errors import SageError
    from stripe_sage_pipeline.sage.factory import make_target_client

    try:
        target, _ = make_target_client(settings, max_retries=0, timeout_s=TIMEOUT_S)
    except ValueError as exc:  # INTACCT_LOCATIONS malformed, no user nor refresh token
        return CheckResult("sage intacct", False, f"{first_line(exc)} — fix the INTACCT_* settings")
    url = target.base_url
    try:
        accounts = target.accounts()
    except SageError as exc:
        return CheckResult("sage intacct", False, target_problem(settings, exc))
    except Exception as exc:
        return CheckResult(
            "sage intacct",
            False,
            f"{url} did not answer like Sage Intacct ({first_line(exc)}) — check INTACCT_BASE_URL (…/ia/api/v1)",
        )
    finally:
        target.close()
    return CheckResult(
        "sage intacct", True, f"{url} accepts client {settings.intacct_client_id!r} ({len(accounts)} GL accounts)"
    )


CHECKS: dict[str, Callable[[Settings], CheckResult]] = {
    "mapping": check_mapping,
    "database": check_database,
    "dagster": check_dagster_home,
    "stripe": check_stripe,
    "sage": check_sage,
}


def run_checks(
    settings: Settings | None = None,
    only: Iterable[str] | None = None,
    echo: Callable[[str], None] | None = None,
    stop_at_failure: bool = False,
) -> list[CheckResult]:
    """Run the checks named in `only` (default: all, in order); `echo` gets each line as it is known.

    `stop_at_failure`: return after the first failing check (a command that cannot go on anyway)."""
    s = settings or load_settings()
    results: list[CheckResult] = []
    for name in only or CHECKS:
        if stop_at_failure and results and not results[-1].ok:
            break
        try:
            result = CHECKS[name](s)
        except Exception as exc:  # a check must never take the doctor down
            result = CheckResult(name, False, f"the check itself failed ({first_line(exc)}) — run with --verbose")
        results.append(result)
        if echo:
            echo(result.line())
    return results


# -- what to do, shared with the command line's one-line errors ---------------------------------------


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, with its type when the message is empty."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def database_problem(where: str, exc: BaseException, settings: Settings | None = None) -> str:
    """One line: why the database did not answer, and the fix."""
    text = first_line(exc)
    low = text.lower()
    if "password authentication failed" in low or "role" in low and "does not exist" in low:
        fix = "fix the user and password in STRIPE_SAGE_DATABASE_URL"
    elif "database" in low and "does not exist" in low:
        fix = "create the database, or fix its name in STRIPE_SAGE_DATABASE_URL"
    elif settings is not None and settings.embedded:
        fix = "start it with `stripe-sage db start` (see `stripe-sage db status`)"
    else:
        fix = "start that server or fix STRIPE_SAGE_DATABASE_URL"
    return f"cannot reach the database at {where} ({text}) — {fix}"


def stripe_problem(where: str, exc: BaseException) -> str:
    """One line: why Stripe refused or did not answer, and the fix."""
    import stripe

    text = first_line(getattr(exc, "user_message", None) or exc)
    if isinstance(exc, stripe.APIConnectionError):
        found = re.search(r"\[Errno -?\d+\] [^\"')\]]+|timed out|Name or service not known", str(exc))
        return (
            f"cannot reach Stripe at {where} ({found.group(0) if found else 'network error'}) — check the "
            "network, or STRIPE_API_BASE"
        )
    if isinstance(exc, stripe.AuthenticationError):
        return f"{where} rejected STRIPE_API_KEY ({text}) — set a valid secret or restricted key"
    if isinstance(exc, stripe.PermissionError):
        return (
            f"{where}: the key may not read balance transactions ({text}) — give the restricted key read access"
            " to Balance, Charges, Customers, Disputes, Events, Invoices, Payouts and Refunds"
        )
    if isinstance(exc, stripe.RateLimitError):
        return f"{where} is rate limiting this key (429) — wait, or lower STRIPE_RATE_LIMIT_PER_S"
    if isinstance(exc, stripe.InvalidRequestError) and "version" in text.lower():
        return f"{where} refused the API version ({text}) — use a stripe SDK/setting with a version Stripe knows"
    status = getattr(exc, "http_status", None)
    return f"{where} answered {status or 'an error'} ({text}) — check STRIPE_API_BASE and STRIPE_ACCOUNT"


def sage_problem(url: str, exc: BaseException) -> str:
    """One line: why Sage Pro refused or did not answer, and the fix."""
    from stripe_sage_pipeline.sage.errors import CredentialsError, NotFound, TransientError

    if isinstance(exc, CredentialsError):
        if getattr(exc, "status", None) == 403:
            return f"{url} refused the operation for lack of a role — give SAGEPRO_USER the read and post roles"
        return f"{url} rejected SAGEPRO_USER/SAGEPRO_PASSWORD — set the credentials of a user with the post role"
    if isinstance(exc, NotFound):
        return f"{url} has no Sage Pro API there (404) — SAGEPRO_BASE_URL must end in /sagepro/v1/<company>"
    if isinstance(exc, TransientError):
        cause = "did not answer" if getattr(exc, "status", None) is None else f"answered {exc.status}"
        return f"Sage Pro at {url} {cause} — start it or fix SAGEPRO_BASE_URL"
    return (
        f"Sage Pro at {url} answered {getattr(exc, 'status', None) or 'an error'} ({first_line(exc)})"
        " — check SAGEPRO_BASE_URL"
    )


def target_problem(settings: Settings, exc: BaseException) -> str:
    """One line for an error of the configured target (Sage Pro or Sage Intacct)."""
    from stripe_sage_pipeline.sage.errors import CredentialsError, TransientError

    if getattr(settings, "sage_target", "sagepro") != "intacct":
        return sage_problem(settings.sagepro_base_url or "the Sage Pro URL", exc)
    url = getattr(settings, "intacct_base_url", None) or "the Sage Intacct emulator's default address"
    if isinstance(exc, CredentialsError):
        return (
            f"Sage Intacct at {url} refused the credentials — check INTACCT_CLIENT_ID, INTACCT_CLIENT_SECRET "
            "and INTACCT_USERNAME (or INTACCT_REFRESH_TOKEN)"
        )
    if isinstance(exc, TransientError):
        cause = "did not answer" if getattr(exc, "status", None) is None else f"answered {exc.status}"
        return f"Sage Intacct at {url} {cause} — start it or fix INTACCT_BASE_URL"
    return (
        f"Sage Intacct at {url} answered {getattr(exc, 'status', None) or 'an error'} ({first_line(exc)})"
        " — check INTACCT_BASE_URL"
    )
