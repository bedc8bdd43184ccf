"""The HTTP face of the emulator: a Starlette app that answers the official SDK like api.stripe.com.

Auth, `Request-Id`, form-encoded nested parameters, list/retrieve, the few write endpoints the
pipeline uses (customers, refunds), idempotency keys, rate limiting (429), injected 5xx faults and
latency, plus `/_emulator/*` admin endpoints for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stripe_sage_pipeline.runtime.http_policy import RateLimit
from stripe_sage_sandboxes.stripe_emulator import ops, versions
from stripe_sage_sandboxes.stripe_emulator.store import ApiError, EmulatorState, dumps, loads, missing

READ_COLLECTIONS = {
    "customers",
    "charges",
    "refunds",
    "balance_transactions",
    "payouts",
    "disputes",
    "events",
    "invoices",
    "payment_intents",
}
ADDRESS_FIELDS = ("city", "country", "line1", "line2", "postal_code", "state")
CUSTOMER_PARAMS = {"name", "email", "description", "phone", "address", "metadata", "preferred_locales", "expand"}
REFUND_PARAMS = {"charge", "payment_intent", "amount", "reason", "metadata", "expand", "instructions_email"}
REFUND_REASONS = {"duplicate", "fraudulent", "requested_by_customer"}
# Parameters whose `[n]`/`[]` keys are arrays; other bracketed keys (metadata[0]) stay hashes.
ARRAY_PARAMS = {"expand", "types", "preferred_locales"}
_KEY_RE = re.compile(r"([^\[\]]+)|\[([^\[\]]*)\]")
_PATH_RE = re.compile(r"^/v1/([a-z_]+)(?:/([^/]+))?/?$")

STRIPE_WINDOW_S = 3  # the window of the rate limit (see `stripe_limit`)


def decode_params(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Rack-style nested form/query keys (`address[line1]`, `expand[0]`, `created[gte]`) to dicts/lists."""
    out: dict[str, Any] = {}
    for raw_key, value in pairs:
        segments = [m.group(1) if m.group(1) is not None else m.group(2) for m in _KEY_RE.finditer(raw_key)]
        if not segments:
            continue
        cur: dict[str, Any] = out
        for i, seg in enumerate(segments):
            last = i == len(segments) - 1
            if seg == "":
                seg = str(len(cur))  # `a[]=x` appends
            if last:
                cur[seg] = value
            else:
                nxt = cur.get(seg)
                if not isinstance(nxt, dict):
                    nxt = {}
                    cur[seg] = nxt
                cur = nxt
    for name in ARRAY_PARAMS:
        value = out.get(name)
        if isinstance(value, dict) and all(k.isdigit() for k in value):
            out[name] = [value[k] for k in sorted(value, key=int)]
    return out


def stripe_limit(rate_per_s: float) -> RateLimit:
    """Stripe's per-account limit as the pipeline's shared `RateLimit` (moving windows).

    Stripe meters with a token bucket of one second's worth: at most 2·rate in any one second, and
    `rate` per second sustained. Here: `rate`·3 in any 3 s (a client paced under the rate keeps slack for
    requests its threads send late) and at most 2·rate in any one second.
    """
    return RateLimit(rate_per_s, window_s=STRIPE_WINDOW_S, burst=max(1, math.floor(2 * rate_per_s)))


