"""The close pack as files: one self-contained HTML page with its PNG charts (matplotlib, Agg backend).

`write_close_pack` writes `<out_dir>/close_pack.html` and the charts beside it; the HTML embeds the
charts too, so the one file can be mailed or attached to a Dagster materialization on its own.
Chart coordinates are the only place an amount becomes a float; every number printed is exact.
"""

from __future__ import annotations

import base64
import io
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from stripe_sage_pipeline.money import exponent, to_decimal_str
from stripe_sage_pipeline.reporting.closepack import ClosePack

HERE = Path(__file__).resolve().parent


@dataclass
class Written:
    """Paths of a written close pack."""

    html: Path
    charts: list[Path]


def payouts_chart(pack: ClosePack) -> bytes:
    """PNG: per currency, Stripe's payouts and Sage's bank movement per day, and where they differ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_ccy = defaultdict(list)
    for r in pack.days:
        by_ccy[r.currency].append(r)
    currencies = sorted(by_ccy) or [pack.base_currency]
    banks = {t.currency: t.bank_account for t in pack.tie_out}
    ncols = 2 if len(currencies) > 2 else 1
    nrows = -(-len(currencies) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(12, 2.1 * nrows + 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(currencies):
            ax.set_visible(False)
            continue
        cur = currencies[i]
        rows = by_ccy.get(cur, [])
        scale = 10 ** exponent(cur)
        xs = [r.day.day for r in rows]
        ax.bar(
            [x - 0.2 for x in xs], [r.stripe / scale for r in rows], width=0.4, color="#2456d6", label="Stripe paid out"
        )
        ax.bar(
            [x + 0.2 for x in xs],
            [r.sage / scale for r in rows],
            width=0.4,
            color="#1b9e77",
            label=f"Sage bank account {banks.get(cur, '')}",
        )
        for r in rows:
            if r.difference:
                ax.annotate(
                    "x",
                    (r.day.day, max(r.stripe, r.sage) / scale),
                    ha="center",
                    va="bottom",
                    color="#c62a2a",
                    fontsize=11,
                    fontweight="bold",
                )
        ax.axhline(0, color="#999", linewidth=0.6)
        ax.set_title(cur.upper(), loc="left", fontsize=10, fontweight="bold")
        ax.set_xlim(0.3, pack.last.day + 0.7)
        ax.set_xticks([d for d in range(1, pack.last.day + 1) if d == 1 or d % 5 == 0])
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        if i == 0:
            ax.legend(loc="upper left", fontsize=8, frameon=False)
    fig.suptitle(f"Payouts against bank deposits per day of {pack.month} (major units)", fontsize=11, x=0.01, ha="left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=select_autoescape(["html"]))
    env.filters["money"] = lambda minor, cur: to_decimal_str(int(minor), cur)
    return env


def render_html(pack: ClosePack, charts: dict[str, bytes]) -> str:
    """The report page (charts embedded as data URIs)."""
    images = {name: "data:image/png;base64," + base64.b64encode(png).decode() for name, png in charts.items()}
    by_ccy = defaultdict(list)
    for r in pack.gl:
        by_ccy[r.currency].append(r)
    return (
        _env()
        .get_template("close_pack.html")
        .render(
            pack=pack,
            images=images,
            gl_by_currency=dict(sorted(by_ccy.items())),
            generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        )
    )


def write_close_pack(pack: ClosePack, out_dir: Path) -> Written:
    """Write close_pack.html and its chart PNGs into `out_dir` (created)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = {"payouts_vs_bank": payouts_chart(pack)}
    paths = []
    for name, png in charts.items():
        p = out_dir / f"{name}.png"
        p.write_bytes(png)
        paths.append(p)
    html = out_dir / "close_pack.html"
    html.write_text(render_html(pack, charts))
    return Written(html, paths)
