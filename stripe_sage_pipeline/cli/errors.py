"""One-line errors for the command line: the cause and the fix, the traceback only with `--verbose`.

`explain` walks an exception and its causes for a failure it knows (the database, Stripe, Sage Pro,
the mapping, the embedded server, a taken port) and words it the way `stripe-sage doctor` does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator


class CommandError(Exception):
    """A failure the command already put into words (cause — fix); printed as is."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line naming the flag and where the help is."""

    def error(self, message: str) -> None:  # noqa: D102 - argparse's hook
        sys.stderr.write(f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def explain(exc: BaseException) -> str:
    """One line naming the cause of `exc` and what to do about it."""
    import psycopg
    import stripe

    from stripe_sage_pipeline.cli.checks import database_problem, first_line, stripe_problem, target_problem
    from stripe_sage_pipeline.runtime.db import redact_url
    from stripe_sage_pipeline.runtime.embedded_pg import EmbeddedPostgresError
    from stripe_sage_pipeline.sage.errors import SageError
    from stripe_sage_pipeline.settings import load_settings
    from stripe_sage_pipeline.transform.mapping import MappingError

    settings = load_settings()
    for e in _chain(exc):
        if isinstance(e, CommandError | EmbeddedPostgresError):
            return str(e)
        if isinstance(e, MappingError):
            key, value, msg = e.problems[0] if e.problems else ("?", "", str(e))
            more = f" (and {len(e.problems) - 1} more)" if len(e.problems) > 1 else ""
            return (
                f"invalid mapping {e.source}: {key}: {msg} (got {value!r}){more} — fix the file; "
                "`stripe-sage doctor` re-checks it"
            )
        if isinstance(e, psycopg.OperationalError):
            from stripe_sage_pipeline.runtime.db import libpq_url

            where = (
                redact_url(libpq_url(settings.database_url))
                if settings.database_url
                else f"127.0.0.1:{settings.embedded_pg_port} (embedded)"
            )
            return database_problem(where, e, settings)
        if isinstance(e, stripe.StripeError):
            return stripe_problem(settings.stripe_api_base or "api.stripe.com", e)
        if isinstance(e, SageError):
            return target_problem(settings, e)
        if isinstance(e, OSError) and e.errno == 98:  # EADDRINUSE
            return f"the address is already in use ({first_line(e)}) — stop what listens there or pass another --port"
    first = first_line(exc)
    return f"{type(exc).__name__}: {first} — run again with --verbose for the traceback"