class EmulatorApp:
    """Request handling around one EmulatorState (the Starlette app is `.asgi`)."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        # Stripe's per-account limit: the pipeline's shared `RateLimit`, N requests in any one second.
        self.limit: RateLimit | None = None
        self._limit_rate: float | None = None
        self.asgi = Starlette(
            routes=[
                Route(
                    "/{path:path}",
                    self.handle,
                    methods=["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"],
                )
            ]
        )

    # ---- transport ---------------------------------------------------------------------------
    def _response(
        self,
        status: int,
        body: bytes,
        request_id: str,
        extra: dict[str, str] | None = None,
        api_version: str | None = None,
    ) -> Response:
        headers = {
            "Request-Id": request_id,
            "Stripe-Version": versions.normalise(api_version),
            "Cache-Control": "no-cache, no-store",
        }
        if extra:
            headers.update(extra)
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    def _error(self, err: ApiError, request_id: str) -> Response:
        return self._response(err.status, dumps(err.body()), request_id, err.headers)

    async def handle(self, request: Request) -> Response:
        """Entry point for every request."""
        request_id = "req_" + secrets.token_hex(7)
        path = request.url.path
        try:
            if path.startswith("/_emulator/"):
                return await self.admin(request, path, request_id)
            return await self.api(request, path, request_id)
        except ApiError as err:
            return self._error(err, request_id)

    def _count(self, name: str) -> None:
        with self.state.lock:
            self.state.counters[name] += 1

    async def api(self, request: Request, path: str, request_id: str) -> Response:
        """A `/v1/...` request: limits and faults first, then auth, then the endpoint."""
        state, cfg = self.state, self.state.config
        self._count("total")
        if cfg.latency_ms:
            await asyncio.sleep(cfg.latency_ms / 1000)
        if cfg.rate_limit_per_s:
            if self._limit_rate != cfg.rate_limit_per_s:
                self.limit, self._limit_rate = stripe_limit(cfg.rate_limit_per_s), cfg.rate_limit_per_s
            assert self.limit is not None
            if not self.limit.try_acquire():
                self._count("rate_limited")
                raise ApiError(
                    429,
                    "Too many requests hit the API too quickly. We recommend an exponential backoff of your requests.",
                    code="rate_limit",
                    headers={"Retry-After": "1", "Stripe-Should-Retry": "true"},
                )
        if cfg.fault_5xx_rate:
            with state.lock:
                fault = state.fault_rng.random() < cfg.fault_5xx_rate
            if fault:
                self._count("server_errors")
                raise ApiError(
                    500,
                    "An unknown error occurred (emulated fault). Please retry the request.",
                    type="api_error",
                    headers={"Stripe-Should-Retry": "true"},
                )
        self._authenticate(request)
        method = request.method
        pairs = list(request.query_params.multi_items())
        raw_body = b""
        if method == "POST":
            raw_body = await request.body()
            pairs += parse_qsl(raw_body.decode("utf-8"), keep_blank_values=True)
        params = decode_params(pairs)
        match = _PATH_RE.match(path)
        if not match:
            raise self._unrecognized(method, path)
        resource, oid = match.group(1), match.group(2)
        # Objects are rendered at the version the request names (the account default without one).
        api_version = request.headers.get("stripe-version")
        if method == "GET" and resource in READ_COLLECTIONS:
            if oid:
                body = state.retrieve(resource, oid, params, api_version)
            else:
                body = state.list(resource, params, api_version)
            return self._response(200, body, request_id, api_version=api_version)
        if method == "POST" and (resource, oid is None) in {
            ("customers", True),
            ("customers", False),
            ("refunds", True),
        }:
            return await self._idempotent_post(request, resource, oid, params, pairs, request_id, api_version)
        raise self._unrecognized(method, path)

    @staticmethod
    def _unrecognized(method: str, path: str) -> ApiError:
        return ApiError(
            404,
            f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or we can help at https://support.stripe.com/.",
        )

    def _authenticate(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not key:
            raise ApiError(
                401,
                "You did not provide an API key. You need to provide your API key in the Authorization header, "
                "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        if key != self.state.config.api_key:
            shown = key[:8] + "*" * max(0, len(key) - 12) + key[-4:] if len(key) > 12 else "****"
            raise ApiError(401, f"Invalid API Key provided: {shown}", code="api_key_invalid")

    async def _idempotent_post(
        self,
        request: Request,
        resource: str,
        oid: str | None,
        params: dict[str, Any],
        pairs: list[tuple[str, str]],
        request_id: str,
        api_version: str | None = None,
    ) -> Response:
        state = self.state
        idem_key = request.headers.get("idempotency-key")
        fingerprint = (request.url.path, tuple(sorted(pairs)))
        if idem_key:
            scope = (request.headers.get("stripe-account") or "", idem_key)
            with state.lock:
                stored = state.idempotency.get(scope)
            if stored is not None:
                if stored["fingerprint"] != fingerprint:
                    raise ApiError(
                        400,
                        "Keys for idempotent requests can only be used with the same parameters they were first "
                        f"used with. Try using a key other than '{idem_key}' if you meant to execute a different request.",
                        type="idempotency_error",
                    )
                return self._response(
                    stored["status"],
                    stored["body"],
                    stored["request_id"],
                    {"Idempotent-Replayed": "true", "Idempotency-Key": idem_key},
                )
        try:
            body = self._post(resource, oid, params, request_id, idem_key, api_version)
            status = 200
        except ApiError as err:
            if err.status >= 500 or err.status == 429:
                raise
            body, status = dumps(err.body()), err.status
        if idem_key:
            with state.lock:
                state.idempotency[scope] = {
                    "fingerprint": fingerprint,
                    "status": status,
                    "body": body,
                    "request_id": request_id,
                }
        extra = {"Idempotency-Key": idem_key} if idem_key else None
        return self._response(status, body, request_id, extra, api_version)

    # ---- write endpoints ---------------------------------------------------------------------
    def _post(
        self,
        resource: str,
        oid: str | None,
        params: dict[str, Any],
        request_id: str,
        idem: str | None,
        api_version: str | None = None,
    ) -> bytes:
        state = self.state
        expand = state._expand_paths(params.get("expand"), on_list=False)
        with state.lock:
            if resource == "customers" and oid is None:
                new_id = self._create_customer(params, request_id, idem)
                return dumps(state.render_expanded("customers", new_id, expand, api_version))
            if resource == "customers":
                assert oid is not None
                self._update_customer(oid, params, request_id, idem)
                return dumps(state.render_expanded("customers", oid, expand, api_version))
            refund_id = self._create_refund(params, request_id, idem)
            return dumps(state.render_expanded("refunds", refund_id, expand, api_version))

    @staticmethod
    def _check_params(params: dict[str, Any], allowed: set[str]) -> None:
        for name in params:
            if name not in allowed:
                raise ApiError(400, f"Received unknown parameter: {name}", param=name)

    @staticmethod
    def _string(params: dict[str, Any], name: str) -> str | None:
        value = params[name]
        if not isinstance(value, str):
            raise ApiError(400, f"Invalid string: {value!r}", param=name)
        return value or None  # Stripe: an empty string unsets the field

    @staticmethod
    def _metadata(value: Any) -> dict[str, str]:
        if value == "":
            return {}
        if not isinstance(value, dict):
            raise ApiError(400, "Invalid object", param="metadata")
        for k, v in value.items():
            if not isinstance(v, str) or len(v) > 500 or len(k) > 40:
                raise ApiError(400, f"Invalid metadata value for key {k}", param=f"metadata[{k}]")
        return dict(value)

    @staticmethod
    def _address(value: Any, old: dict[str, Any] | None) -> dict[str, Any] | None:
        if value == "":
            return None
        if not isinstance(value, dict):
            raise ApiError(400, "Invalid object", param="address")
        for k in value:
            if k not in ADDRESS_FIELDS:
                raise ApiError(400, f"Received unknown parameter: address[{k}]", param=f"address[{k}]")
        base = dict(old) if old else dict.fromkeys(ADDRESS_FIELDS)
        for k, v in value.items():
            base[k] = v or None
        return base

    def _customer_fields(self, params: dict[str, Any], oid: str | None) -> dict[str, Any]:
        self._check_params(params, CUSTOMER_PARAMS)
        fields: dict[str, Any] = {}
        for name in ("name", "email", "description", "phone"):
            if name in params:
                fields[name] = self._string(params, name)
        if "address" in params:
            old = self.state.field("customers", oid, "address") if oid else None
            fields["address"] = self._address(params["address"], old)
        if "preferred_locales" in params:
            locales = params["preferred_locales"]
            fields["preferred_locales"] = [] if locales == "" else list(locales)
        return fields

    def _create_customer(self, params: dict[str, Any], request_id: str, idem: str | None) -> str:
        state = self.state
        fields = self._customer_fields(params, None)
        obj: dict[str, Any] = {"id": state.ids.new("cus"), "created": state.now(), **fields}
        if "metadata" in params:
            obj["metadata"] = {k: v for k, v in self._metadata(params["metadata"]).items() if v}
        state.add("customers", obj)
        state.emit("customer.created", "customers", obj["id"], request_id=request_id, idem_key=idem)
        return obj["id"]

    def _update_customer(self, oid: str, params: dict[str, Any], request_id: str, idem: str | None) -> None:
        state = self.state
        if state.get("customers", oid) is None:
            raise missing("customers", oid)
        fields = self._customer_fields(params, oid)
        prev: dict[str, Any] = {}
        if "metadata" in params:
            old_meta = state.field("customers", oid, "metadata") or {}
            new_meta = dict(old_meta)
            changed: dict[str, Any] = {}
            for k, v in self._metadata(params["metadata"]).items():
                if v == "":
                    if k in new_meta:
                        changed[k] = new_meta.pop(k)
                elif new_meta.get(k) != v:
                    changed[k] = old_meta.get(k)
                    new_meta[k] = v
            if params["metadata"] == "":  # `metadata=` clears every key
                changed = dict(old_meta)
                new_meta = {}
            if changed:
                fields["metadata"] = new_meta
                prev["metadata"] = changed
        old = state.update("customers", oid, fields)
        for name, before in old.items():
            if name == "metadata":
                continue
            if name == "address" and isinstance(before, dict):
                # Nested hashes report only the sub-fields that changed.
                after = fields["address"] or {}
                prev[name] = {k: before.get(k) for k in ADDRESS_FIELDS if before.get(k) != after.get(k)}
            else:
                prev[name] = before
        if prev:
            state.emit("customer.updated", "customers", oid, prev=prev, request_id=request_id, idem_key=idem)

    def _create_refund(self, params: dict[str, Any], request_id: str, idem: str | None) -> str:
        state = self.state
        self._check_params(params, REFUND_PARAMS)
        charge_id = params.get("charge")
        if charge_id is None and "payment_intent" in params:
            pi = params["payment_intent"]
            if not isinstance(pi, str) or state.get("payment_intents", pi) is None:
                raise missing("payment_intents", str(pi), param="payment_intent", status=400)
            charge_id = state.field("payment_intents", pi, "latest_charge")
            if charge_id is None:
                raise ApiError(
                    400, f"PaymentIntent {pi} does not have a successful charge to refund.", param="payment_intent"
                )
        if not charge_id:
            raise ApiError(
                400, "One of the following params should be provided for this request: payment_intent or charge."
            )
        if not isinstance(charge_id, str) or state.get("charges", charge_id) is None:
            raise missing("charges", str(charge_id), param="charge", status=400)
        amount = None
        if "amount" in params:
            try:
                amount = int(params["amount"])
            except (TypeError, ValueError):
                raise ApiError(400, f"Invalid integer: {params['amount']}", param="amount") from None
        reason = params.get("reason") or None
        if reason is not None and reason not in REFUND_REASONS:
            raise ApiError(400, f"Invalid reason: must be one of {', '.join(sorted(REFUND_REASONS))}", param="reason")
        metadata = self._metadata(params["metadata"]) if "metadata" in params else None
        return ops.refund_charge(
            state, charge_id, amount, reason=reason, metadata=metadata, request_id=request_id, idem_key=idem
        )

    # ---- admin -------------------------------------------------------------------------------
    async def admin(self, request: Request, path: str, request_id: str) -> Response:
        """`/_emulator/*`: state inspection and time/fault controls for tests and benchmarks."""
        state, method = self.state, request.method
        body: dict[str, Any] = {}
        if method == "POST":
            raw = await request.body()
            if raw.strip():
                try:
                    body = loads(raw)
                except ValueError:
                    raise ApiError(400, "Admin endpoints take a JSON body.") from None
                if not isinstance(body, dict):
                    raise ApiError(400, "Admin endpoints take a JSON object.")
        parts = path.strip("/").split("/")[1:]
        result: Any
        if method == "GET" and parts == ["summary"]:
            result = state.summary()
        elif method == "GET" and parts == ["requests"]:
            with state.lock:
                result = {
                    "total": state.counters["total"],
                    "rate_limited": state.counters["rate_limited"],
                    "server_errors": state.counters["server_errors"],
                }
        elif method == "POST" and parts == ["requests", "reset"]:
            with state.lock:
                state.counters.clear()
            result = {"total": 0, "rate_limited": 0, "server_errors": 0}
        elif method == "POST" and parts == ["config"]:
            result = self._configure(body)
        elif method == "POST" and parts == ["clock"]:
            now = state.set_clock(body.get("now"), body.get("advance_seconds"))
            ops.refresh_balance_statuses(state, now)
            result = {"now": now}
        elif method == "POST" and parts == ["payouts", "run"]:
            result = {"payouts": ops.run_automatic_payouts(state)}
        elif method == "POST" and len(parts) == 3 and parts[0] == "payouts" and parts[2] in ("fail", "paid"):
            if parts[2] == "fail":
                ops.fail_payout(state, parts[1], code=str(body.get("failure_code", "account_closed")))
            else:
                ops.mark_payout_paid(state, parts[1])
            return self._response(200, dumps(state.render("payouts", parts[1])), request_id)
        elif method == "POST" and len(parts) == 3 and parts[0] == "disputes" and parts[2] == "close":
            ops.close_dispute(state, parts[1], str(body.get("status", "")))
            return self._response(200, dumps(state.render("disputes", parts[1])), request_id)
        elif method == "POST" and len(parts) == 3 and parts[0] == "charges" and parts[2] == "dispute":
            if state.get("charges", parts[1]) is None:
                raise missing("charges", parts[1])
            dispute_id = ops.open_dispute(state, parts[1], at=state.now(), reason=str(body.get("reason", "fraudulent")))
            return self._response(200, dumps(state.render("disputes", dispute_id)), request_id)
        else:
            raise self._unrecognized(method, path)
        return self._response(200, dumps(result), request_id)

    def _configure(self, body: dict[str, Any]) -> dict[str, Any]:
        cfg = self.state.config
        allowed = {"rate_limit_per_s", "fault_5xx_rate", "latency_ms", "webhook_urls"}
        for name in body:
            if name not in allowed:
                raise ApiError(400, f"Unknown config field: {name}", param=name)
        with self.state.lock:
            if "rate_limit_per_s" in body:
                rate = body["rate_limit_per_s"]
                cfg.rate_limit_per_s = float(rate) if rate else None
            if "fault_5xx_rate" in body:
                cfg.fault_5xx_rate = float(body["fault_5xx_rate"] or 0.0)
            if "latency_ms" in body:
                cfg.latency_ms = int(body["latency_ms"] or 0)
            if "webhook_urls" in body:
                urls = body["webhook_urls"] or []
                if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
                    raise ApiError(400, "webhook_urls must be a list of URLs", param="webhook_urls")
                cfg.webhook_urls = list(urls)
        return {
            "rate_limit_per_s": cfg.rate_limit_per_s,
            "fault_5xx_rate": cfg.fault_5xx_rate,
            "latency_ms": cfg.latency_ms,
            "webhook_urls": cfg.webhook_urls,
        }


def create_app(state: EmulatorState) -> Starlette:
    """The ASGI app serving `state`."""
    return EmulatorApp(state).asgi
