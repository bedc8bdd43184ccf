"""The month-end close pack: rules (closepack.py) and rendering (render.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from stripe_sage_pipeline.reporting.closepack import ClosePack, collect, month_bounds, read_sage_postings
from stripe_sage_pipeline.reporting.render import Written, write_close_pack
from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_pipeline.settings import load_settings
from stripe_sage_pipeline.transform.mapping import Mapping, load_mapping


def default_out_dir(month: str) -> Path:
    """Where a month's close pack is written: <data dir>/close-packs/<YYYY-MM>/."""
    return load_settings().data_dir / "close-packs" / month


def build_close_pack(
    url: str, sage_client: Any, month: str, out_dir: Path | None = None, mapping: Mapping | None = None
) -> tuple[ClosePack, Written]:
    """Collect the month (database + Sage's GL read back) and write the HTML report with its charts."""
    mapping = mapping or load_mapping()
    first, last = month_bounds(month)
    postings, error = read_sage_postings(sage_client, first, last) if sage_client is not None else (None, "no client")
    names: dict[str, str] = {}
    if postings is not None:
        try:
            names = {a["glacnt"]: a.get("description", "") for a in sage_client.list_all("/accounts")}
        except Exception:
            names = {}
    with psycopg.connect(libpq_url(url)) as conn:
        pack = collect(conn, postings, mapping, month, names, error)
    return pack, write_close_pack(pack, out_dir or default_out_dir(month))


__all__ = ["ClosePack", "Written", "build_close_pack", "collect", "default_out_dir", "write_close_pack"]
