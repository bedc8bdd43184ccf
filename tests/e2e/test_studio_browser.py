"""Finance maps a category out of suspense in the browser, and the next transform + load corrects Sage.

Generated Stripe data (disputes included) is extracted from the emulator, built with a mapping that
lacks `categories.dispute` (detail posting, so each dispute is its own entry), and posted to a Sage
sandbox. Then, in headless Chromium (Debian's package, as in test_ui_browser.py), one page load of
the studio: the dispute sits in suspense first, mapping it to 4060 moves the preview by exactly its
amount, and Save rewrites mapping.yaml (comments kept) and starts `transform_job` in a real Dagster
webserver (no daemon: the run stays queued, its tags name the audit row). The test then runs the
transform and the load through the same entry points as the other tests: Sage ends with each old dispute entry reversed and its corrected version posted,
and its GL movement for the month equal to the preview's draft column. A second page load renders
the month's close pack. Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import difflib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from load_helpers import client_for, post_everything, sage_sandbox
from ui_helpers import dagster_ui

from stripe_sage_pipeline.extract import extract
from stripe_sage_pipeline.extract.client import StripeReader
from stripe_sage_pipeline.extract.staging import ensure_schema
from stripe_sage_pipeline.extract.tables import TABLES
from stripe_sage_pipeline.money import from_decimal_str
from stripe_sage_pipeline.reporting import build_close_pack
from stripe_sage_pipeline.reporting.closepack import gl_movement
from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_pipeline.runtime.embedded_pg import free_port
from stripe_sage_pipeline.settings import PROJECT_ROOT
from stripe_sage_pipeline.studio.app import StudioConfig, create_app
from stripe_sage_pipeline.transform import build as transform
from stripe_sage_pipeline.transform.mapping import load_mapping
from stripe_sage_sandboxes.stripe_emulator import EmulatorConfig, EmulatorServer, EmulatorState, generate
from tests.extract_helpers import window_of

CHROMIUM = Path(os.environ.get("STRIPE_SAGE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
END = 1783900800  # 2026-07-13 00:00 UTC: eight generated days in July
MONTH = "2026-07"
TIMEOUT_MS = 60_000


def _sync_playwright():
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
def page() -> Iterator:
    """A Chromium page (1500×1000) from the machine's package."""
    sync_playwright = _sync_playwright()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1500, "height": 1000})
            context.set_default_timeout(TIMEOUT_MS)
            yield context.new_page()
        finally:
            browser.close()


def _shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"studio-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


class _Server:
    """The studio under uvicorn on a background thread (127.0.0.1, a free port)."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started, "the studio did not start"
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def generated(pg_server, tmp_path, monkeypatch) -> dict:
    """Eight generated days extracted, built (detail posting, disputes unmapped) and posted to a Sage sandbox."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(f"host=127.0.0.1 port={pg_server.port} user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'create database "{name}"')
    url = pg_server.url(name)
    monkeypatch.setenv("STRIPE_SAGE_DATABASE_URL", url)
    text = (PROJECT_ROOT / "mapping.yaml").read_text()
    # Disputes to suspense: their category unmapped, and no type fallback to catch them (a dispute's
    # balance transaction has type `adjustment`, which the default mapping sends to other_adjustment).
    text = (
        text.replace('  dispute: "4060"\n', "")
        .replace("  adjustment: other_adjustment\n", "")
        .replace("posting_mode: payout_summary", "posting_mode: detail")
    )
    mapping_file = tmp_path / "mapping.yaml"
    mapping_file.write_text(text)
    monkeypatch.setenv("STRIPE_SAGE_MAPPING", str(mapping_file))

    state = EmulatorState(EmulatorConfig(seed=5))
    generate(state, seed=5, days=8, volume=0.4, end=END)
    srv = EmulatorServer(state, port=0).start()
    try:
        reader = StripeReader("sk_test_emulator", srv.url, rate_limit_per_s=None)
        with psycopg.connect(libpq_url(url)) as conn:
            ensure_schema(conn)
            conn.commit()
        start, end = window_of(state.summary())
        for table in TABLES:
            extract.extract_window(reader, libpq_url(url), table, start, end)
    finally:
        srv.stop()
    transform.dbt_build(url=url)
    return {"url": url, "mapping_file": mapping_file, "text": text}


def _disputes(url: str) -> dict[str, int]:
    """Σ amount of the month's dispute balance transactions per currency, straight from staging."""
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute(
            "select currency, sum(amount)::bigint from stripe_staging.balance_transactions"
            " where reporting_category = 'dispute' and to_char(created at time zone 'UTC',"
            " 'YYYY-MM') = %s group by 1",
            (MONTH,),
        ).fetchall()
    return dict(rows)


RUN_QUERY = "query($id: ID!) { runOrError(runId: $id) { ... on Run { jobName status tags { key value } } } }"


