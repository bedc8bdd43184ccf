"""Crash recovery: a run whose worker is SIGKILLed mid-step is failed and its `sage_api` pool slot freed by
`runtime.recovery` (the daemon's dead_run_recovery_sensor), so the next run proceeds alone, without a human."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest

from stripe_sage_pipeline.runtime.recovery import DEAD_MESSAGE, dead_runs, recover

JOB = textwrap.dedent("""
    import os, time
    import dagster as dg

    @dg.op(pool="sage_api")
    def post_day(context):
        open(os.environ["MARKER"], "w").write(str(os.getpid()))
        time.sleep(float(os.environ["HOLD_S"]))

    @dg.job
    def load_like():
        post_day()

    result = load_like.execute_in_process(instance=dg.DagsterInstance.get())
    print("success" if result.success else "failure", flush=True)
""")


@pytest.fixture
def dagster_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("concurrency:\n  pools:\n    default_limit: 1\ntelemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _start(home: Path, marker: Path, hold_s: float) -> subprocess.Popen:
    env = {**os.environ, "DAGSTER_HOME": str(home), "MARKER": str(marker), "HOLD_S": str(hold_s)}
    return subprocess.Popen(
        [sys.executable, "-c", JOB], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_a_killed_run_is_failed_its_slot_freed_and_the_next_run_proceeds(dagster_home, tmp_path):
    marker = tmp_path / "started"
    victim = _start(dagster_home, marker, hold_s=120)
    deadline = time.monotonic() + 90
    while not marker.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), victim.stderr.read()[-2000:]
    instance = dg.DagsterInstance.get()
    assert not recover(instance, grace_s=0)  # a live worker is left alone
    os.kill(victim.pid, signal.SIGKILL)  # mid-step, holding the pool's only slot
    victim.wait(timeout=30)

    [run] = instance.get_runs()
    assert run.status == dg.DagsterRunStatus.STARTED  # what Dagster alone would show forever
    assert instance.event_log_storage.get_concurrency_run_ids() == {run.run_id}
    assert [(r.run_id, pid) for r, pid in dead_runs(instance, grace_s=0)] == [(run.run_id, victim.pid)]

    done = recover(instance, grace_s=0)
    assert done.failed == [run.run_id] and done.freed == [run.run_id]
    failed = instance.get_run_by_id(run.run_id)
    assert failed.status == dg.DagsterRunStatus.FAILURE
    failure = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert DEAD_MESSAGE.format(pid=victim.pid) in failure[-1].message
    assert instance.event_log_storage.get_concurrency_run_ids() == set()
    assert not recover(instance, grace_s=0)  # a second pass finds nothing to do

    nxt = _start(dagster_home, tmp_path / "second", hold_s=0)
    out, err = nxt.communicate(timeout=120)  # without the recovery this waits for the slot forever
    assert out.strip().endswith("success"), err[-2000:]


def test_a_run_that_ends_while_recovery_looks_is_left_as_it_ended(dagster_home, tmp_path, monkeypatch):
    """The race a warm-forked worker makes likely: recovery lists the run as STARTED, the run writes SUCCESS and
    its process exits at once, then recovery finds the pid gone. It must read the status again, not fail it."""
    from stripe_sage_pipeline.runtime import recovery

    marker = tmp_path / "started"
    proc = _start(dagster_home, marker, hold_s=0)
    assert proc.communicate(timeout=120)[0].strip() == "success"
    instance = dg.DagsterInstance.get()
    [record] = instance.get_run_records()
    ended = record.dagster_run
    assert ended.status == dg.DagsterRunStatus.SUCCESS
    # Recovery's listing as it was a moment before the run ended.
    listed = type(record)(**{**record._asdict(), "dagster_run": ended.with_status(dg.DagsterRunStatus.STARTED)})
    monkeypatch.setattr(instance, "get_run_records", lambda **_: [listed])
    assert recovery.worker_pid(instance, ended.run_id)[0] is not None  # the run's process is known, and gone
    assert dead_runs(instance, grace_s=0) == []
    assert instance.get_run_by_id(ended.run_id).status == dg.DagsterRunStatus.SUCCESS

    # The same listing for a run whose status really is still STARTED is a dead run (the check has teeth).
    monkeypatch.setattr(instance, "get_run_by_id", lambda run_id: listed.dagster_run)
    assert [(r.run_id, pid) for r, pid in dead_runs(instance, grace_s=0)] == [
        (ended.run_id, recovery.worker_pid(instance, ended.run_id)[0])
    ]
