"""Four speed fixes to dbt, applied wherever this project runs dbt (in-process or `stripe-sage-dbt`)
by `quicken_dbt`.

Behavior flags. When dbt registers the Postgres adapter, dbt-common names the module that declared each
behavior flag by walking `inspect.stack()`, which also reads the source lines around every frame on the
stack. Under Dagster (and pytest) the stack is deep, and that walk cost more than the rest of registering
the adapter: about 4% of the whole test suite's CPU, paid again by every dbt invocation (the Dagster runs
no longer register one in their own process: DECISIONLOG 32). `quicken_behavior_flags` gives the same
answer (the first module on the stack other than dbt-common's own) from the frames alone.

Template code. dbt renders every node's SQL through dbt-common's `get_template`, which lexes, parses and
compiles the source with Jinja each time, although most sources repeat (every generic test of a kind
has the same one, `{{ test_not_null(**_dbt_generic_test_kwargs) }}`) and a node's own SQL is the same
from one build to the next: ~11% of dbt's interpreter time in the test suite (DECISIONLOG 36). Jinja's compiled code depends only on
the source and on the environment's class and extensions (the context, the undefined class and the
globals are bound when a template is made from the code and rendered), so `cache_template_code` keeps
the code per (environment class, extensions, source) and makes each template from it, as Jinja's own
`Environment.from_string` does.

Connections. dbt-adapters closes a thread's connection after every node ("always close the connection")
and opens a new one for the next: a Postgres backend started, authenticated and its catalog caches
filled ~85 times per build of this project. `reuse_connections` keeps a thread's connection open when a
node ends, so the thread's next node takes it over (dbt's own `set_connection_name` reuses an open
connection; dbt-snowflake keeps connections the same way). A transaction still open (a data test's
select) is rolled back first, as closing would; a connection that cannot be rolled back is closed as
before, and dbt closes every connection when the invocation ends.
The models' session settings are `set local` (transaction-scoped), so nothing carries from one node to the
next. Four builds of the worked example: Postgres 2.6-2.7 → 2.0-2.1 CPU-s, dbt 8.2-8.3 → 7.6-7.9.

Events. dbt fires an event for every statement, connection and node step (~1,200 per build of this
project), and dbt-common turns each into protobuf messages (`ParseDict` of its fields when the event is
made, then of its envelope, then a formatted line) before Python logging drops it: most are debug events
and the console logs at info (the debug log file is off: `transform.build`). ~145 µs per event.
`skip_unlogged_events` returns early from the event manager for a debug event that no logger at debug
level and no caller's callback would read (dbt-core's own callback reads only behavior-change warnings),
and builds an event's message on first use, so a dropped event costs ~3 µs. What is logged or handed to
a callback is unchanged. Four builds of the worked example: dbt 7.1-7.6 → 5.0-5.6 CPU-s (DECISIONLOG 39).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from types import CodeType, FrameType
from typing import Any


def first_module_outside(module_name: str, frame: FrameType | None = None) -> str:
    """The module name of the nearest frame, from `frame` (default: the caller's) outwards, that is not in
    `module_name` ("Unknown" if none)."""
    frame = frame or sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__")
        if name and name != module_name:
            return name
        frame = frame.f_back
    return "Unknown"


def quicken_behavior_flags() -> None:
    """Replace dbt-common's stack walk for a behavior flag's default source (idempotent)."""
    from dbt_common import behavior_flags

    rendered = getattr(behavior_flags, "BehaviorFlagRendered", None)
    if rendered is None or getattr(rendered, "_stripe_sage_quick", False):
        return  # another dbt-common: leave it as it is

    def _default_source() -> str:
        return first_module_outside(behavior_flags.__name__, sys._getframe(1))

    rendered._default_source = staticmethod(_default_source)
    rendered._stripe_sage_quick = True


def quicken_dbt() -> None:
    """Apply the fixes (idempotent): what every place that runs dbt calls first."""
    quicken_behavior_flags()
    cache_template_code()
    reuse_connections()
    skip_unlogged_events()


QUIET_LEVELS = frozenset({"debug", "test"})  # dbt's levels that Python logging records as DEBUG


# Callbacks dbt itself registers that read only warnings: dbt-core's tracker of behavior-change warnings.
WARNING_ONLY_CALLBACKS = frozenset({("dbt.tracking", "track_behavior_change_warn")})


def event_is_read(level: str, logger_levels: list[str], callbacks: int, print_event: bool = False) -> bool:
    """Whether a dbt event of `level` reaches anyone: a callback (other than `WARNING_ONLY_CALLBACKS`),
    or a logger whose level lets it through.

    Only debug (and test) events are ever found unread: they go to a logger only when its level is
    debug or test. A PrintEvent is always read (dbt sends it to its loggers as an error).
    """
    if callbacks or print_event or level not in QUIET_LEVELS:
        return True
    return any(str(getattr(lvl, "value", lvl)) in QUIET_LEVELS for lvl in logger_levels)


def skip_unlogged_events() -> None:
    """Let dbt-common's event manager drop a debug event no logger or callback reads (idempotent)."""
    from dbt_common.events.event_manager import EventManager

    original = EventManager.fire_event
    if getattr(original, "_stripe_sage_skip", False):
        return

    def fire_event(
        self: Any, e: Any, level: Any = None, node: Any = None, force_warn_or_error_handling: bool = False
    ) -> None:
        value = str(getattr(level, "value", level) if level is not None else e.level_tag().value)
        readers = [
            cb
            for cb in self.callbacks
            if (getattr(cb, "__module__", None), getattr(cb, "__qualname__", None)) not in WARNING_ONLY_CALLBACKS
        ]
        if not force_warn_or_error_handling and not event_is_read(
            value, [lg.level for lg in self.loggers], len(readers), type(e).__name__ == "PrintEvent"
        ):
            return
        original(self, e, level=level, node=node, force_warn_or_error_handling=force_warn_or_error_handling)

    fire_event._stripe_sage_skip = True  # type: ignore[attr-defined]
    fire_event.__wrapped__ = original  # type: ignore[attr-defined]
    EventManager.fire_event = fire_event
    _build_event_messages_on_use()


def _build_event_messages_on_use() -> None:
    """dbt-common converts an event's fields to its protobuf message when the event is made; make that on
    first use instead, so an event dropped unread never pays for it (same message, same errors, later)."""
    from dbt_common.events.base_types import BaseEvent

    original_init = BaseEvent.__init__
    if getattr(original_init, "_stripe_sage_lazy", False):
        return

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        object.__setattr__(self, "_stripe_sage_fields", (args, kwargs))

    def get(self: Any) -> Any:
        built = self.__dict__.get("_stripe_sage_pb")
        if built is None:
            args, kwargs = self.__dict__.pop("_stripe_sage_fields", ((), {}))
            original_init(self, *args, **kwargs)  # sets pb_msg through `put`
            built = self.__dict__["_stripe_sage_pb"]
        return built

    def put(self: Any, value: Any) -> None:
        self.__dict__["_stripe_sage_pb"] = value

    __init__._stripe_sage_lazy = True  # type: ignore[attr-defined]
    __init__.__wrapped__ = original_init  # type: ignore[attr-defined]
    BaseEvent.__init__ = __init__
    BaseEvent.pb_msg = property(get, put)


def reuse_connections() -> None:
    """Keep a thread's Postgres connection from one dbt node to the next unless a transaction is open (idempotent)."""
    from dbt.adapters.postgres.connections import PostgresConnectionManager

    original = PostgresConnectionManager.release
    if getattr(original, "_stripe_sage_reuse", False):
        return

    def release(self: Any) -> None:
        with self.lock:
            conn = self.get_if_exists()
        if conn is not None and conn.state == "open" and conn.handle is not None:
            try:
                if conn.transaction_open:  # a test's select: rolled back, as closing it would
                    type(self)._rollback_handle(conn)
                    conn.transaction_open = False
                return  # the thread's next node takes it over; dbt closes it at the end of the invocation
            except Exception:  # noqa: BLE001 - a broken connection is closed (and dropped) as dbt does
                pass
        original(self)

    release._stripe_sage_reuse = True  # type: ignore[attr-defined]
    release.__wrapped__ = original  # type: ignore[attr-defined]
    PostgresConnectionManager.release = release


TEMPLATE_CODES_KEPT = 2048  # distinct template sources; a project's nodes and test kinds are far fewer
_codes: OrderedDict[tuple, CodeType] = OrderedDict()


def template_code(env: Any, source: str) -> CodeType:
    """Jinja's compiled code for `source` in `env`, compiled once per (environment class, extensions, source)."""
    key = (type(env), tuple(env.extensions), source)
    code = _codes.get(key)
    if code is None:
        code = env.compile(source)  # a syntax error raises here, as from_string does, and is not kept
        _codes[key] = code
        if len(_codes) > TEMPLATE_CODES_KEPT:
            _codes.popitem(last=False)
    return code


def cache_template_code() -> None:
    """Make dbt-common's `get_template` (and dbt's import of it) reuse compiled template code (idempotent)."""
    import inspect

    from dbt.clients import jinja as dbt_jinja
    from dbt_common.clients import jinja as common_jinja

    original = common_jinja.get_template
    if getattr(original, "_stripe_sage_cached", False):
        return
    if list(inspect.signature(original).parameters) != ["string", "ctx", "node", "capture_macros", "native"]:
        return  # another dbt-common: leave it as it is

    def get_template(string: Any, ctx: dict, node: Any = None, capture_macros: bool = False, native: bool = False):
        with common_jinja.catch_jinja(node):
            env = common_jinja.get_environment(node, capture_macros, native=native)
            code = template_code(env, str(string))
            return env.template_class.from_code(env, code, env.make_globals(ctx), None)

    get_template._stripe_sage_cached = True  # type: ignore[attr-defined]
    get_template.__wrapped__ = original  # type: ignore[attr-defined]
    common_jinja.get_template = get_template
    if getattr(dbt_jinja, "get_template", None) is original:
        dbt_jinja.get_template = get_template
