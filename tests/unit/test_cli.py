"""The command line without servers: help on every flag, --version, one-line errors, `run`'s window, progress."""

from __future__ import annotations

import argparse
import errno
import io
import os
from datetime import date

import psycopg
import pytest
import stripe

from stripe_sage_pipeline.cli import SANDBOXES, build_parser, main
from stripe_sage_pipeline.cli.errors import CommandError, explain
from stripe_sage_pipeline.cli.jobs import Progress
from stripe_sage_pipeline.cli.run import RunSummary, format_run_summary, parse_day, plan_window
from stripe_sage_pipeline.runtime.embedded_pg import EmbeddedPostgresError
from stripe_sage_pipeline.sage.errors import CredentialsError, NotFound, TransientError
from stripe_sage_pipeline.transform.mapping import MappingError


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _sandbox_parsers() -> dict[str, argparse.ArgumentParser]:
    import importlib

    out = {}
    for name, target in SANDBOXES.items():
        module = importlib.import_module(target.split(":")[0])
        out[name] = module.build_parser()
    return out


def test_every_flag_of_every_command_and_sandbox_has_help():
    parsers = {f"stripe-sage {n}": p for n, p in _subparsers(build_parser()).items()}
    parsers.update({f"stripe-sage sandbox {n}": p for n, p in _sandbox_parsers().items()})
    missing = [
        f"{name} {a.option_strings or a.dest}"
        for name, p in parsers.items()
        for a in p._actions
        if not isinstance(a, argparse._HelpAction) and not a.help
    ]
    assert missing == []
    assert {"demo", "run", "doctor", "db", "ui", "webhooks", "redrive", "sandbox"} <= set(_subparsers(build_parser()))


def test_sandboxes_call_themselves_by_the_command_that_runs_them():
    for name, p in _sandbox_parsers().items():
        assert p.prog == f"stripe-sage sandbox {name}"
        assert "fraction" in p.format_help() or name not in ("stripe", "sage")


def test_fault_rates_say_they_are_fractions():
    for p in _sandbox_parsers().values():
        for a in p._actions:
            if "rate" in (a.dest or "") and a.dest.startswith("fault"):
                assert "fraction" in a.help and "0 to 1" in a.help, a.dest


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("stripe-sage 0.")


def test_a_bad_flag_is_one_line_naming_the_flag_and_the_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--days", "many"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--days" in err and "'many'" in err and "stripe-sage demo --help" in err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["run", "--from", "2026-02-30", "--to", "2026-03-01"], ["--from", "'2026-02-30'", "YYYY-MM-DD"]),
        (["run", "--from", "2026-03-02", "--to", "2026-03-01"], ["--to 2026-03-01 is before --from 2026-03-02"]),
        (["run", "--from", "2999-01-01", "--to", "2999-01-02"], ["in the future"]),
    ],
)
def test_run_rejects_a_bad_window_in_one_line_before_any_check(argv, words, capsys):
    assert main(argv) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1 and out.err.startswith("stripe-sage run: ")
    assert all(w in out.err for w in words)


def test_plan_window_clamps_to_today_and_refuses_days_before_the_first_partition():
    today = date(2026, 12, 1)
    assert plan_window(date(2026, 11, 1), date(2026, 12, 31), today, "2026-01-01-00:00") == (date(2026, 11, 1), today)
    with pytest.raises(CommandError, match="STRIPE_SAGE_START_DATE=2025-12-31-00:00"):
        plan_window(date(2025, 12, 31), date(2026, 1, 2), today, "2026-01-01-00:00")
    assert parse_day("2026-07-01", "--from") == date(2026, 7, 1)


def test_progress_writes_one_line_per_step_when_not_a_terminal():
    out = io.StringIO()
    bar = Progress(4, "load", stream=out, width=8)
    for day in ("2026-11-01", "2026-11-02"):
        bar.advance(day)
    assert out.getvalue().splitlines() == ["  load [##------] 1/4 2026-11-01", "  load [####----] 2/4 2026-11-02"]


def test_run_summary_names_the_window_the_postings_and_what_to_do_about_dead_letters():
    res = RunSummary(
        window={"from": "2026-07-01", "to": "2026-07-15"},
        extracted={"charges": 4},
        days_loaded=["2026-07-04", "2026-07-16"],
        postings={"journal-entries": {"posted": 2, "dead_lettered": 1}},
        dead_letters_in_window=1,
        runs=[{"job": "load_job"}] * 2,
        seconds={"total": 12.5},
    )
    text = format_run_summary(res)
    assert "RUN 2026-07-01 .. 2026-07-15 (UTC)  took 12.5 s" in text
    assert "posting days loaded: 2 (2026-07-04 .. 2026-07-16)" in text
    assert "journal-entries    1 dead_lettered, 2 posted" in text and "`stripe-sage redrive`" in text


