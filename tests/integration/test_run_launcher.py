"""The warm run launcher (runtime/run_launcher.py): runs are forks of one preloaded worker, run by Dagster's
own `api execute_run`; a changed source retires the worker; termination cancels the run; a code location
that fails to load launches the default way, with the reason in the run's events."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
from dagster._core.launcher import LaunchRunContext

from stripe_sage_pipeline.runtime.recovery import worker_pid
from stripe_sage_pipeline.runtime.run_launcher import PID_TAG, WORKER_TAG, WarmRunLauncher

HERE = Path(__file__).parent


@pytest.fixture
def warm(tmp_path, monkeypatch):
    """A temporary instance whose dagster.yaml names the warm launcher, and the tiny code location's job."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "run_launcher:\n  module: stripe_sage_pipeline.runtime.run_launcher\n  class: WarmRunLauncher\n"
        "  config:\n    preload_modules: [json]\n    watch_paths: [watched]\ntelemetry:\n  enabled: false\n"
    )
    code = tmp_path / "code"
    code.mkdir()
    (code / "warm_jobs.py").write_text((HERE / "warm_jobs.py").read_text())
    (code / "watched").mkdir()
    (code / "watched" / "model.sql").write_text("select 1\n")
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("WARM_MARKER_DIR", str(markers))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.chdir(code)  # the code location's working directory, where watch_paths are
    sys.modules.pop("warm_jobs", None)
    import warm_jobs

    recon = dg.reconstructable(warm_jobs.warm_job).get_python_origin()
    instance = dg.DagsterInstance.get()
    assert isinstance(instance.run_launcher, WarmRunLauncher)
    yield instance, warm_jobs.warm_job, recon, code, markers
    instance.run_launcher.dispose()
    instance.dispose()


def _launch(instance, job, origin) -> str:
    run = instance.create_run_for_job(job_def=job, job_code_origin=origin)
    instance.run_launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    return run.run_id


def _wait(instance, run_id, statuses, timeout_s=60.0) -> dg.DagsterRun:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run.status in statuses:
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} still {instance.get_run_by_id(run_id).status} after {timeout_s}s")


def test_runs_are_forks_of_one_worker_that_a_changed_source_retires(warm):
    instance, job, origin, code, markers = warm
    first = _launch(instance, job, origin)
    second = _launch(instance, job, origin)
    runs = [_wait(instance, r, {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE}) for r in (first, second)]
    assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS] * 2
    worker = int(runs[0].tags[WORKER_TAG])
    assert int(runs[1].tags[WORKER_TAG]) == worker, "the second run reused the warm worker"
    pids = []
    for run in runs:
        pid, ppid = map(int, (markers / run.run_id).read_text().split())
        # The step ran in the run's own process, a child of the worker, which Dagster recorded as the run's.
        assert (pid, ppid) == (int(run.tags[PID_TAG]), worker)
        assert worker_pid(instance, run.run_id)[0] == pid  # what crash recovery watches
        pids.append(pid)
    assert len(set(pids)) == 2, "a process per run"

    # A changed file under a watched path retires the worker: the next run comes from a fresh one.
    os.utime(code / "watched" / "model.sql", ns=(time.time_ns(), time.time_ns() + 10**9))
    third = _wait(instance, _launch(instance, job, origin), {dg.DagsterRunStatus.SUCCESS})
    assert int(third.tags[WORKER_TAG]) != worker
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE


def test_terminate_cancels_the_forked_run(warm, monkeypatch):
    instance, job, origin, _code, markers = warm
    monkeypatch.setenv("WARM_HOLD_S", "60")
    run_id = _launch(instance, job, origin)
    _wait(instance, run_id, {dg.DagsterRunStatus.STARTED})
    deadline = time.monotonic() + 30
    while not (markers / run_id).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert instance.run_launcher.terminate(run_id)
    run = _wait(instance, run_id, {dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE}, timeout_s=30)
    assert run.status == dg.DagsterRunStatus.CANCELED
    assert not instance.run_launcher.terminate(run_id), "a finished run is not terminated again"


def test_a_code_location_that_fails_to_load_launches_the_default_way_with_the_reason(warm):
    instance, job, origin, code, _markers = warm
    (code / "warm_jobs.py").write_text(
        (code / "warm_jobs.py").read_text() + "\nraise RuntimeError('broken on purpose')\n"
    )
    run = instance.create_run_for_job(job_def=job, job_code_origin=origin)
    # The default way needs the code server of a workspace, which this bare test has not: it says so.
    with pytest.raises(dg.DagsterInvariantViolationError, match="requires a workspace"):
        instance.run_launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    messages = [r.event_log_entry.message for r in instance.get_records_for_run(run.run_id).records]
    assert any("No warm run worker" in m and "broken on purpose" in m for m in messages), messages
