"""The Dagster UI in headless Chromium: the lineage shows the pipeline's assets, a load asset its daily partitions.

Chromium comes from the machine's packages (`scripts/install-browser.sh`), driven by Playwright's
Python wheel (its own browser download is never used). Screenshots land in `test-artifacts/` at the
project root, also when a step fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from ui_helpers import DagsterUI, dagster_ui

from stripe_sage_pipeline.settings import PROJECT_ROOT

CHROMIUM = Path(os.environ.get("STRIPE_SAGE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
# The asset graph of each group names its assets by the last key component; neighbours in other
# groups appear as links. The graph renders only the nodes inside its initial viewport (and
# shortens long names), so each group is checked for names that show at 1600×1000.
EXPECTED = {
    "ingestion": ["balance_transactions", "payouts", "charges"],
    "finance": ["fct_journal_lines", "journal_entries"],
    "sage": ["customers", "invoices", "cash_receipts", "journal_entries", "dead_letters"],
}
LOAD_ASSET = "sage/journal_entries"
JULY_RANGE = "[2026-07-01...2026-07-31]"
TIMEOUT_MS = 60_000

ASSET_GROUPS_QUERY = "{ assetNodes { assetKey { path } groupName } }"


def _browser_or_skip():
    """Playwright's sync API, or a skip (a failure under CI) naming what is missing."""
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing: run scripts/install-browser.sh (Debian's chromium)"
    else:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            problem = "the playwright package is missing: pip install -e '.[dev]'"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run under CI: {problem}")
        pytest.skip(problem)
    return sync_playwright


@pytest.fixture
def page(tmp_path) -> Iterator:
    """A Chromium page (1600×1000) from the machine's package."""
    sync_playwright = _browser_or_skip()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            context.set_default_timeout(TIMEOUT_MS)
            yield context.new_page()
        finally:
            browser.close()


def _shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"ui-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _dismiss_popups(page) -> None:
    """The community sign-up dialog that a fresh browser profile gets covers the page: skip it."""
    skip = page.get_by_role("button", name="Skip", exact=True)
    if skip.count() and skip.first.is_visible():
        skip.first.click()


def _open(page, ui: DagsterUI, path: str) -> None:
    page.goto(f"{ui.url}{path}", wait_until="domcontentloaded")
    # The dialog appears once the app has booted; asset names render after the GraphQL answers.
    page.wait_for_load_state("networkidle", timeout=TIMEOUT_MS)
    _dismiss_popups(page)


def test_ui_shows_lineage_and_daily_partitions(pg_server, fresh_db, tmp_path, page):
    """Each group's lineage shows its assets; sage/journal_entries lists daily partitions, July 2026 selectable."""
    with dagster_ui(pg_server, tmp_path / "dagster", fresh_db, daemon=False) as ui:
        groups = {"/".join(n["assetKey"]["path"]): n["groupName"] for n in ui.graphql(ASSET_GROUPS_QUERY)["assetNodes"]}
        assert groups.get("stripe_staging/balance_transactions") == "ingestion", groups
        assert groups.get("finance/fct_journal_lines") == "finance", groups
        assert groups.get(LOAD_ASSET) == "sage", groups
        step = "start"
        try:
            for group, names in EXPECTED.items():
                step = f"lineage-{group}"
                _open(page, ui, f"/locations/{ui.location}/asset-groups/{group}")
                for name in names:
                    # Rendered, though the graph's initial zoom may leave a node outside the viewport.
                    page.get_by_text(name, exact=True).first.wait_for(state="attached")
                _shot(page, step)

            step = "partitions"
            _open(page, ui, f"/assets/{LOAD_ASSET}?view=partitions")
            page.get_by_text("Missing (", exact=False).first.wait_for(state="visible")
            # Finance narrows the partition range to the month, as before a month-end backfill.
            ranges = page.locator("input[value^='[']").first
            ranges.fill(JULY_RANGE)
            ranges.press("Enter")
            page.get_by_text("31 Partitions Selected", exact=True).wait_for(state="visible")
            search = page.get_by_placeholder("Filter by name")
            search.fill("2026-07-16")
            page.get_by_text("2026-07-16", exact=True).first.wait_for(state="visible")
            _dismiss_popups(page)
            _shot(page, step)
        except Exception:
            _shot(page, f"failed-{step}")
            raise
