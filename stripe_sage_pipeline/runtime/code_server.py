"""One code server for the webserver and the daemon, as `dagster dev` runs them.

Started on the project's `workspace.yaml` (a `python_module` location), the webserver and the daemon each
start a code server of their own, and Dagster's daemon replaces its own with a fresh one every 60 s to
pick up code changes (`dagster._daemon.controller.RELOAD_WORKSPACE_INTERVAL`): a new process importing
Dagster, dagster-dbt and the definitions, ~5-7 CPU-seconds each time, about a tenth of a core for as
long as `stripe-sage ui` runs on a 2-core machine. `stripe-sage ui` instead starts one
`dagster code-server start` for the location and gives both a workspace of one `grpc_server` entry, as
`dagster dev` does: the daemon's minute refresh then re-reads the location from that server, and the
UI's "Reload" reloads the code (the command's proxy restarts its child). The location's module and name
come from `workspace.yaml`, which stays the one place they are written.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import yaml

from stripe_sage_pipeline.settings import PROJECT_ROOT

WORKSPACE = PROJECT_ROOT / "workspace.yaml"


def workspace_location(workspace: Path = WORKSPACE) -> tuple[str, str]:
    """(module name, location name) of the workspace's one `python_module` location."""
    entries = (yaml.safe_load(workspace.read_text()) or {}).get("load_from") or []
    modules = [e["python_module"] for e in entries if isinstance(e, dict) and "python_module" in e]
    if len(modules) != 1:
        raise ValueError(f"{workspace}: expected one python_module location, found {len(modules)}")
    spec = modules[0]
    if isinstance(spec, str):
        return spec, spec
    return spec["module_name"], spec.get("location_name") or spec["module_name"]


def code_server_command(bindir: Path, host: str, port: int, workspace: Path = WORKSPACE) -> list[str]:
    """`dagster code-server start` for the workspace's location, serving on host:port."""
    module, location = workspace_location(workspace)
    return [
        str(bindir / "dagster"),
        "code-server",
        "start",
        "-m",
        module,
        "--location-name",
        location,
        "-h",
        host,
        "-p",
        str(port),
    ]


def write_grpc_workspace(path: Path, host: str, port: int, workspace: Path = WORKSPACE) -> Path:
    """A workspace file pointing the webserver and the daemon at the code server on host:port."""
    _, location = workspace_location(workspace)
    path.write_text(
        yaml.safe_dump({"load_from": [{"grpc_server": {"host": host, "port": port, "location_name": location}}]})
    )
    return path


def wait_until_serving(proc: subprocess.Popen, host: str, port: int, timeout_s: float) -> None:
    """Return once the code server accepts connections (it listens only after the code has loaded).

    Raises RuntimeError if the process exits first or the timeout passes.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the Dagster code server exited with status {proc.returncode} before serving")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Dagster code server did not serve on {host}:{port} within {timeout_s:.0f} s")
        time.sleep(0.25)
