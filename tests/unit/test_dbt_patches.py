"""The dbt-common speed fix gives the same behavior-flag source as dbt-common's own stack walk."""

from __future__ import annotations

import inspect

from stripe_sage_pipeline.transform.dbt_patches import first_module_outside, quicken_behavior_flags


def _as_dbt_common_does(module_name: str) -> str:
    """dbt-common's original: the first module on `inspect.stack()` other than its own."""
    for frame in inspect.stack():
        module = inspect.getmodule(frame[0])
        if module and module.__name__ != module_name:
            return module.__name__
    return "Unknown"


def test_first_module_outside_agrees_with_the_stack_walk() -> None:
    assert first_module_outside(__name__) == _as_dbt_common_does(__name__) != __name__
    assert first_module_outside("another.module") == __name__


def test_a_flag_declared_here_is_sourced_here_after_the_fix() -> None:
    from dbt_common.behavior_flags import Behavior, BehaviorFlagRendered

    quicken_behavior_flags()
    quicken_behavior_flags()  # idempotent
    assert BehaviorFlagRendered._stripe_sage_quick
    flags = Behavior([{"name": "declared_here", "default": False, "description": "a test flag"}], {})
    event = flags.declared_here._behavior_change_event
    assert event.flag_source == __name__
    assert Behavior([{"name": "on", "default": False, "description": "d"}], {"on": True}).on.setting is True


def test_template_code_is_compiled_once_per_source_and_renders_as_before(monkeypatch) -> None:
    """dbt's get_template after the fix: the same templates, rendered the same, compiled once per source."""
    import jinja2
    import pytest
    from dbt.clients import jinja as dbt_jinja
    from dbt_common.clients import jinja as common_jinja
    from dbt_common.exceptions import CompilationError

    from stripe_sage_pipeline.transform import dbt_patches

    # dbt-common's own (the fix may be in place already when another test of this process ran dbt).
    original = getattr(common_jinja.get_template, "__wrapped__", common_jinja.get_template)
    source = "select {{ cols | join(', ') }} from {{ this }}{% if where %} where {{ where }}{% endif %}"
    ctx = {"cols": ["id", "amount"], "this": "stg", "where": "amount > 0"}
    before = original(source, dict(ctx)).render(ctx)
    native_before = dbt_jinja.get_rendered("{{ [1, 2] }}", {}, native=True)

    compiled: list[str] = []
    real_compile = jinja2.Environment.compile
    monkeypatch.setattr(
        jinja2.Environment,
        "compile",
        lambda self, src, *a, **k: compiled.append(src) or real_compile(self, src, *a, **k),
    )
    monkeypatch.setattr(common_jinja, "get_template", original)
    monkeypatch.setattr(dbt_jinja, "get_template", original)
    monkeypatch.setattr(dbt_patches, "_codes", type(dbt_patches._codes)())
    dbt_patches.quicken_dbt()
    dbt_patches.quicken_dbt()  # idempotent
    assert common_jinja.get_template is dbt_jinja.get_template is not original

    other = {"cols": ["id"], "this": "stg_charges", "where": ""}
    assert common_jinja.get_template(source, dict(ctx)).render(ctx) == before
    assert dbt_jinja.get_rendered(source, dict(other)) == "select id from stg_charges"
    assert compiled == [source], "one compile for two renders of one source"
    # dbt's native rendering (a different environment class) keeps a code of its own.
    assert dbt_jinja.get_rendered("{{ [1, 2] }}", {}, native=True) == native_before
    assert dbt_jinja.get_rendered("{{ [1, 2] }}", {}) == "[1, 2]"
    assert compiled.count("{{ [1, 2] }}") == 2

    with pytest.raises(CompilationError):
        common_jinja.get_template("select {{ oops ", {})
    with pytest.raises(CompilationError):
        common_jinja.get_template("select {{ oops ", {})  # a broken source is never kept
    assert compiled.count("select {{ oops ") == 2


def test_only_debug_events_that_no_logger_or_callback_reads_are_dropped() -> None:
    from stripe_sage_pipeline.transform.dbt_patches import event_is_read

    assert not event_is_read("debug", ["info"], callbacks=0)
    assert not event_is_read("test", ["info", "warn"], callbacks=0)
    assert not event_is_read("debug", [], callbacks=0)
    assert event_is_read("debug", ["info", "debug"], callbacks=0)  # a debug log file reads everything
    assert event_is_read("debug", ["info"], callbacks=1)  # a caller's callback sees every event
    assert event_is_read("debug", ["error"], callbacks=0, print_event=True)  # dbt prints it as an error
    for level in ("info", "warn", "error"):
        assert event_is_read(level, ["error"], callbacks=0)  # never dropped here: the loggers decide


def test_an_unread_debug_event_is_never_formatted_and_every_read_event_still_is(monkeypatch) -> None:
    """After the fix: a debug event under info-level logs costs no message; info events, a debug-level
    logger and a caller's callback get exactly what they got before; a bad event still fails on use."""
    import io

    import pytest
    from dbt.adapters.events.types import SQLQuery
    from dbt_common.events import event_manager as em_module
    from dbt_common.events.base_types import EventLevel
    from dbt_common.events.logger import LoggerConfig
    from dbt_common.events.types import Note

    from stripe_sage_pipeline.transform import dbt_patches

    dbt_patches.quicken_dbt()
    dbt_patches.quicken_dbt()  # idempotent
    built: list[str] = []
    real = em_module.msg_from_base_event
    monkeypatch.setattr(
        em_module, "msg_from_base_event", lambda e, level=None: built.append(type(e).__name__) or real(e, level)
    )

    info_out, debug_out = io.StringIO(), io.StringIO()
    manager = em_module.EventManager()
    manager.add_logger(LoggerConfig(name="stripe_sage_t_info", level=EventLevel.INFO, output_stream=info_out))
    manager.fire_event(SQLQuery(conn_name="model.x", sql="select 42", node_info={}))
    assert built == [] and info_out.getvalue() == ""
    manager.fire_event(Note(msg="hello from an info event"), level=EventLevel.INFO)
    assert built == ["Note"] and "hello from an info event" in info_out.getvalue()

    manager.add_logger(LoggerConfig(name="stripe_sage_t_debug", level=EventLevel.DEBUG, output_stream=debug_out))
    manager.fire_event(SQLQuery(conn_name="model.x", sql="select 43", node_info={}))
    assert "select 43" in debug_out.getvalue() and "select 43" not in info_out.getvalue()

    seen: list[str] = []
    listened = em_module.EventManager()
    listened.add_logger(LoggerConfig(name="stripe_sage_t_info2", level=EventLevel.INFO, output_stream=io.StringIO()))
    listened.add_callback(lambda msg: seen.append(msg.data.sql))
    listened.fire_event(SQLQuery(conn_name="model.x", sql="select 44", node_info={}))
    assert seen == ["select 44"]

    event = SQLQuery(conn_name="model.x", sql="select 45", node_info={})
    assert (event.sql, event.conn_name) == ("select 45", "model.x")
    event.sql = "select 46"
    assert event.to_dict()["sql"] == "select 46"
    with pytest.raises(Exception, match="Unable to parse logging event"):
        SQLQuery(conn_name="model.x", sql="select 1", no_such_field=1).message()
