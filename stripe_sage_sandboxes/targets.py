"""Start the local server of either load target with the same fault knobs (demo, benchmarks, tests).

`start_target_sandbox("sagepro" | "intacct", …)` returns the running server and the environment that
points the pipeline at it (`SAGE_TARGET` plus the target's URL and rate), so a benchmark such as the
fault-injection one runs unchanged against Sage Pro or Sage Intacct: pick the target with
`SAGE_TARGET` and pass `load_settings().sage_target`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def start_target_sandbox(
    target: str,
    data_dir: Path,
    *,
    rate_429: float = 0.0,
    rate_5xx: float = 0.0,
    rate_commit_504: float = 0.0,
    seed: int = 0,
    retry_after_s: int = 1,
    rate_per_minute: int = 6000,
    closed_periods: list[str] | None = None,
) -> tuple[Any, str, dict[str, str]]:
    """(server, its name, environment) for the target; stop the server with `.stop()`."""
    if target == "intacct":
        from stripe_sage_sandboxes.intacct import IntacctEmulatorConfig, IntacctEmulatorServer

        srv = IntacctEmulatorServer(
            IntacctEmulatorConfig(
                rate_per_minute=max(rate_per_minute, 60_000),
                seed=seed,
                fault_429_rate=rate_429,
                fault_503_rate=rate_5xx,
                fault_commit_504_rate=rate_commit_504,
                retry_after_s=retry_after_s,
                closed_periods=list(closed_periods or []),
            )
        ).start()
        return (
            srv,
            "Sage Intacct emulator",
            {"SAGE_TARGET": "intacct", "INTACCT_BASE_URL": srv.base_url, "INTACCT_RATE_PER_MINUTE": "30000"},
        )
    if target != "sagepro":
        raise ValueError(f"target must be sagepro or intacct, not {target!r}")
    from stripe_sage_sandboxes.sage import SageSandboxConfig, SageSandboxServer

    srv = SageSandboxServer(
        SageSandboxConfig(
            data_dir=data_dir,
            rate_per_minute=rate_per_minute,
            max_concurrent=8,
            seed=seed,
            fault_429_rate=rate_429,
            fault_5xx_rate=rate_5xx,
            fault_commit_504_rate=rate_commit_504,
            fault_retry_after_s=retry_after_s,
            closed_periods=list(closed_periods or []),
        ),
        port=0,
    ).start()
    return (
        srv,
        "Sage Pro sandbox",
        {
            "SAGE_TARGET": "sagepro",
            "SAGEPRO_BASE_URL": srv.base_url,
            "SAGEPRO_RATE_PER_MINUTE": str(int(rate_per_minute * 0.9)),
        },
    )


__all__ = ["start_target_sandbox"]
