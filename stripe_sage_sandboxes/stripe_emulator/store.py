"""The emulator's state: collections kept sorted for Stripe's list semantics, events with snapshots,
the clock, idempotency records and request counters.

Every list is an array of keys `(-created, id)` in ascending order, i.e. newest first, ties broken by
id. `created[...]` filters and cursors are bisections on that array and a page is a slice, so serving
a 100-object page of a 200k-object list costs the same as of a 10-object one. Filters (`payout`,
`type`, `source`, `customer`, ...) have their own sorted key arrays. Objects are rendered to JSON
bytes once and cached until they change.

Events do not copy their object. Each object keeps a history of the values its updates replaced; an
event remembers how many updates its object had seen, and its `data.object` is the current object
rolled back through the later history entries. So "objects change after creation exactly as on
Stripe" (list/retrieve show the latest state) while every event still shows the object as it was.
"""

from __future__ import annotations

import json
import random
import threading
import time
from bisect import bisect_left, bisect_right, insort
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from heapq import merge
from typing import Any

from stripe_sage_sandboxes.stripe_emulator import versions
from stripe_sage_sandboxes.stripe_emulator.objects import (
    API_VERSION,
    COLLECTIONS,
    DAY,
    EXPANDABLE,
    TEMPLATES,
    IdFactory,
    collection_for_id,
    derive_fields,
)

try:  # orjson is several times faster at the one thing a list endpoint does; plain json works too
    import orjson

    def dumps(obj: Any) -> bytes:
        """Compact JSON bytes."""
        return orjson.dumps(obj)

    def dumps_compact(obj: Any) -> bytes:
        """JSON bytes for long-lived caches: orjson's result keeps a ~4 KB allocation behind every
        small object, so a cache of 200k objects would hold 800 MB; an exact-size copy does not."""
        return memoryview(orjson.dumps(obj)).tobytes()

    loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment

    def dumps(obj: Any) -> bytes:
        """Compact JSON bytes."""
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    dumps_compact = dumps
    loads = json.loads

Key = tuple[int, str]
EVENT_RETENTION_S = 30 * DAY
MAX_EXPAND_DEPTH = 4

# List filters per collection: name -> how the value is found ("field": a stored field with an
# index; "extern": membership kept outside the object; "scan": checked object by object).
LIST_FILTERS: dict[str, dict[str, str]] = {
    "customers": {"email": "field"},
    "charges": {"customer": "field", "payment_intent": "field"},
    "refunds": {"charge": "field", "payment_intent": "field"},
    "balance_transactions": {"payout": "extern", "type": "field", "source": "field", "currency": "field"},
    "payouts": {"status": "field", "destination": "scan"},
    "disputes": {"charge": "field", "payment_intent": "field"},
    "events": {"type": "field"},
    "invoices": {"customer": "field", "status": "field"},
    "payment_intents": {"customer": "field"},
}
# Range filters besides `created` (checked by scan; these lists are short).
RANGE_SCAN_FILTERS: dict[str, set[str]] = {"payouts": {"arrival_date"}}
IGNORED_LIST_PARAMS = {"expand", "limit", "starting_after", "ending_before", "created", "types", "delivery_success"}


