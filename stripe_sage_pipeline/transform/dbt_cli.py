"""`stripe-sage-dbt`: dbt's own command line, except that `--version` answers at once and the commands run warm.

Before every `dbt build` it starts, dagster-dbt runs `<dbt_executable> --version` to learn which dbt it
drives. dbt's `--version` imports the whole CLI and asks PyPI for the latest release: about 3 s of a
webhook's way to Sage, on every run. This entry point (the `dbt_executable` of the Dagster resource)
prints the installed dbt-core version from the package metadata instead.

Every other command is handed to the warm dbt server (`dbt_server.py`), which runs it in a child
that has dbt imported already; where none is listening, the command runs here, unchanged, and a server
is started for the next one. `STRIPE_SAGE_DBT_SERVER=0` keeps every command in its own process.
"""

from __future__ import annotations

import sys
from importlib.metadata import version


def version_text() -> str:
    """What `dbt --version` prints first (the line dagster-dbt reads the version from)."""
    return f"Core:\n  - installed: {version('dbt-core')}"


def preload_dbt() -> None:
    """Import dbt's command line with the project's patch applied: what every command needs first."""
    import dbt.cli.main  # noqa: F401

    from stripe_sage_pipeline.transform.dbt_patches import quicken_dbt

    quicken_dbt()


def run_dbt(argv: list[str]) -> int:
    """Run `dbt <argv>` in this process; its exit code."""
    preload_dbt()
    from dbt.cli.main import cli

    sys.argv = ["dbt", *argv]
    try:
        cli.main(args=argv, prog_name="dbt")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def main() -> None:
    """Answer `--version`; run anything else through dbt's own command line, warm when a server listens."""
    argv = sys.argv[1:]
    if argv == ["--version"]:
        print(version_text())
        return
    from stripe_sage_pipeline.settings import dbt_server_enabled

    if dbt_server_enabled():
        from stripe_sage_pipeline.transform import dbt_server

        code = dbt_server.request(argv)
        if code is not None:
            sys.exit(code)
        dbt_server.start_in_background()
    sys.exit(run_dbt(argv))
