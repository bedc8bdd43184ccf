"""A Dagster run launcher that starts each run in a process forked from a warm worker.

`WarmRunLauncher` (dagster.yaml, `run_launcher`) keeps one `runtime/warm_worker.py` process per code
location, which has imported Dagster, the code location and `preload_modules` once, and hands it each
run: the run's process is a fork of it running `dagster api execute_run`, so a run starts in
milliseconds instead of re-importing ~8 CPU-seconds of libraries (measured in README, "Latency").

Everything else is Dagster's default: the run queue launches, the run's process writes its own
events and status, `dead_run_recovery_sensor` fails a run whose process died (it reads the pid from
the run's start event, which is the forked process). What changes:

* termination signals the run's process (pid in the `stripe_sage/run_pid` tag) with SIGTERM, which
  Dagster's run process turns into a cancelled run, instead of asking the code server;
* a changed source file (a module of the code location, a file under `watch_paths`) retires the
  worker before its next fork, so the next run loads the new code, as a code-server reload would;
* when the worker cannot start (the code location fails to load, a library starts a thread before
  the fork), the run launches the default way, through the code server, with the reason in its
  event log; so does a run whose code location is not a Python module or file.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from dagster import DefaultRunLauncher, Field, Noneable, serialize_value

from stripe_sage_pipeline.runtime.recovery import worker_alive, worker_pid

log = logging.getLogger(__name__)

PID_TAG = "stripe_sage/run_pid"
WORKER_TAG = "stripe_sage/run_worker"
READY_TIMEOUT_S = 180.0  # as Dagster's default code-server start-up timeout


class WarmWorkerUnavailable(RuntimeError):
    """The warm worker could not start or answer; the message says why."""


class WarmWorker:
    """One `warm_worker` process and its request/answer pipes (thread-safe)."""

    def __init__(
        self, executable: str, cwd: str | None, origin_json: str, preload: Sequence[str], watch: Sequence[str]
    ):
        cmd = [executable, "-m", "stripe_sage_pipeline.runtime.warm_worker", origin_json]
        for name in preload:
            cmd += ["--preload", name]
        for path in watch:
            cmd += ["--watch", os.path.join(cwd or os.getcwd(), path)]
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        answer = self._answer(READY_TIMEOUT_S)
        if "ready" not in answer:
            self.close()
            raise WarmWorkerUnavailable(answer.get("error") or f"unexpected answer {answer}")
        self.preload_s = answer["ready"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _answer(self, timeout_s: float) -> dict:
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not result or not result[0]:
            self.close()
            raise WarmWorkerUnavailable(
                f"warm run worker (pid {self.proc.pid}) gave no answer within {timeout_s:.0f}s"
                if not result
                else f"warm run worker (pid {self.proc.pid}) exited with {self.proc.wait(5)}"
            )
        return json.loads(result[0])

    def fork(self, args: Sequence[str]) -> dict:
        """Ask for a run process running `dagster <args>`: {"pid": n} or {"stale": [files]}."""
        with self._lock:
            try:
                self.proc.stdin.write(json.dumps({"args": list(args)}) + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                self.close()
                raise WarmWorkerUnavailable(f"warm run worker (pid {self.proc.pid}) is gone: {exc}") from exc
            return self._answer(30.0)

    def close(self) -> None:
        """Close its stdin (it exits; runs already forked carry on) and collect it."""
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


class WarmRunLauncher(DefaultRunLauncher):
    """Launches each run as a fork of a warm worker that already imported the code location (see module)."""

    def __init__(
        self,
        inst_data: Any = None,  # Dagster's ConfigurableClassData
        preload_modules: Sequence[str] | None = None,
        watch_paths: Sequence[str] | None = None,
    ):
        super().__init__(inst_data=inst_data)
        self._preload = list(preload_modules or [])
        self._watch = list(watch_paths or [])
        self._workers: dict[tuple, WarmWorker] = {}
        self._workers_lock = threading.Lock()

    @classmethod
    def config_type(cls) -> dict:
        return {
            "preload_modules": Field(
                Noneable([str]), is_required=False, description="modules the worker imports once, for every run"
            ),
            "watch_paths": Field(
                Noneable([str]),
                is_required=False,
                description="paths (relative to the code location's working directory) whose files, when"
                " changed, retire the worker (its own modules are always watched)",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Mapping[str, Any]):
        return cls(inst_data=inst_data, **config_value)

    def _worker(self, origin) -> WarmWorker:
        pointer = origin.repository_origin.code_pointer
        key = (origin.executable_path, serialize_value(origin.repository_origin))
        with self._workers_lock:
            worker = self._workers.get(key)
            if worker is None or not worker.alive():
                worker = WarmWorker(
                    origin.executable_path or sys.executable,
                    getattr(pointer, "working_directory", None),
                    serialize_value(origin),
                    self._preload,
                    self._watch,
                )
                log.info("warm run worker pid %d ready (preload %.1fs)", worker.pid, worker.preload_s)
                self._workers[key] = worker
            return worker

    def _retire(self, worker: WarmWorker) -> None:
        with self._workers_lock:
            for key, w in list(self._workers.items()):
                if w is worker:
                    del self._workers[key]
        worker.close()

    def launch_run(self, context: Any) -> None:  # Dagster's LaunchRunContext
        """Fork the run's process from the warm worker; the default way when there is none."""
        from dagster._grpc.types import ExecuteRunArgs  # what dagster-docker and dagster-k8s pass too (DECISIONLOG 33)

        run = context.dagster_run
        origin = run.job_code_origin
        if origin is None:
            return super().launch_run(context)
        # The arguments of `dagster api execute_run`, as every process-per-run launcher passes them.
        execute = ExecuteRunArgs(job_origin=origin, run_id=run.run_id, instance_ref=self._instance.get_ref())
        cli_args = ["api", "execute_run", serialize_value(execute)]
        answer: dict = {}
        try:
            for _attempt in range(2):  # a stale worker retires: the second attempt gets a fresh one
                worker = self._worker(origin)
                answer = worker.fork(cli_args)
                if "pid" in answer:
                    break
                log.info("warm run worker pid %d retired: changed %s", worker.pid, answer.get("stale"))
                self._retire(worker)
        except WarmWorkerUnavailable as exc:
            answer = {"error": str(exc)}
        if "pid" not in answer:
            self._instance.report_engine_event(
                f"No warm run worker ({answer.get('error') or answer}); launching through the code server.",
                run,
                cls=self.__class__,
            )
            return super().launch_run(context)
        self._instance.add_run_tags(run.run_id, {PID_TAG: str(answer["pid"]), WORKER_TAG: str(worker.pid)})
        self._run_ids.add(run.run_id)
        return None

    def terminate(self, run_id: str) -> bool:
        """SIGTERM the run's process (Dagster cancels the run); runs launched the default way as Dagster does."""
        run = self._instance.get_run_by_id(run_id) if self.has_instance else None
        if not run or run.is_finished:
            return False
        pid = run.tags.get(PID_TAG)
        if pid is None:
            return super().terminate(run_id)
        self._instance.report_run_canceling(run)
        _, started = worker_pid(self._instance, run_id)
        # Only the run's own process: a pid whose process is gone may since belong to another one.
        if not worker_alive(int(pid), started):
            self._instance.report_engine_event(
                f"Run process (pid {pid}) is already gone; crash recovery marks the run failed.",
                run,
                cls=self.__class__,
            )
            return False
        try:
            os.kill(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            return False
        return True

    def dispose(self) -> None:
        """Retire every worker (runs already forked carry on)."""
        with self._workers_lock:
            workers, self._workers = list(self._workers.values()), {}
        for w in workers:
            w.close()
