"""The warm dbt server (transform/dbt_server.py) behind `stripe-sage-dbt`: a command run in a forked child
is the same command as far as its caller can tell (output, exit code, environment, working directory);
a cancelled or killed caller cancels its query; a changed module retires the server.

Each test has a server of its own: TMPDIR points at the test's folder, where the socket lives."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from stripe_sage_pipeline.settings import PROJECT_ROOT
from stripe_sage_pipeline.transform import dbt_server
from stripe_sage_pipeline.transform.build import dbt_env

DBT = str(Path(sys.executable).parent / "stripe-sage-dbt")
DBT_DIR = PROJECT_ROOT / "dbt_project"


@pytest.fixture
def private_tmp(monkeypatch) -> Path:
    """A TMPDIR of the test's own: its dbt server and socket are nobody else's (short: a socket's path is
    at most ~107 bytes, which pytest's own folders exceed)."""
    tmp = Path(tempfile.mkdtemp(prefix="ssd-", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR in this process too
    yield tmp
    for pid in _servers(tmp):
        os.kill(pid, signal.SIGTERM)
    shutil.rmtree(tmp, ignore_errors=True)


def _servers(tmp: Path) -> list[int]:
    """Pids of dbt servers listening under `tmp`."""
    import psutil

    out = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "stripe_sage_pipeline.transform.dbt_server" in cmd and any(str(tmp) in part for part in cmd):
            out.append(proc.pid)
    return out


def _wait_for_server(tmp: Path, timeout_s: float = 60) -> Path:
    path = next((tmp / f"stripe-sage-dbt-{os.getuid()}").glob("*.sock"), None)
    deadline = time.monotonic() + timeout_s
    while (path is None or not path.exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
        path = next((tmp / f"stripe-sage-dbt-{os.getuid()}").glob("*.sock"), None)
    assert path is not None and path.exists(), "no dbt server came up"
    return path


def _dbt(args: list[str], env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DBT, *args], capture_output=True, text=True, cwd=kw.pop("cwd", DBT_DIR), env=env or os.environ, **kw
    )


def _event_pids(stdout: str) -> set[int]:
    return {json.loads(line)["info"]["pid"] for line in stdout.splitlines() if line.startswith("{")}


def test_a_command_runs_in_a_child_of_the_server_and_is_the_same_command(private_tmp, tmp_path, monkeypatch):
    # The first command finds no server: it runs in its own process and starts one.
    first = _dbt(["--log-format", "json", "debug", "--config-dir"])
    assert first.returncode == 0, first.stderr
    socket_file = _wait_for_server(private_tmp)
    [server] = _servers(private_tmp)

    profiles = tmp_path / "profiles"
    profiles.mkdir()
    env = {**os.environ, "DBT_PROFILES_DIR": str(profiles)}
    work = tmp_path / "work"
    work.mkdir()
    warm = subprocess.Popen(
        [DBT, "--log-format", "json", "debug", "--config-dir"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=work,
    )
    out, err = warm.communicate(timeout=60)
    cold = _dbt(["--log-format", "json", "debug", "--config-dir"], env={**env, "STRIPE_SAGE_DBT_SERVER": "0"}, cwd=work)
    assert warm.returncode == cold.returncode == 0, err
    # dbt itself logged from a process that is neither the caller nor the server: the forked child.
    assert _event_pids(out) and warm.pid not in _event_pids(out) and server not in _event_pids(out)
    assert len(_event_pids(cold.stdout)) == 1  # run in the caller's own process
    # The caller's environment reached dbt (the profiles folder it reports), through the caller's own pipe.
    messages = [json.loads(line)["info"]["msg"] for line in out.splitlines() if line.startswith("{")]
    assert any(str(profiles) in m for m in messages), messages
    assert messages == [json.loads(line)["info"]["msg"] for line in cold.stdout.splitlines() if line.startswith("{")]

    # Errors: the same message on stderr and the same exit code as dbt run in the caller's own process.
    bad_warm = _dbt(["build", "--no-such-flag"])
    bad_cold = _dbt(["build", "--no-such-flag"], env={**os.environ, "STRIPE_SAGE_DBT_SERVER": "0"})
    assert bad_warm.returncode == bad_cold.returncode == 2
    assert bad_warm.stderr == bad_cold.stderr and "No such option" in bad_warm.stderr
    assert dbt_server.request(["--version"], path=private_tmp / "nothing.sock") is None  # no server: caller runs it
    deep = tmp_path / ("deep" * 20)
    deep.mkdir()
    monkeypatch.setenv("TMPDIR", str(deep))
    monkeypatch.setattr("tempfile.tempdir", None)
    assert dbt_server.socket_path() is None  # a socket path too long to bind: no server, never a crash
    assert _servers(private_tmp) == [server] and socket_file.exists(), "one server served them all"


def test_a_changed_module_retires_the_server_and_the_command_still_runs(private_tmp, monkeypatch):
    # A module of this test's own that every Python here loads (sitecustomize, from PYTHONPATH), so the
    # server has it loaded too; touching a module of the package instead would retire other tests' servers.
    site = private_tmp / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("# loaded at start-up by every Python of this test\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p))
    assert _dbt(["debug", "--config-dir"]).returncode == 0
    _wait_for_server(private_tmp)
    [server] = _servers(private_tmp)
    warm = _dbt(["--log-format", "json", "debug", "--config-dir"])
    assert warm.returncode == 0 and server not in _event_pids(warm.stdout)

    os.utime(site / "sitecustomize.py", ns=(time.time_ns(), time.time_ns() + 10**9))
    result = _dbt(["--log-format", "json", "debug", "--config-dir"])
    assert result.returncode == 0, result.stderr
    # The retired server did not fork it: dbt ran in the caller's process, and a fresh server follows.
    assert len(_event_pids(result.stdout)) == 1
    deadline = time.monotonic() + 60
    while _servers(private_tmp) in ([], [server]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _servers(private_tmp) and server not in _servers(private_tmp)


@pytest.mark.parametrize("how", ["sigint", "sigkill"])
def test_a_cancelled_or_killed_caller_cancels_its_query(private_tmp, fresh_db, how):
    env = {**os.environ, **dbt_env(fresh_db), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    assert _dbt(["debug", "--config-dir"], env=env).returncode == 0
    _wait_for_server(private_tmp)
    caller = subprocess.Popen(
        [DBT, "show", "--inline", "select pg_sleep(60) as slept", "--target-path", str(private_tmp / "target")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=DBT_DIR,
    )
    conninfo = fresh_db.replace("postgresql+psycopg://", "postgresql://", 1)
    sleeping = (
        "select count(*) from pg_stat_activity where datname = current_database()"
        " and query like '%%pg_sleep(60)%%' and pid <> pg_backend_pid()"
    )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        deadline = time.monotonic() + 60
        while conn.execute(sleeping).fetchone()[0] == 0 and time.monotonic() < deadline:
            assert caller.poll() is None, caller.stdout.read()
            time.sleep(0.2)
        assert conn.execute(sleeping).fetchone()[0] == 1, "the query never started"
        started = time.monotonic()
        caller.send_signal(signal.SIGINT if how == "sigint" else signal.SIGKILL)
        caller.communicate(timeout=60)
        assert caller.returncode != 0
        while conn.execute(sleeping).fetchone()[0] and time.monotonic() - started < 45:
            time.sleep(0.2)
        # Cancelled, long before its 60 s were up.
        assert conn.execute(sleeping).fetchone()[0] == 0
        assert time.monotonic() - started < 45
