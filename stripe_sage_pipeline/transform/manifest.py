"""The dbt manifest the Dagster code location reads: re-parsed whenever the dbt project changed after it.

`dagster dev` prepares the manifest itself; `stripe-sage ui` and the daemon do not, so without this a
model edited after the first parse would keep its old columns, tests and lineage in the UI forever.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

# What a parse reads: the project file, profiles, models (SQL + YAML), macros, seeds, snapshots, tests.
_WATCHED = ("dbt_project.yml", "profiles.yml", "packages.yml", "selectors.yml")
_WATCHED_DIRS = ("models", "macros", "seeds", "snapshots", "tests", "analyses")


def project_files(project_dir: Path) -> Iterable[Path]:
    """Every file a `dbt parse` of the project depends on."""
    for name in _WATCHED:
        if (project_dir / name).is_file():
            yield project_dir / name
    for sub in _WATCHED_DIRS:
        if (project_dir / sub).is_dir():
            yield from (p for p in (project_dir / sub).rglob("*") if p.is_file())


def manifest_is_stale(project_dir: Path, manifest_path: Path) -> bool:
    """True when the manifest is missing or older than any file of the project."""
    if not manifest_path.exists():
        return True
    built = manifest_path.stat().st_mtime
    return any(p.stat().st_mtime > built for p in project_files(project_dir))


def parse_manifest(project_dir: Path) -> None:
    """`dbt parse` (no database connection needed); raises with dbt's reason when it fails."""
    from dbt.cli.main import dbtRunner

    from stripe_sage_pipeline.transform.dbt_patches import quicken_dbt

    quicken_dbt()
    # The manifest goes where the code location reads it, whatever DBT_TARGET_PATH says for builds.
    target = project_dir / "target"
    args = [
        "parse",
        "--project-dir",
        str(project_dir),
        "--profiles-dir",
        str(project_dir),
        "--target-path",
        str(target),
    ]
    res = dbtRunner().invoke([*args, "--quiet"])
    if not res.success:
        raise RuntimeError(f"dbt parse failed: {res.exception}")


def ensure_fresh_manifest(project_dir: Path, manifest_path: Path) -> bool:
    """Parse the project when its manifest is missing or stale; True when it parsed."""
    if not manifest_is_stale(project_dir, manifest_path):
        return False
    parse_manifest(project_dir)
    return True
