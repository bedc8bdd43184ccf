"""The mapping studio: a Starlette app over mapping.yaml, the marts and Sage's chart of accounts.

One server-rendered page (Jinja2) and a small script; the page talks to a JSON API:

* `GET /api/inventory?month=` -- what staging holds for the month, where each value posts today;
* `POST /api/validate` -- the pipeline's own validator (`parse_mapping`) plus the chart of the
  configured target, Sage Pro or Sage Intacct (an account that is missing, inactive or a header
  cannot be used);
* `POST /api/preview` -- the month's GL movement under the draft next to today's (`rules.preview`);
* `POST /api/save` -- mapping.yaml rewritten keeping its comments and order, an audit row with the
  diff, and optionally `transform_job` started in Dagster.

Security: bound to loopback unless a token is configured (`server.serve` refuses otherwise); with
no token, a request from another address or with another Host header is refused (DNS rebinding).
Every POST needs the CSRF token of the page (double-submit cookie, SameSite=Strict) and a same-origin
Origin header when the browser sends one. Secrets never reach the page: Sage is read server-side.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import yaml
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from stripe_sage_pipeline.money import to_decimal_str
from stripe_sage_pipeline.reporting.closepack import month_bounds
from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_pipeline.settings import (
    SANDBOX_INTACCT_CLIENT_ID,
    SANDBOX_INTACCT_CLIENT_SECRET,
    SANDBOX_INTACCT_USERNAME,
)
from stripe_sage_pipeline.studio import audit, data, rules
from stripe_sage_pipeline.studio.launch import launch_transform
from stripe_sage_pipeline.studio.yamlfile import apply_draft, load_document, plain, unified_diff
from stripe_sage_pipeline.transform.mapping import (
    BT_TYPES,
    BUILT_IN_CATEGORIES,
    FEE_TYPES,
    REPORTING_CATEGORIES,
    Mapping,
    MappingError,
    parse_mapping,
)

HERE = Path(__file__).resolve().parent
CSRF_COOKIE = "studio_csrf"
TOKEN_COOKIE = "studio_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CHART_MAX_AGE_S = 15.0  # validation runs on every edit: Sage's chart is re-read at most this often
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


@dataclass
class StudioConfig:
    """Where the studio reads and writes; the Sage credentials stay on the server.

    `sage_target` picks the system whose chart of accounts is read (`SAGE_TARGET`, as the load):
    `sagepro` (sage_base_url / sage_user / sage_password) or `intacct` (the intacct_* fields).
    """

    database_url: str
    mapping_file: Path
    sage_base_url: str | None
    sage_user: str
    sage_password: str
    dagster_url: str | None = None
    token: str | None = None  # required when bound off loopback
    sage_target: str = "sagepro"
    intacct_base_url: str | None = None  # None: the emulator's default address
    intacct_client_id: str = SANDBOX_INTACCT_CLIENT_ID
    intacct_client_secret: str = SANDBOX_INTACCT_CLIENT_SECRET
    intacct_username: str = SANDBOX_INTACCT_USERNAME
    intacct_refresh_token: str | None = None
    intacct_locations: str | None = None

    def __repr__(self) -> str:
        return (
            f"StudioConfig(mapping_file={str(self.mapping_file)!r}, sage_target={self.sage_target!r},"
            f" sage_base_url={self.sage_base_url!r}, intacct_base_url={self.intacct_base_url!r},"
            f" dagster_url={self.dagster_url!r}, token={'***' if self.token else None})"
        )

    def target_settings(self) -> SimpleNamespace:
        """The settings `sage.factory.make_target_client` reads, for the configured target."""
        return SimpleNamespace(
            sage_target=self.sage_target,
            sagepro_base_url=self.sage_base_url,
            sagepro_user=self.sage_user,
            sagepro_password=self.sage_password,
            intacct_base_url=self.intacct_base_url,
            intacct_client_id=self.intacct_client_id,
            intacct_client_secret=self.intacct_client_secret,
            intacct_username=self.intacct_username,
            intacct_refresh_token=self.intacct_refresh_token,
            intacct_locations=self.intacct_locations,
        )


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if not host:
        return False
    h = host.strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The host part of a Host header ('127.0.0.1:55413' -> '127.0.0.1', '[::1]:80' -> '[::1]')."""
    if host_header.startswith("["):
        return host_header[: host_header.find("]") + 1]
    return host_header.rsplit(":", 1)[0]


# -- accounts and validation ---------------------------------------------------------------------


