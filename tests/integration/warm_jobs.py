"""A tiny code location for the warm run launcher's test: one job that records its process and waits."""

import os
import time

import dagster as dg


@dg.op
def record_process(context: dg.OpExecutionContext) -> None:
    """Write this process's pid and parent pid to $WARM_MARKER_DIR/<run id>; hold for $WARM_HOLD_S."""
    folder = os.environ["WARM_MARKER_DIR"]
    with open(os.path.join(folder, context.run_id), "w") as fh:
        fh.write(f"{os.getpid()} {os.getppid()}")
    deadline = time.monotonic() + float(os.environ.get("WARM_HOLD_S", "0"))
    while time.monotonic() < deadline:
        time.sleep(0.05)


@dg.job(executor_def=dg.in_process_executor)  # as the project: steps in the run's process
def warm_job() -> None:
    record_process()


defs = dg.Definitions(jobs=[warm_job])
