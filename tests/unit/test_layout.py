"""The package's import graph follows the data one way (README, Layout): read from the sources with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIPELINE, SANDBOXES = "stripe_sage_pipeline", "stripe_sage_sandboxes"

# A package may import only from packages of a lower layer. The stages follow the data (extract →
# transform → quality → load → reporting); the Sage clients sit under load; automation and the studio
# above the stages they read; the Dagster wiring, then the command line, on top.
LAYER = {
    "settings": 0,
    "money": 0,
    "runtime": 1,
    "sage": 2,
    "extract": 2,
    "transform": 3,
    "quality": 4,
    "load": 5,
    "reporting": 6,
    "automation": 6,
    "studio": 7,
    "defs": 8,
    "definitions": 9,
    "cli": 10,
}
# The sandboxes (local Stripe and Sage servers) share only the HTTP policy and money rules; only the
# command line starts them in process (the demo).
SANDBOXES_MAY_IMPORT = {"runtime.http_policy", "money"}


def _imports(package: str) -> list[tuple[str, str, list[str]]]:
    """(importing module, imported module, names) for every absolute import in the package's sources."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((module, node.module, [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                found += [(module, a.name, []) for a in node.names]
    return found


def _part(module: str) -> str:
    """The top-level package or module of the pipeline a module belongs to ('' for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_top_level_part_of_the_package_has_a_layer():
    parts = {p.stem for p in (ROOT / PIPELINE).iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert parts - {"__init__"} == set(LAYER)


def _upward(imports: list[tuple[str, str, list[str]]]) -> list[str]:
    """Imports into the same or a later layer, and of the sandboxes outside the command line."""
    wrong = []
    for src, target, _ in imports:
        if target.split(".")[0] == SANDBOXES and _part(src) != "cli":
            wrong.append(f"{src} imports {target}")
        if target.split(".")[0] != PIPELINE or _part(src) == _part(target) or not _part(target):
            continue
        if LAYER[_part(target)] >= LAYER[_part(src)]:
            wrong.append(f"{src} imports {target}")
    return wrong


def _private(imports: list[tuple[str, str, list[str]]]) -> list[str]:
    """Private names (`_x`) imported from another module of the project."""
    return [
        f"{src} imports {target}.{name}"
        for src, target, names in imports
        if target.split(".")[0] in (PIPELINE, SANDBOXES)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]


def test_no_stage_reaches_into_a_later_one():
    assert _upward(_imports(PIPELINE)) == []


def test_the_sandboxes_share_only_the_http_policy_and_money():
    used = {target.removeprefix(PIPELINE + ".") for _, target, _ in _imports(SANDBOXES) if target.startswith(PIPELINE)}
    assert used <= SANDBOXES_MAY_IMPORT


def test_no_module_imports_a_private_name_from_another():
    assert _private(_imports(PIPELINE) + _imports(SANDBOXES)) == []


def test_the_rules_name_what_they_forbid():
    extract = "stripe_sage_pipeline.extract.webhooks"
    assert _upward(
        [
            (extract, "stripe_sage_pipeline.load.plan", ["plan_journal_entry"]),  # a later stage
            (extract, "stripe_sage_pipeline.extract.tables", ["TABLES"]),  # its own stage
            (extract, "stripe_sage_pipeline.runtime.db", ["connect"]),  # a lower layer
            ("stripe_sage_pipeline.load.engine", "stripe_sage_sandboxes.sagepro", ["app"]),  # a sandbox
        ]
    ) == [
        f"{extract} imports stripe_sage_pipeline.load.plan",
        "stripe_sage_pipeline.load.engine imports stripe_sage_sandboxes.sagepro",
    ]
    assert _private([(extract, "stripe_sage_pipeline.extract.tables", ["_dumps", "TABLES", "__version__"])]) == [
        f"{extract} imports stripe_sage_pipeline.extract.tables._dumps"
    ]


PROJECT_VARIABLE = ("STRIPE_", "SAGE", "INTACCT_")


def _environment_reads(path: Path) -> list[str]:
    """Project variables (STRIPE_*, SAGE*, INTACCT_*) the module reads from os.environ / os.getenv itself."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        name = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            func = ast.unparse(node.func)
            if func in ("os.environ.get", "os.getenv", "environ.get") and isinstance(node.args[0], ast.Constant):
                name = node.args[0].value
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            if ast.unparse(node.value) in ("os.environ", "environ") and isinstance(node.slice, ast.Constant):
                name = node.slice.value
        if isinstance(name, str) and name.startswith(PROJECT_VARIABLE):
            found.append(name)
    return found


def test_every_project_variable_is_read_in_settings(tmp_path: Path):
    reads = {
        str(path.relative_to(ROOT)): names
        for path in sorted((ROOT / PIPELINE).rglob("*.py"))
        if path.name != "settings.py" and (names := _environment_reads(path))
    }
    assert reads == {}
    scratch = tmp_path / "scratch.py"
    scratch.write_text(
        'import os\nos.environ.get("STRIPE_X", "1")\nos.environ["SAGEPRO_USER"]\nos.getenv("HOME")\n'
        'os.environ["STRIPE_Y"] = "written, not read"\n'
    )
    assert _environment_reads(scratch) == ["STRIPE_X", "SAGEPRO_USER"]