def used_accounts(m: Mapping) -> list[tuple[str, str]]:
    """(key path, account code) of every account the mapping posts to."""
    out = [(f"accounts.{k}", v) for k, v in m.accounts.model_dump().items()]
    for ccy, pair in m.currencies.items():
        out += [(f"currencies.{ccy}.clearing", pair.clearing), (f"currencies.{ccy}.bank", pair.bank)]
    out += [(f"categories.{k}", v) for k, v in m.categories.items()]
    out.append(("fees.default", m.fees.default))
    out += [(f"fees.by_category.{k}", v) for k, v in m.fees.by_category.items()]
    out += [(f"fees.by_fee_type.{k}", v) for k, v in m.fees.by_fee_type.items()]
    return out


def sage_problems(m: Mapping, chart: dict[str, dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Accounts the mapping uses that Sage cannot take: missing, inactive or a header account."""
    if chart is None:
        return [
            {
                "key": "<sage>",
                "value": None,
                "message": "Sage's chart of accounts could not be read: accounts cannot be checked, saving is off",
            }
        ]
    out = []
    for key, code in used_accounts(m):
        acct = chart.get(code)
        if acct is None:
            out.append({"key": key, "value": code, "message": "account does not exist in Sage"})
        elif not acct.get("active", True):
            out.append({"key": key, "value": code, "message": "account is inactive in Sage"})
        elif not acct.get("postable", True):
            out.append({"key": key, "value": code, "message": "account is a header account in Sage (not postable)"})
    return out


def mode_problems(m: Mapping) -> list[dict[str, Any]]:
    """Combinations the load refuses at posting time (load.post), caught before they are saved."""
    if m.revenue_mode == "invoice_driven" and m.posting_mode != "detail":
        return [
            {
                "key": "revenue_mode",
                "value": m.revenue_mode,
                "message": "invoice_driven needs posting_mode detail (a payout summary already books revenue)",
            }
        ]
    return []


def validate_draft(draft: Any, chart: dict[str, dict[str, Any]] | None) -> tuple[Mapping | None, list[dict[str, Any]]]:
    """The pipeline's validator on the draft, then the load's mode rule and Sage's chart; (mapping or None, problems)."""
    try:
        m = parse_mapping(draft, "draft")
    except MappingError as err:
        return None, [{"key": k, "value": _jsonable(v), "message": msg} for k, v, msg in err.problems]
    return m, mode_problems(m) + sage_problems(m, chart)


def _jsonable(v: Any) -> Any:
    try:
        json.dumps(v)
        return v
    except TypeError:
        return repr(v)


# -- formatting ----------------------------------------------------------------------------------


def _money(minor: int, currency: str) -> str:
    return to_decimal_str(int(minor), currency)


def inventory_json(m: Mapping, groups: list[dict], fees: list[dict]) -> list[dict[str, Any]]:
    """Inventory rows for the page, amounts as exact decimal strings."""
    out = []
    for r in rules.inventory(m, groups, fees):
        d = asdict(r)
        d["amount_text"] = _money(r.amount, r.currency)
        d["account_name"] = m.chart_of_accounts.get(r.account, "")
        d["mappable"] = (
            r.kind == "reporting_category" and r.value in REPORTING_CATEGORIES and r.value not in BUILT_IN_CATEGORIES
        )
        out.append(d)
    return out


def preview_json(p: rules.Preview, current: Mapping, draft: Mapping, chart: dict[str, dict] | None) -> dict[str, Any]:
    """The preview for the page: movement rows, changed entries, the rules-vs-marts check."""

    def name(code: str) -> str:
        return (
            draft.chart_of_accounts.get(code)
            or current.chart_of_accounts.get(code)
            or ((chart or {}).get(code) or {}).get("description", "")
        )

    def lines(legs: dict[str, int], cur: str) -> list[dict[str, str]]:
        return [{"account": a, "net": _money(v, cur)} for a, v in sorted(legs.items())]

    actions = {}
    for c in p.changes:
        actions[c.action] = actions.get(c.action, 0) + 1
    return {
        "first": p.first.isoformat(),
        "last": p.last.isoformat(),
        "current_mode": p.current_mode,
        "draft_mode": p.draft_mode,
        "rows": [
            {
                "currency": r.currency,
                "account": r.account,
                "name": name(r.account),
                "current": _money(r.current, r.currency),
                "draft": _money(r.draft, r.currency),
                "difference": _money(r.difference, r.currency),
                "difference_minor": r.difference,
                "changed": r.difference != 0,
            }
            for r in p.rows
        ],
        "changes": [
            {
                "external_ref": c.external_ref,
                "entry_id": c.entry_id,
                "posting_date": c.posting_date.isoformat(),
                "currency": c.currency,
                "action": c.action,
                "ledger_status": c.ledger_status,
                "current": lines(c.current, c.currency),
                "draft": lines(c.draft, c.currency),
            }
            for c in p.changes[:500]
        ],
        "changes_total": len(p.changes),
        "actions": actions,
        "model_gap": [
            {"currency": c, "account": a, "amount": _money(v, c)} for (c, a), v in sorted(p.model_gap.items())
        ],
        "unmapped_current": p.unmapped_current,
        "unmapped_draft": p.unmapped_draft,
        "notes": [
            "revenue_mode invoice_driven: charges post as Sage invoices and cash receipts; the preview shows"
            " them as the journal entries they replace (the same accounts, receivable aside)"
        ]
        if draft.revenue_mode == "invoice_driven"
        else [],
    }


# -- the app -------------------------------------------------------------------------------------


class Studio:
    """State and handlers of one studio server."""

    def __init__(self, config: StudioConfig) -> None:
        self.config = config
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self._save_lock = threading.Lock()
        self._chart: tuple[float, dict[str, dict[str, Any]] | None] = (0.0, None)

    # reading
    def conn(self) -> psycopg.Connection:
        return psycopg.connect(libpq_url(self.config.database_url), autocommit=True)

    def read_file(self) -> str:
        return self.config.mapping_file.read_text()

    def current(self) -> tuple[str, Mapping]:
        text = self.read_file()
        return text, parse_mapping(yaml.safe_load(text), str(self.config.mapping_file))

    def sage_chart(self, max_age_s: float = CHART_MAX_AGE_S) -> dict[str, dict[str, Any]] | None:
        """Sage's chart of accounts, read live (at most `max_age_s` old; None when Sage cannot be reached)."""
        at, chart = self._chart
        if chart is not None and time.monotonic() - at < max_age_s:
            return chart
        chart = self._read_chart()
        self._chart = (time.monotonic(), chart)
        return chart

    def _read_chart(self) -> dict[str, dict[str, Any]] | None:
        """The configured target's chart (`Target.accounts()`) by account code; None when it cannot be read."""
        from stripe_sage_pipeline.sage.factory import make_target_client
        from stripe_sage_pipeline.sage.target import as_target

        try:
            client, _ = make_target_client(
                self.config.target_settings(), max_retries=1, timeout_s=10, backoff_base_s=0.1, backoff_cap_s=1
            )
        except Exception:
            return None
        target = as_target(client)
        try:
            return {a["glacnt"]: a for a in target.accounts()}
        except Exception:
            return None
        finally:
            target.close()

    def inventory(self, m: Mapping, month: str) -> list[dict[str, Any]]:
        first, last = month_bounds(month)
        with self.conn() as conn:
            if not data.marts_ready(conn):
                return []
            groups, fees = data.staged_groups(conn, first, last)
        return inventory_json(m, groups, fees)

    # handlers
    def _page(self, request: Request, body: dict[str, Any]) -> Response:
        text, m = self.current()
        with self.conn() as conn:
            months = data.months_with_activity(conn)
            history = [_audit_json(r) for r in audit.history(conn, 10)]
        month = request.query_params.get("month") or (months[0] if months else "")
        chart = self.sage_chart(max_age_s=0)  # a page load always reads the chart afresh
        state = {
            "mapping": plain(load_document(text)),
            "file": str(self.config.mapping_file),
            "file_hash": _hash(text),
            "fingerprint": m.fingerprint(),
            "month": month,
            "months": months,
            "inventory": self.inventory(m, month) if month else [],
            "sage_accounts": sorted((chart or {}).values(), key=lambda a: a["glacnt"]),
            "sage_ok": chart is not None,
            "problems": sage_problems(m, chart),
            "options": {
                "reporting_categories": sorted(REPORTING_CATEGORIES - BUILT_IN_CATEGORIES),
                "built_in_categories": sorted(BUILT_IN_CATEGORIES),
                "bt_types": sorted(BT_TYPES),
                "fee_types": sorted(FEE_TYPES),
                "posting_mode": ["payout_summary", "detail"],
                "revenue_mode": ["direct", "invoice_driven"],
                "activity_date": ["created", "available_on"],
                "tax_source": ["invoice_then_metadata", "metadata", "none"],
                "sage_owns": ["name", "email", "phone", "address"],
            },
            "history": history,
            "dagster_url": self.config.dagster_url,
            "user": _os_user(),
        }
        csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
        resp = self.templates.TemplateResponse(request, "studio.html", {"state": state, "csrf": csrf})
        resp.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict", path="/")
        return resp

    def _api_inventory(self, request: Request, body: dict[str, Any]) -> Response:
        _, m = self.current()
        month = request.query_params.get("month", "")
        try:
            return JSONResponse({"month": month, "inventory": self.inventory(m, month)})
        except ValueError as err:
            return JSONResponse({"error": str(err)}, status_code=400)

    def _api_validate(self, request: Request, body: dict[str, Any]) -> Response:
        m, problems = validate_draft(body.get("draft"), self.sage_chart())
        return JSONResponse({"ok": not problems, "problems": problems, "fingerprint": m.fingerprint() if m else None})

    def _api_preview(self, request: Request, body: dict[str, Any]) -> Response:
        chart = self.sage_chart()
        draft, problems = validate_draft(body.get("draft"), chart)
        if draft is None:
            return JSONResponse({"ok": False, "problems": problems}, status_code=422)
        try:
            month = str(body.get("month") or "")
            month_bounds(month)
        except ValueError as err:
            return JSONResponse(
                {"ok": False, "problems": [{"key": "month", "value": body.get("month"), "message": str(err)}]},
                status_code=422,
            )
        _, current = self.current()
        with self.conn() as conn:
            if not data.marts_ready(conn):
                return JSONResponse(
                    {
                        "ok": False,
                        "problems": [
                            {
                                "key": "<marts>",
                                "value": None,
                                "message": "the finance marts are not built yet: run the transform once",
                            }
                        ],
                    },
                    status_code=409,
                )
            month_data = data.month_data(conn, month)
        p = rules.preview(current, draft, month_data)
        return JSONResponse({"ok": True, "problems": problems, "preview": preview_json(p, current, draft, chart)})

    def _api_save(self, request: Request, body: dict[str, Any]) -> Response:
        with self._save_lock:  # one save at a time: read, compare, write, audit
            return self._save(request, body)

    def _save(self, request: Request, body: dict[str, Any]) -> Response:
        saved_by = str(body.get("saved_by") or "").strip()[:100]
        if not saved_by:
            return JSONResponse(
                {
                    "ok": False,
                    "problems": [
                        {
                            "key": "saved_by",
                            "value": None,
                            "message": "say who is saving (it goes into the audit trail)",
                        }
                    ],
                },
                status_code=422,
            )
        chart = self.sage_chart()
        draft, problems = validate_draft(body.get("draft"), chart)
        if draft is None or problems:
            return JSONResponse({"ok": False, "problems": problems}, status_code=422)
        old_text, old = self.current()
        if body.get("file_hash") and body["file_hash"] != _hash(old_text):
            return JSONResponse(
                {
                    "ok": False,
                    "problems": [
                        {
                            "key": "<file>",
                            "value": None,
                            "message": "mapping.yaml changed on disk since this page was opened: reload and redo the edit",
                        }
                    ],
                },
                status_code=409,
            )
        new_text = apply_draft(old_text, body["draft"])
        # The file as written must read back as the validated draft (the round trip lost nothing).
        if parse_mapping(yaml.safe_load(new_text), "written").model_dump() != draft.model_dump():
            return JSONResponse(
                {
                    "ok": False,
                    "problems": [
                        {
                            "key": "<file>",
                            "value": None,
                            "message": "internal: the YAML round trip changed the mapping; nothing written",
                        }
                    ],
                },
                status_code=500,
            )
        diff = unified_diff(old_text, new_text)
        if not diff:
            return JSONResponse({"ok": True, "unchanged": True, "message": "nothing changed"})
        _atomic_write(self.config.mapping_file, new_text)
        changes = audit.flat_changes(plain(load_document(old_text)), plain(load_document(new_text)))
        client = request.client.host if request.client else None
        with self.conn() as conn:
            audit_id = audit.record_save(
                conn,
                saved_by=saved_by,
                client=client,
                mapping_file=str(self.config.mapping_file),
                old_fingerprint=old.fingerprint(),
                new_fingerprint=draft.fingerprint(),
                changes=changes,
                diff=diff,
            )
            transform = None
            if body.get("start_transform"):
                res = launch_transform(
                    self.config.dagster_url, {"studio/audit_id": str(audit_id), "studio/saved_by": saved_by}
                )
                transform = {"started": res.started, "run_id": res.run_id, "message": res.message}
                audit.record_transform(conn, audit_id, res.message)
            history = [_audit_json(r) for r in audit.history(conn, 10)]
        return JSONResponse(
            {
                "ok": True,
                "audit_id": audit_id,
                "diff": diff,
                "changes": changes,
                "file_hash": _hash(new_text),
                "fingerprint": draft.fingerprint(),
                "transform": transform,
                "history": history,
            }
        )

    def _api_audit(self, request: Request, body: dict[str, Any]) -> Response:
        with self.conn() as conn:
            return JSONResponse({"history": [_audit_json(r) for r in audit.history(conn, 50)]})

    def handler(self, name: str, with_body: bool = False) -> Any:
        """An async endpoint that reads the JSON body, then runs the blocking work in a thread."""
        impl = getattr(self, f"_{name}")

        async def endpoint(request: Request) -> Response:
            body = await _json_body(request) if with_body else {}
            return await run_in_threadpool(impl, request, body)

        return endpoint

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")


def _audit_json(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": r["id"],
        "saved_at": r["saved_at"].isoformat(timespec="seconds"),
        "saved_by": r["saved_by"],
        "changes": r["changes"],
        "diff": r["diff"],
        "transform": r["transform"],
        "new_fingerprint": r["new_fingerprint"],
    }


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return ""


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class BadRequest(Exception):
    """A request body that is not the JSON object the API expects."""


async def _json_body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise BadRequest("send application/json")
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


class Guard:
    """Token (off loopback), loopback-only access without one, and CSRF on every unsafe method."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        refusal = self.check(request)
        if refusal is not None:
            return await refusal(scope, receive, send)
        return await self.app(scope, receive, send)

    def check(self, request: Request) -> Response | None:
        if self.token:
            auth = request.headers.get("authorization", "")
            supplied = (
                request.query_params.get("token")
                or request.cookies.get(TOKEN_COOKIE)
                or (auth[7:] if auth.lower().startswith("bearer ") else None)
            )
            if not supplied or not hmac.compare_digest(supplied.encode(), self.token.encode()):
                return PlainTextResponse(
                    "403: this studio needs its access token (open the link it printed).", status_code=403
                )
            if request.query_params.get("token") and request.method in SAFE_METHODS:
                # Move the token from the URL into a cookie, so it leaves the address bar and the history.
                url = request.url.remove_query_params("token")
                resp = RedirectResponse(str(url), status_code=303)
                resp.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict", path="/")
                return resp
        else:
            client = request.client.host if request.client else None
            host = host_name(request.headers.get("host") or "")
            if not is_loopback(client) or host not in LOOPBACK_HOSTS:
                return PlainTextResponse(
                    "403: without a token the studio only answers on 127.0.0.1 "
                    "(start it with --token to serve other addresses).",
                    status_code=403,
                )
        if request.method not in SAFE_METHODS:
            cookie = request.cookies.get(CSRF_COOKIE)
            header = request.headers.get(CSRF_HEADER)
            if not cookie or not header or not hmac.compare_digest(cookie.encode(), header.encode()):
                return JSONResponse({"ok": False, "error": "CSRF check failed: reload the page"}, status_code=403)
            origin = request.headers.get("origin")
            if origin and origin != f"{request.url.scheme}://{request.headers.get('host')}":
                return JSONResponse({"ok": False, "error": "cross-origin request refused"}, status_code=403)
        return None


def create_app(config: StudioConfig) -> Starlette:
    """The studio's ASGI app."""
    studio = Studio(config)

    async def bad_request(request: Request, exc: Exception) -> Response:
        return JSONResponse({"ok": False, "error": str(exc)}, status_code=400)

    app = Starlette(
        routes=[
            Route("/", studio.handler("page")),
            Route("/api/inventory", studio.handler("api_inventory")),
            Route("/api/validate", studio.handler("api_validate", True), methods=["POST"]),
            Route("/api/preview", studio.handler("api_preview", True), methods=["POST"]),
            Route("/api/save", studio.handler("api_save", True), methods=["POST"]),
            Route("/api/audit", studio.handler("api_audit")),
            Route("/healthz", studio.healthz),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ],
        middleware=[Middleware(Guard, token=config.token)],
        exception_handlers={BadRequest: bad_request},
    )
    app.state.studio = studio
    return app