def test_map_suspense_in_the_browser_then_transform_and_load_correct_sage(generated, pg_server, page, tmp_path):
    url, mapping_file = generated["url"], generated["mapping_file"]
    disputes = _disputes(url)
    assert disputes and all(v < 0 for v in disputes.values()), disputes

    with (
        sage_sandbox(tmp_path / "sage") as sage,
        dagster_ui(pg_server, tmp_path / "dagster", url, sage.base_url, daemon=False) as ui,
    ):
        client, _ = client_for(sage)
        post_everything(url, client, load_mapping())
        config = StudioConfig(
            database_url=url,
            mapping_file=mapping_file,
            sage_base_url=sage.base_url,
            sage_user="pipeline",
            sage_password="pipeline-secret",
            dagster_url=ui.url,
        )
        step = "open"
        with _Server(create_app(config)) as studio_url:
            try:
                page.goto(studio_url + "/", wait_until="domcontentloaded")
                first = page.locator("#inventory tbody tr").first
                assert first.get_attribute("data-value") == "dispute" and "suspense" in first.get_attribute("class")
                page.locator("#problems.ok").wait_for()

                step = "map"
                page.locator("select[data-map-category=dispute]").first.select_option("4060")
                page.locator("#problems.ok").wait_for()
                page.locator("#save:not([disabled])").wait_for()
                page.click("#preview-btn")
                page.locator("#preview-table").wait_for()
                preview = {}
                for row in page.locator("#preview-table tbody tr").all():
                    cur, acct = row.get_attribute("data-currency"), row.get_attribute("data-account")
                    preview[(cur, acct)] = (
                        int(row.get_attribute("data-difference")),
                        row.locator("td").nth(4).inner_text(),
                    )
                for cur, amount in disputes.items():
                    # The counter leg of a dispute is −amount: it leaves suspense and lands on Chargebacks.
                    assert preview[(cur, "4060")][0] == -amount and preview[(cur, "9999")][0] == amount, cur
                assert {k for k, v in preview.items() if v[0]} == {(c, a) for c in disputes for a in ("4060", "9999")}
                assert (
                    page.locator("#changes-table tbody tr[data-action=reverse_and_repost]").count()
                    == page.locator("#changes-table tbody tr").count()
                    > 0
                )
                _shot(page, "preview")

                step = "save"
                page.fill("#saved-by", "e2e controller")
                page.click("#save")
                page.locator("#saved").wait_for()
                started = page.locator("#transform-result").inner_text()
                assert started.startswith("transform_job started in Dagster: run "), started
                audit_id = page.locator("#history .entry").first.get_attribute("data-audit-id")
                _shot(page, "saved")
            except Exception:
                _shot(page, f"failed-{step}")
                raise

        after = mapping_file.read_text()
        # The save changed exactly one line, in `categories`: every comment and every other key kept.
        diff = list(difflib.ndiff(generated["text"].splitlines(), after.splitlines()))
        assert [d for d in diff if d[:2] in ("+ ", "- ")] == ['+   dispute: "4060"']
        before_lines = after.splitlines()[: after.splitlines().index('  dispute: "4060"')]
        assert [ln for ln in before_lines if not ln.startswith((" ", "#")) and ln][-1] == "categories:"

        run = ui.graphql(RUN_QUERY, {"id": started.rsplit(" ", 1)[1]})["runOrError"]
        assert run["jobName"] == "transform_job"
        assert {"key": "studio/audit_id", "value": audit_id} in run["tags"]
        # The transform and the load, through the entry points Dagster's assets call (no daemon here).
        transform.dbt_build(url=url)
        post_everything(url, client, load_mapping())
        with psycopg.connect(libpq_url(url)) as conn:
            versions = conn.execute(
                "select l.external_ref, array_agg(l.status order by l.version) from sage_sync.posting_ledger as l"
                " join stripe_staging.balance_transactions as b on b.id = l.external_ref"
                " where l.resource = 'journal-entries' and b.reporting_category = 'dispute' group by 1"
            ).fetchall()
        assert versions and all(v == ["reversed", "posted"] for _, v in versions), versions
        for ref, _ in versions:
            (v2,) = client.list_all("/journal-entries", {"external_ref": f"{ref}~v2"})
            assert {ln["glacnt"] for ln in v2["lines"]} >= {"4060"} and "9999" not in {
                ln["glacnt"] for ln in v2["lines"]
            }
        postings = list(client.list_all("/gl-postings", {"from": "2026-07-01", "to": "2026-07-31"}))
        sage_mv = {k: v for k, v in gl_movement(postings).items() if v}
        draft_mv = {k: from_decimal_str(v[1], k[0]) for k, v in preview.items() if Decimal(v[1]) != 0}
        assert sage_mv == draft_mv

        pack, written = build_close_pack(url, client, MONTH, tmp_path / "pack")
        client.close()
    assert pack.suspense == [] and all(t.ok for t in pack.tie_out)
    page.goto(written.html.as_uri(), wait_until="load")
    assert "Tie-out" in page.locator("#tie-out").inner_text()
    _shot(page, "close-pack")
