"""Crash recovery without a human: runs whose worker died are failed, and their pool slots freed.

With Dagster's `DefaultRunLauncher` a run worker is a child of the local code server. When a worker is
killed (OOM killer, SIGKILL) while its code server lives, the code server notices and fails the run, but
the run's `sage_api`/`stripe_api` pool slot stays claimed until something frees it. When the code server
is gone too (the daemon that started it was killed) or the run was executed in process (a Ctrl-C'd
`stripe-sage demo`), nobody notices: the run stays `STARTED` forever, holding its slot, and every later
run of that pool waits behind it. The run-monitoring daemon cannot tell either: the default launcher does
not support worker health checks. This module closes the gap with public Dagster APIs only:

* `dead_runs()`: in-progress runs whose worker process (the pid of its `RUN_START` event) no longer
  exists on this host, or is a zombie, or is a newer process that reused the pid;
* `recover()`: marks each of them failed (so `run_retries` in dagster.yaml retries it from failure and
  the run-failure sensor alerts), then frees the pool slots of every finished run that still holds one.

It runs as a sensor in the daemon (`defs/automation/recovery.py`), every 15 s, and once at the start of
`stripe-sage demo`. Every write it retries is idempotent (the posting ledger resends the same body under
the same key), which is what makes retrying a dead run safe.

Single-host assumption: the pid is checked on the machine the sensor runs on, which is where the
default run launcher starts workers. A deployment whose workers run elsewhere (Docker, Kubernetes)
sets `STRIPE_SAGE_REAP_DEAD_RUNS=0` and relies on its launcher's own health checks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import dagster as dg

from stripe_sage_pipeline.settings import load_settings

log = logging.getLogger(__name__)

IN_PROGRESS = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
# A process that started this long after its run did is not the run's worker (the pid was reused).
PID_REUSE_SLACK_S = 5.0
DEAD_MESSAGE = "run worker (pid {pid}) is gone: killed or crashed; marked failed by crash recovery"


def reaping_enabled() -> bool:
    """False when STRIPE_SAGE_REAP_DEAD_RUNS is 0/false/no (workers on other hosts)."""
    return load_settings().reap_dead_runs


def worker_alive(pid: int, started_at: float | None = None) -> bool:
    """True when `pid` is a live (non-zombie) process that existed when the run started."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return False
        if started_at is not None and proc.create_time() > started_at + PID_REUSE_SLACK_S:
            return False
        return True
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True  # someone else's process with that pid: cannot tell, so do not touch the run


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> tuple[int | None, float | None]:
    """(pid, timestamp) of the run's `RUN_START` event: the process that executes the run's steps."""
    conn = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_START, limit=1)
    for record in conn.records:
        event = record.event_log_entry.dagster_event
        if event is not None and event.pid is not None:
            return event.pid, record.event_log_entry.timestamp
    return None, None


@dataclass
class Recovery:
    """What one pass did: runs failed because their worker was gone, runs whose slots were freed."""

    failed: list[str] = field(default_factory=list)
    freed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.failed or self.freed)

    def summary(self) -> str:
        """One line for the sensor's tick and the log."""
        if not self:
            return "no dead run, no slot held by a finished run"
        parts = []
        if self.failed:
            parts.append(f"failed {len(self.failed)} dead run(s): {', '.join(r[:8] for r in self.failed)}")
        if self.freed:
            parts.append(
                f"freed the pool slots of {len(self.freed)} finished run(s): {', '.join(r[:8] for r in self.freed)}"
            )
        return "; ".join(parts)


def dead_runs(
    instance: dg.DagsterInstance, grace_s: float = 10.0, now: float | None = None
) -> list[tuple[dg.DagsterRun, int]]:
    """In-progress runs (started over `grace_s` ago) whose worker process is gone, with its pid.

    The status is read again after the worker is found gone: a run that ended between the listing and the
    check wrote its end before its process exited, so the second read sees it and the run is left alone.
    """
    now = time.time() if now is None else now
    out = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=IN_PROGRESS)):
        run = record.dagster_run
        pid, started = worker_pid(instance, run.run_id)
        if pid is None or started is None or now - started < grace_s:
            continue  # not started yet (run monitoring's start timeout covers STARTING runs)
        if not worker_alive(pid, started):
            current = instance.get_run_by_id(run.run_id)
            if current is not None and current.status in IN_PROGRESS:
                out.append((current, pid))
    return out


def free_finished_slots(instance: dg.DagsterInstance) -> list[str]:
    """Release the pool slots (claimed or pending) still held by runs that have finished, or that the instance
    no longer knows (deleted from the UI while holding one); their run ids."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    run_ids = list(storage.get_concurrency_run_ids())
    if not run_ids:
        return []
    records = instance.get_run_records(filters=dg.RunsFilter(run_ids=run_ids))
    known = {r.dagster_run.run_id for r in records}
    stale = [r.dagster_run.run_id for r in records if r.dagster_run.status in FINISHED]
    stale += [run_id for run_id in run_ids if run_id not in known]
    for run_id in stale:
        storage.free_concurrency_slots_for_run(run_id)
    return stale


def recover(instance: dg.DagsterInstance, grace_s: float = 10.0) -> Recovery:
    """Fail every run whose worker died, then free the slots of finished runs; safe to call any time."""
    out = Recovery()
    if reaping_enabled():
        for run, pid in dead_runs(instance, grace_s):
            instance.report_run_failed(run, DEAD_MESSAGE.format(pid=pid))
            out.failed.append(run.run_id)
            log.warning(
                "run %s of %s: worker pid %d is gone; marked failed (run_retries retries it)",
                run.run_id,
                run.job_name,
                pid,
            )
    out.freed = free_finished_slots(instance)
    for run_id in out.freed:
        log.warning("freed the pool slots still held by finished run %s", run_id)
    return out


__all__ = ["DEAD_MESSAGE", "Recovery", "dead_runs", "free_finished_slots", "recover", "worker_alive", "worker_pid"]