# -- explain: the one line for each expected failure --------------------------------------------------------


@pytest.fixture
def settings_env(monkeypatch):
    monkeypatch.setenv("STRIPE_SAGE_DATABASE_URL", "postgresql://finance:s3cret@db.internal:5432/stripe_sage")
    monkeypatch.setenv("STRIPE_API_BASE", "http://127.0.0.1:9")
    monkeypatch.setenv("SAGEPRO_BASE_URL", "http://127.0.0.1:9/sagepro/v1/PRO01")


def _wrapped(exc: BaseException) -> RuntimeError:
    try:
        try:
            raise exc
        except BaseException as inner:
            raise RuntimeError("step failed") from inner
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    "exc, words",
    [
        (
            psycopg.OperationalError('connection to server at "db.internal" failed: Connection refused'),
            [
                "cannot reach the database at postgresql://finance:***@db.internal:5432/stripe_sage",
                "Connection refused",
                "STRIPE_SAGE_DATABASE_URL",
            ],
        ),
        (
            stripe.AuthenticationError("Invalid API Key provided: sk_test_****"),
            ["rejected STRIPE_API_KEY", "valid secret or restricted key"],
        ),
        (
            stripe.APIConnectionError("Network error: [Errno 111] Connection refused"),
            ["cannot reach Stripe at http://127.0.0.1:9", "[Errno 111] Connection refused"],
        ),
        (
            stripe.PermissionError("The provided key does not have the required permissions"),
            ["may not read", "restricted key"],
        ),
        (CredentialsError("Sage Pro rejected the credentials", status=401), ["rejected SAGEPRO_USER/SAGEPRO_PASSWORD"]),
        (
            TransientError("Sage GET /accounts still failing after 7 attempts: ConnectError"),
            ["Sage Pro at http://127.0.0.1:9/sagepro/v1/PRO01 did not answer", "SAGEPRO_BASE_URL"],
        ),
        (NotFound("not found", status=404), ["404", "/sagepro/v1/<company>"]),
        (
            MappingError("mapping.yaml", [("accounts.revenue", "40x0", "unknown account")]),
            ["invalid mapping mapping.yaml: accounts.revenue: unknown account (got '40x0')", "fix the file"],
        ),
        (
            EmbeddedPostgresError("port 54329 on 127.0.0.1 is taken by another program: set STRIPE_SAGE_PG_PORT"),
            ["STRIPE_SAGE_PG_PORT"],
        ),
        (OSError(errno.EADDRINUSE, "Address already in use"), ["already in use", "--port"]),
    ],
)
def test_explain_names_the_cause_and_the_fix_in_one_line_even_when_wrapped(settings_env, exc, words):
    for e in (exc, _wrapped(exc)):
        line = explain(e)
        assert "\n" not in line and "s3cret" not in line
        assert all(w in line for w in words), line


def test_explain_falls_back_to_the_type_and_first_line_with_the_verbose_hint(settings_env):
    line = explain(ValueError("something odd\nsecond line"))
    assert line == "ValueError: something odd — run again with --verbose for the traceback"


def test_an_expected_failure_prints_one_line_and_verbose_adds_the_traceback(monkeypatch, capsys):
    import stripe_sage_pipeline.cli as cli

    def boom(args):
        raise CommandError("the cause — the fix")

    monkeypatch.setitem(cli.__dict__, "_boom", boom)
    monkeypatch.setattr(cli, "SANDBOXES", {**cli.SANDBOXES, "boom": "stripe_sage_pipeline.cli:_boom"})
    assert main(["sandbox", "boom"]) == 1
    assert capsys.readouterr().err == "stripe-sage sandbox: the cause — the fix\n"
    assert main(["--verbose", "sandbox", "boom"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.endswith("stripe-sage sandbox: the cause — the fix\n")


def test_the_first_partition_a_demo_remembered_applies_unless_one_was_chosen(tmp_path, monkeypatch):
    from stripe_sage_pipeline.runtime.dagster_home import prepare_dagster_home, remember_partitions_start

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:1/dagster")
    monkeypatch.delenv("STRIPE_SAGE_START_DATE", raising=False)
    home = prepare_dagster_home()
    assert "STRIPE_SAGE_START_DATE" not in os.environ
    remember_partitions_start(home, "2026-11-02-00:00")
    prepare_dagster_home()
    assert os.environ["STRIPE_SAGE_START_DATE"] == "2026-11-02-00:00"
    monkeypatch.setenv("STRIPE_SAGE_START_DATE", "2026-01-01-00:00")
    prepare_dagster_home()
    assert os.environ["STRIPE_SAGE_START_DATE"] == "2026-01-01-00:00"