class ApiError(Exception):
    """A Stripe error response: raised anywhere, rendered by the HTTP layer as `{"error": {...}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body Stripe sends for this error."""
        err: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code:
            err["code"] = self.code
            err["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param:
            err["param"] = self.param
        return {"error": err}


def missing(collection: str, object_id: str, param: str = "id", status: int = 404) -> ApiError:
    """Stripe's `resource_missing` error for an unknown id."""
    obj = COLLECTIONS[collection][0]
    return ApiError(status, f"No such {obj}: '{object_id}'", code="resource_missing", param=param)


@dataclass
class EmulatorConfig:
    """Runtime knobs of the emulator; the HTTP admin endpoint changes some of them live."""

    api_key: str = "sk_test_emulator"
    rate_limit_per_s: float | None = None
    fault_5xx_rate: float = 0.0
    latency_ms: int = 0
    seed: int = 0
    webhook_urls: list[str] = field(default_factory=list)
    webhook_secret: str = "whsec_emulator"
    now: int | None = None  # fixed epoch for the clock; None follows real time


class Event:
    """A stored event: a pointer to its object's version instead of a copy of the object."""

    __slots__ = ("id", "created", "type", "coll", "oid", "version", "prev", "request_id", "idem_key", "pending")

    def __init__(
        self,
        id: str,
        created: int,
        type: str,
        coll: str,
        oid: str,
        version: int,
        prev: dict[str, Any] | None,
        request_id: str | None,
        idem_key: str | None,
        pending: int,
    ) -> None:
        self.id = id
        self.created = created
        self.type = type
        self.coll = coll
        self.oid = oid
        self.version = version
        self.prev = prev
        self.request_id = request_id
        self.idem_key = idem_key
        self.pending = pending


class Collection:
    """One resource: stored objects, the sorted key array, filter indexes and the JSON cache."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.object_name, self.url = COLLECTIONS[name]
        self.objs: dict[str, Any] = {}
        self.keys: list[Key] = []
        self.index_fields = [f for f, how in LIST_FILTERS.get(name, {}).items() if how != "scan"]
        self.indexes: dict[str, dict[Any, list[Key]]] = {f: {} for f in self.index_fields}
        self.extern: dict[str, dict[str, Any]] = {
            f: {} for f, how in LIST_FILTERS.get(name, {}).items() if how == "extern"
        }
        self.raw: set[str] = set()  # objects served exactly as loaded (no template, no derived fields)
        self.history: dict[str, list[dict[str, Any]]] = {}
        self.cache: dict[str, bytes] = {}  # JSON at the 2023-08-16 shapes
        self.cache_current: dict[str, bytes] = {}  # JSON at current (2025-03-31+) shapes
        self.dirty = False

    def invalidate(self, oid: str) -> None:
        """Forget the cached renderings of an object that changed."""
        self.cache.pop(oid, None)
        self.cache_current.pop(oid, None)

    def key_of(self, oid: str) -> Key:
        """The sort key of a stored object."""
        obj = self.objs[oid]
        created = obj.created if isinstance(obj, Event) else obj["created"]
        return (-created, oid)

    def value_of(self, fld: str, oid: str) -> Any:
        """A filterable value of an object (stored field or external membership)."""
        if fld in self.extern:
            return self.extern[fld].get(oid)
        obj = self.objs[oid]
        return getattr(obj, fld) if isinstance(obj, Event) else obj.get(fld)

    def add(self, oid: str, obj: Any, created: int, bulk: bool) -> None:
        """Store an object; `bulk` appends and defers sorting to `finalize()`."""
        if oid in self.objs:
            raise ValueError(f"duplicate id {oid}")
        self.objs[oid] = obj
        key = (-created, oid)
        if bulk:
            self.keys.append(key)
            self.dirty = True
        else:
            insort(self.keys, key)
        for fld in self.index_fields:
            if fld in self.extern:
                continue
            value = getattr(obj, fld) if isinstance(obj, Event) else obj.get(fld)
            if value is not None:
                self.index_add(fld, value, key, bulk)

    def index_add(self, fld: str, value: Any, key: Key, bulk: bool) -> None:
        """Add a key to a filter index (`bulk`: sorted later)."""
        lst = self.indexes[fld].setdefault(value, [])
        if bulk:
            lst.append(key)
            self.dirty = True
        else:
            insort(lst, key)

    def index_remove(self, fld: str, value: Any, key: Key) -> None:
        """Drop a key from a filter index (when an indexed field changes)."""
        lst = self.indexes[fld].get(value)
        if lst:
            i = bisect_left(lst, key)
            if i < len(lst) and lst[i] == key:
                del lst[i]

    def finalize(self) -> None:
        """Sort whatever bulk loading appended."""
        if not self.dirty:
            return
        self.keys.sort()
        for idx in self.indexes.values():
            for lst in idx.values():
                lst.sort()
        self.dirty = False


class EmulatorState:
    """All emulated Stripe data plus the clock, counters and idempotency records of one emulator."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.lock = threading.RLock()
        self.colls: dict[str, Collection] = {name: Collection(name) for name in COLLECTIONS}
        self.ids = IdFactory(f"api:{self.config.seed}:{time.time_ns()}")
        self._fixed_now: int | None = self.config.now
        self._clock_offset = 0
        self.counters: Counter[str] = Counter()
        self.idempotency: dict[tuple[str, str], dict[str, Any]] = {}
        self.listeners: list[Callable[[str], None]] = []
        self.deliver_events = True
        # Events older than this are not stored (the generator sets it to the 30-day retention edge:
        # such events could never be listed, and skipping them keeps long histories small).
        self.event_floor: int | None = None
        # Automatic payouts: per currency, balance transactions not yet swept into a payout.
        self.payout_pool: dict[str, list[tuple[int, str, int]]] = {}
        self.bank_accounts: dict[str, str] = {}
        self.fault_rng = random.Random(self.config.seed)

    # ---- clock -------------------------------------------------------------------------------
    def now(self) -> int:
        """The emulator clock (epoch seconds): fixed when configured, else real time plus any advance."""
        if self._fixed_now is not None:
            return self._fixed_now
        return int(time.time()) + self._clock_offset

    def set_clock(self, now: int | None = None, advance_seconds: int | None = None) -> int:
        """Move the clock to `now` or forward by `advance_seconds`; returns the new time."""
        with self.lock:
            if now is not None:
                self._fixed_now = int(now)
            if advance_seconds:
                if self._fixed_now is not None:
                    self._fixed_now += int(advance_seconds)
                else:
                    self._clock_offset += int(advance_seconds)
            return self.now()

    # ---- storage -----------------------------------------------------------------------------
    def coll(self, name: str) -> Collection:
        """A collection by name (`charges`, `balance_transactions`, ...)."""
        return self.colls[name]

    def add(self, coll: str, obj: dict[str, Any], *, raw: bool = False, bulk: bool = False) -> str:
        """Store a new object (sparse: only fields that differ from the template)."""
        with self.lock:
            c = self.colls[coll]
            c.add(obj["id"], obj, obj["created"], bulk)
            if raw:
                c.raw.add(obj["id"])
            return obj["id"]

    def get(self, coll: str, oid: str) -> dict[str, Any] | None:
        """The stored (sparse) object, or None. Read-only: use `update` to change it."""
        return self.colls[coll].objs.get(oid)

    def field(self, coll: str, oid: str, name: str) -> Any:
        """One field of an object as served (stored value, else the template's)."""
        obj = self.colls[coll].objs[oid]
        if name in obj:
            return obj[name]
        return TEMPLATES.get(coll, {}).get(name)

    def update(self, coll: str, oid: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply top-level field changes; return the replaced values (Stripe's previous_attributes).

        Fields whose value does not change are dropped from both."""
        with self.lock:
            c = self.colls[coll]
            obj = c.objs[oid]
            old: dict[str, Any] = {}
            key = (-obj["created"], oid)
            for name, value in changes.items():
                before = obj[name] if name in obj else TEMPLATES.get(coll, {}).get(name)
                if before == value and name in obj:
                    continue
                old[name] = before
                obj[name] = value
                if name in c.indexes:
                    if before is not None:
                        c.index_remove(name, before, key)
                    if value is not None:
                        c.index_add(name, value, key, bulk=False)
            if old:
                c.history.setdefault(oid, []).append(old)
                c.invalidate(oid)
            return old

    def set_extern(self, coll: str, fld: str, oid: str, value: str, *, bulk: bool = False) -> None:
        """Record an external membership (a balance transaction's payout) and index it."""
        with self.lock:
            c = self.colls[coll]
            c.extern[fld][oid] = value
            c.index_add(fld, value, c.key_of(oid), bulk)

    def finalize(self) -> None:
        """Sort everything bulk loading appended; call after generating or loading."""
        with self.lock:
            for c in self.colls.values():
                c.finalize()

    def emit(
        self,
        type: str,
        coll: str,
        oid: str,
        *,
        created: int | None = None,
        prev: dict[str, Any] | None = None,
        request_id: str | None = None,
        idem_key: str | None = None,
        bulk: bool = False,
        ids: IdFactory | None = None,
    ) -> str | None:
        """Create an event whose data.object is the object's current version."""
        with self.lock:
            when = self.now() if created is None else created
            if self.event_floor is not None and when < self.event_floor:
                return None
            version = len(self.colls[coll].history.get(oid, ()))
            live = self.deliver_events and not bulk
            pending = len(self.config.webhook_urls) if live else 0
            ev = Event(
                (ids or self.ids).new("evt"),
                when,
                type,
                coll,
                oid,
                version,
                prev or None,
                request_id,
                idem_key,
                pending,
            )
            self.colls["events"].add(ev.id, ev, when, bulk)
            if live:
                for listener in list(self.listeners):
                    listener(ev.id)
            return ev.id

    def webhook_delivered(self, event_id: str) -> None:
        """One endpoint received the event: Stripe counts down `pending_webhooks`."""
        with self.lock:
            ev = self.colls["events"].objs.get(event_id)
            if ev is not None and ev.pending > 0:
                ev.pending -= 1
                self.colls["events"].invalidate(event_id)

    # ---- rendering ---------------------------------------------------------------------------
    def render(
        self,
        coll: str,
        oid: str,
        version: int | None = None,
        *,
        api_version: str | None = None,
        include: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        """The object as Stripe serves it at `api_version` (a fresh top-level dict), optionally as it
        was after its `version`-th update; `include` names expanded includable fields."""
        c = self.colls[coll]
        stored = c.objs[oid]
        raw = oid in c.raw
        if coll == "events" and not raw:
            return self._render_event(stored, api_version)
        if raw:
            out = dict(stored)
        else:
            out = dict(TEMPLATES[coll])
            out.update(stored)
        if version is not None:
            hist = c.history.get(oid, [])
            for old in reversed(hist[version:]):
                out.update(old)
        if not raw:
            derive_fields(coll, out)
            if coll == "disputes":
                # The dispute embeds its balance transactions as full objects.
                out["balance_transactions"] = [
                    self.render("balance_transactions", t, api_version=api_version) if isinstance(t, str) else t
                    for t in out["balance_transactions"]
                ]
        if coll == "events":
            return out
        if versions.is_current(api_version):
            return versions.current_rendering(coll, out, include=include)
        return out if raw else versions.old_rendering(coll, out)

    def _render_event(self, ev: Event, api_version: str | None = None) -> dict[str, Any]:
        # The event's object at the requested version (Stripe renders an event at the version of
        # the endpoint or request that reads it; the pipeline re-fetches objects anyway).
        data: dict[str, Any] = {"object": self.render(ev.coll, ev.oid, ev.version, api_version=api_version)}
        if ev.prev:
            data["previous_attributes"] = ev.prev
        return {
            "id": ev.id,
            "object": "event",
            "api_version": versions.normalise(api_version) if api_version else API_VERSION,
            "created": ev.created,
            "data": data,
            "livemode": False,
            "pending_webhooks": ev.pending,
            "request": {"id": ev.request_id, "idempotency_key": ev.idem_key},
            "type": ev.type,
        }

    def body(self, coll: str, oid: str, api_version: str | None = None) -> bytes:
        """Cached JSON bytes of the object as served at `api_version`."""
        c = self.colls[coll]
        current = versions.is_current(api_version)
        cache = c.cache_current if current else c.cache
        if coll == "events" and current:
            cache = {}  # an event names its version: not cached per version family
        data = cache.get(oid)
        if data is None:
            data = dumps_compact(self.render(coll, oid, api_version=api_version))
            cache[oid] = data
        return data

    def find(self, oid: str) -> tuple[str, dict[str, Any] | Event] | None:
        """Locate any stored object by id."""
        coll = collection_for_id(oid)
        if coll is None:
            return None
        obj = self.colls[coll].objs.get(oid)
        return (coll, obj) if obj is not None else None

    def _event_visible(self, ev: Event | dict[str, Any]) -> bool:
        created = ev.created if isinstance(ev, Event) else ev["created"]
        return created >= self.now() - EVENT_RETENTION_S

    # ---- expand ------------------------------------------------------------------------------
    def _expand(self, obj: dict[str, Any], parts: list[str], full: str, api_version: str | None = None) -> None:
        name, rest = parts[0], parts[1:]
        kind = obj.get("object", "")
        allowed = versions.expandable(kind, EXPANDABLE.get(kind, frozenset()), api_version)
        if name not in allowed:
            raise ApiError(400, f"This property cannot be expanded ({name}).", param="expand")
        if name == "refunds" and kind == "charge":
            value: Any = self._charge_refunds(obj["id"], api_version)
        elif name in versions.INCLUDABLE.get(kind, ()) and name in obj:
            value = obj[name]  # rendered with the object (render(include=...))
        elif name not in obj:
            return  # an optional field the object does not carry (a refund's failure_balance_transaction) stays absent
        else:
            value = obj.get(name)
            if isinstance(value, str):
                found = self.find(value)
                if found is not None and not isinstance(found[1], Event):
                    value = self.render(found[0], value, api_version=api_version)
        obj[name] = value
        if not rest or value is None:
            return
        if isinstance(value, dict) and value.get("object") == "list":
            for item in value["data"]:
                self._expand(item, rest, full, api_version)
        elif isinstance(value, dict):
            self._expand(value, rest, full, api_version)

    def _charge_refunds(self, charge_id: str, api_version: str | None = None) -> dict[str, Any]:
        keys = self.colls["refunds"].indexes["charge"].get(charge_id, [])
        return {
            "object": "list",
            "data": [self.render("refunds", oid, api_version=api_version) for _neg, oid in keys],
            "has_more": False,
            "url": f"/v1/charges/{charge_id}/refunds",
        }

    @staticmethod
    def _expand_paths(expand: Any, on_list: bool) -> list[list[str]]:
        if expand is None:
            return []
        if isinstance(expand, str):
            expand = [expand]
        if isinstance(expand, dict):
            expand = [expand[k] for k in sorted(expand, key=lambda k: int(k) if str(k).isdigit() else 0)]
        if not isinstance(expand, list) or not all(isinstance(p, str) for p in expand):
            raise ApiError(400, "Invalid array", param="expand")
        paths = []
        for path in expand:
            parts = path.split(".")
            if on_list:
                if parts[0] != "data" or len(parts) < 2:
                    raise ApiError(
                        400,
                        f"This property cannot be expanded ({path}). You may want to try expanding 'data.{path}' instead.",
                        param="expand",
                    )
                parts = parts[1:]
            if len(parts) > MAX_EXPAND_DEPTH:
                raise ApiError(
                    400,
                    f"You cannot expand more than {MAX_EXPAND_DEPTH} levels of a property. Property: {path}",
                    param="expand",
                )
            paths.append(parts)
        return paths

    def render_expanded(
        self, coll: str, oid: str, paths: list[list[str]], api_version: str | None = None
    ) -> dict[str, Any]:
        """Render one object at `api_version` and expand the given paths in it."""
        include = frozenset(p[0] for p in paths)
        out = self.render(coll, oid, api_version=api_version, include=include)
        for parts in paths:
            self._expand(out, parts, ".".join(parts), api_version)
        return out

    # ---- read API ----------------------------------------------------------------------------
    def retrieve(self, coll: str, oid: str, params: dict[str, Any], api_version: str | None = None) -> bytes:
        """GET /v1/<coll>/<id> body at `api_version`."""
        _reject_unknown(params, {"expand"})
        with self.lock:
            c = self.colls[coll]
            obj = c.objs.get(oid)
            if obj is None or (coll == "events" and not self._event_visible(obj)):
                raise missing(coll, oid)
            paths = self._expand_paths(params.get("expand"), on_list=False)
            if not paths:
                return self.body(coll, oid, api_version)
            return dumps(self.render_expanded(coll, oid, paths, api_version))

    def list(self, coll: str, params: dict[str, Any], api_version: str | None = None) -> bytes:
        """GET /v1/<coll> body with Stripe's list semantics, objects at `api_version`."""
        filters = LIST_FILTERS.get(coll, {})
        ranges = RANGE_SCAN_FILTERS.get(coll, set())
        _reject_unknown(params, set(filters) | ranges | IGNORED_LIST_PARAMS)
        limit = _int_param(params.get("limit", 10), "limit")
        if not 1 <= limit <= 100:
            raise ApiError(400, "Invalid limit: must be between 1 and 100.", param="limit")
        after, before = params.get("starting_after"), params.get("ending_before")
        if after and before:
            raise ApiError(
                400,
                "You may only specify one of these parameters: ending_before, starting_after.",
                param="ending_before",
            )
        lo_created, hi_created = _range_param(params.get("created"), "created")
        with self.lock:
            c = self.colls[coll]
            paths = self._expand_paths(params.get("expand"), on_list=True)
            base, preds = self._candidates(c, params, filters, ranges)
            if coll == "events":
                lo_created = max(lo_created if lo_created is not None else 0, self.now() - EVENT_RETENTION_S)
            # Key space is (-created, id) ascending, so created bounds become index bounds.
            lo = 0 if hi_created is None else bisect_left(base, (-hi_created, ""))
            hi = len(base) if lo_created is None else bisect_left(base, (-lo_created + 1, ""))
            cursor = after or before
            if cursor is not None:
                if not isinstance(cursor, str) or cursor not in c.objs:
                    raise missing(coll, str(cursor), param="starting_after" if after else "ending_before", status=400)
                ckey = c.key_of(cursor)
            keys, has_more = _page(base, preds, lo, hi, limit, ckey if after else None, ckey if before else None)
            if paths:
                parts = [dumps(self.render_expanded(coll, oid, paths, api_version)) for _neg, oid in keys]
            else:
                parts = [self.body(coll, oid, api_version) for _neg, oid in keys]
        return b"".join(
            (
                b'{"object":"list","data":[',
                b",".join(parts),
                b'],"has_more":',
                b"true" if has_more else b"false",
                b',"url":"',
                c.url.encode(),
                b'"}',
            )
        )

    def _candidates(
        self, c: Collection, params: dict[str, Any], filters: dict[str, str], ranges: set[str]
    ) -> tuple[list[Key], list[Callable[[str], bool]]]:
        """The smallest sorted key array that covers the filters, plus predicates for the rest."""
        chosen: list[tuple[str, set[Any]]] = []
        preds: list[Callable[[str], bool]] = []
        for name, how in filters.items():
            if name not in params:
                continue
            value = params[name]
            if not isinstance(value, str):
                raise ApiError(400, f"Invalid string: {value!r}", param=name)
            if how == "scan":
                preds.append(lambda oid, n=name, v=value: c.value_of(n, oid) == v)
            else:
                chosen.append((name, {value}))
        if c.name == "events":
            types = params.get("types")
            if types is not None:
                if isinstance(types, dict):
                    types = list(types.values())
                if isinstance(types, str):
                    types = [types]
                if "type" in params:
                    raise ApiError(400, "You may only specify one of these parameters: type, types.", param="types")
                chosen.append(("type", set(types)))
            chosen = [(n, self._expand_wildcards(c, n, v)) if n == "type" else (n, v) for n, v in chosen]
        for name in ranges:
            if name in params:
                lo, hi = _range_param(params[name], name)
                preds.append(lambda oid, n=name, lo=lo, hi=hi: _in_range(c.value_of(n, oid), lo, hi))
        if not chosen:
            return c.keys, preds
        lists = []
        for name, values in chosen:
            idx = c.indexes[name]
            parts = [idx[v] for v in values if v in idx]
            lists.append((name, values, parts))
        lists.sort(key=lambda t: sum(len(p) for p in t[2]))
        name, values, parts = lists[0]
        if not parts:
            base: list[Key] = []
        elif len(parts) == 1:
            base = parts[0]
        else:
            base = list(merge(*parts))
        for other, vals, _parts in lists[1:]:
            preds.append(lambda oid, n=other, vs=vals: c.value_of(n, oid) in vs)
        return base, preds

    @staticmethod
    def _expand_wildcards(c: Collection, name: str, values: set[str]) -> set[str]:
        out: set[str] = set()
        for v in values:
            if v.endswith("*"):
                prefix = v[:-1]
                out.update(t for t in c.indexes[name] if t.startswith(prefix))
            else:
                out.add(v)
        return out

    # ---- summary -----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Counts per collection and per UTC hour of `created`, and balance transaction sums per currency."""
        with self.lock:
            counts = {name: len(c.objs) for name, c in self.colls.items()}
            by_hour: dict[str, dict[str, int]] = {}
            for name, c in self.colls.items():
                hours: Counter[int] = Counter(-neg // 3600 for neg, _oid in c.keys)
                by_hour[name] = {
                    datetime.fromtimestamp(h * 3600, UTC).strftime("%Y-%m-%dT%H"): n for h, n in sorted(hours.items())
                }
            sums: dict[str, dict[str, int]] = {}
            bts = self.colls["balance_transactions"]
            for oid in bts.objs:
                obj = bts.objs[oid]
                cur = obj.get("currency", "usd")
                s = sums.setdefault(cur, {"amount": 0, "fee": 0, "net": 0})
                s["amount"] += obj["amount"]
                s["fee"] += obj["fee"]
                s["net"] += obj["net"]
            return {
                "counts": counts,
                "counts_by_hour": by_hour,
                "balance_transactions": dict(sorted(sums.items())),
                "now": self.now(),
            }

    def iter_rendered(self, coll: str) -> Iterable[dict[str, Any]]:
        """Every object of a collection as served, newest first (for tests and exports)."""
        with self.lock:
            keys = list(self.colls[coll].keys)
        for _neg, oid in keys:
            yield self.render(coll, oid)


def _reject_unknown(params: dict[str, Any], allowed: set[str]) -> None:
    for name in params:
        if name not in allowed:
            raise ApiError(400, f"Received unknown parameter: {name}", param=name)


def _int_param(value: Any, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ApiError(400, f"Invalid integer: {value}", param=name)


def _range_param(value: Any, name: str) -> tuple[int | None, int | None]:
    """`created=123` or `created[gt|gte|lt|lte]=...` as an inclusive (low, high) pair."""
    if value is None:
        return None, None
    if not isinstance(value, dict):
        exact = _int_param(value, name)
        return exact, exact
    lo: int | None = None
    hi: int | None = None
    for op, raw in value.items():
        v = _int_param(raw, f"{name}[{op}]")
        if op == "gt":
            lo = v + 1 if lo is None else max(lo, v + 1)
        elif op == "gte":
            lo = v if lo is None else max(lo, v)
        elif op == "lt":
            hi = v - 1 if hi is None else min(hi, v - 1)
        elif op == "lte":
            hi = v if hi is None else min(hi, v)
        else:
            raise ApiError(400, f"Received unknown parameter: {name}[{op}]", param=f"{name}[{op}]")
    return lo, hi


def _in_range(value: Any, lo: int | None, hi: int | None) -> bool:
    if not isinstance(value, int):
        return False
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def _page(
    base: list[Key],
    preds: list[Callable[[str], bool]],
    lo: int,
    hi: int,
    limit: int,
    after: Key | None,
    before: Key | None,
) -> tuple[list[Key], bool]:
    """One page of `base[lo:hi]` after/before a cursor; predicates are checked by walking."""
    if before is None:
        start = lo if after is None else max(lo, bisect_right(base, after))
        if not preds:
            stop = min(start + limit, hi)
            return base[start:stop], stop < hi
        out: list[Key] = []
        i = start
        while i < hi:
            key = base[i]
            i += 1
            if all(p(key[1]) for p in preds):
                if len(out) == limit:
                    return out, True
                out.append(key)
        return out, False
    end = min(hi, bisect_left(base, before))
    if not preds:
        s = max(lo, end - limit)
        return base[s:end], s > lo
    rev: list[Key] = []
    i = end - 1
    while i >= lo:
        key = base[i]
        i -= 1
        if all(p(key[1]) for p in preds):
            if len(rev) == limit:
                return rev[::-1], True
            rev.append(key)
    return rev[::-1], False
