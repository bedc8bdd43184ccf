"""`stripe-sage-dbt`: dbt's own command line, except that `--version` answers at once.

Before every `dbt build` it starts, dagster-dbt runs `<dbt_executable> --version` to learn which dbt it
drives. dbt's `--version` imports the whole CLI and asks PyPI for the latest release: about 3 s of a
webhook's way to Sage, on every run. This entry point (the `dbt_executable` of the Dagster resource)
prints the installed dbt-core version from the package metadata instead, and hands every other
command to dbt unchanged.
"""

from __future__ import annotations

import sys
from importlib.metadata import version


def version_text() -> str:
    """What `dbt --version` prints first (the line dagster-dbt reads the version from)."""
    return f"Core:\n  - installed: {version('dbt-core')}"


def main() -> None:
    """Answer `--version`; run anything else through dbt's own command line."""
    if sys.argv[1:] == ["--version"]:
        print(version_text())
        return
    from dbt.cli.main import cli

    from stripe_sage_pipeline.transform.dbt_patches import quicken_behavior_flags

    quicken_behavior_flags()
    sys.argv[0] = "dbt"
    sys.exit(cli())
