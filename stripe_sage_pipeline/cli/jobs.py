"""Running the project's Dagster jobs from the command line (demo, run): in process, on the real instance.

The runs are recorded in the Dagster instance like any other (the UI shows them with their logs); the
console gets warnings only, and dbt's progress goes to a log file so that a summary stays readable.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TextIO

import dagster as dg

from stripe_sage_pipeline.cli.errors import CommandError


class JobFailed(CommandError):
    """A Dagster run failed; the message names the job, the run id and the first failure."""


def execute_job(
    defs: dg.Definitions, job_name: str, instance: dg.DagsterInstance, log_file: Path, **kwargs
) -> dg.ExecuteInProcessResult:
    """Execute `job_name` in this process on `instance`; raise `JobFailed` (one line) when the run fails."""
    run_config = kwargs.pop("run_config", {})
    run_config.setdefault("loggers", {"console": {"config": {"log_level": "WARNING"}}})
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as log, contextlib.redirect_stdout(log):
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, raise_on_error=False, run_config=run_config, **kwargs
        )
    if not result.success:
        failures = [e.message for e in result.all_events if e.is_failure and e.message]
        from stripe_sage_pipeline.runtime.alerts import scrub

        first = scrub(failures[0].splitlines()[0]) if failures else "no step reported why"
        raise JobFailed(
            f"{job_name} failed (run {result.run_id[:8]}): {first[:300]} — see the run in `stripe-sage ui`"
            f" or {log_file}; fix the cause and run the same command again"
        )
    return result


class Progress:
    """A one-line progress bar on a terminal; one line per step otherwise (logs, CI). Writes to stderr."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.total, self.label, self.done, self.width = max(total, 1), label, 0, width
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()

    def advance(self, note: str = "") -> None:
        """One more step done; `note` says which."""
        self.done += 1
        filled = round(self.width * self.done / self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        text = f"  {self.label} [{bar}] {self.done}/{self.total} {note}"
        if self.tty:
            self.stream.write("\r" + text.ljust(self.width + len(self.label) + 40))
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
