"""`stripe-sage ui`: the Dagster webserver and daemon on the embedded defaults.

Before anything starts: the port must be free, the database must answer and the Dagster instance
must load (the doctor's checks), so a wrong set-up is one line, not hundreds of retries from the
webserver. Both share one code server (`runtime/code_server.py`), started first. The URL is printed
once the webserver answers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from stripe_sage_pipeline.cli.checks import run_checks
from stripe_sage_pipeline.cli.errors import CommandError
from stripe_sage_pipeline.runtime.code_server import code_server_command, wait_until_serving, write_grpc_workspace
from stripe_sage_pipeline.runtime.dagster_home import prepare_dagster_home
from stripe_sage_pipeline.runtime.embedded_pg import free_port, port_is_free
from stripe_sage_pipeline.settings import PROJECT_ROOT

STARTUP_TIMEOUT_S = 180


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def run_ui(host: str = "127.0.0.1", port: int = 3000) -> int:
    """Check, start one code server, `dagster-daemon` and `dagster-webserver` on it; stop all three on Ctrl-C."""
    if host in ("127.0.0.1", "localhost", "0.0.0.0") and not port_is_free(port):
        raise CommandError(f"port {port} is already in use (another `stripe-sage ui`?) — stop it or pass --port")
    for result in run_checks(only=["database", "dagster"], stop_at_failure=True):
        if not result.ok:
            raise CommandError(result.detail)
    home = prepare_dagster_home()
    # The webserver and the daemon each load the code location from the manifest: refresh it once here,
    # before either starts, so an edited model shows (and they do not race to parse it).
    from stripe_sage_pipeline.transform.build import DBT_PROJECT_DIR
    from stripe_sage_pipeline.transform.manifest import ensure_fresh_manifest

    if ensure_fresh_manifest(DBT_PROJECT_DIR, DBT_PROJECT_DIR / "target" / "manifest.json"):
        print("dbt project changed since the last parse: manifest re-parsed")
    bindir = Path(sys.executable).parent
    # Not DAGSTER_HOME/logs: Dagster keeps its telemetry there and empties the folder as it goes.
    log_dir = home / "ui_logs"
    log_dir.mkdir(exist_ok=True)
    # One code server for both (see runtime/code_server.py); its output goes to a file, like the daemon's.
    code_port = free_port()
    with open(log_dir / "code_server.log", "a") as code_log:
        code_server = subprocess.Popen(
            code_server_command(bindir, "127.0.0.1", code_port),
            cwd=PROJECT_ROOT,
            stdout=code_log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_serving(code_server, "127.0.0.1", code_port, STARTUP_TIMEOUT_S)
    except RuntimeError as err:
        if code_server.poll() is None:
            code_server.terminate()
        raise CommandError(f"{err} — see {log_dir / 'code_server.log'}") from err
    workspace = str(write_grpc_workspace(home / "workspace.yaml", "127.0.0.1", code_port))
    # The daemon's heartbeat chatter goes to a file; the webserver's own log stays on the console.
    with open(log_dir / "daemon.log", "a") as daemon_log:
        daemon = subprocess.Popen(
            [str(bindir / "dagster-daemon"), "run", "-w", workspace],
            cwd=PROJECT_ROOT,
            stdout=daemon_log,
            stderr=subprocess.STDOUT,
        )
    web = subprocess.Popen(
        [str(bindir / "dagster-webserver"), "-h", host, "-p", str(port), "-w", workspace], cwd=PROJECT_ROOT
    )
    shown = "127.0.0.1" if host == "0.0.0.0" else host
    url = f"http://{shown}:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _answers(url + "/server_info"):
            if web.poll() is not None:
                raise CommandError(
                    f"the Dagster webserver exited with status {web.returncode} before answering — "
                    "see its output above; `stripe-sage doctor` checks the set-up"
                )
            if time.monotonic() > deadline:
                raise CommandError(f"the Dagster webserver did not answer on {url} within {STARTUP_TIMEOUT_S} s")
            time.sleep(0.5)
        print(
            f"Dagster UI: {url}  (daemon log: {log_dir / 'daemon.log'}; Ctrl-C stops the webserver and the daemon)",
            flush=True,
        )
        return web.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in (web, daemon, code_server):
            if proc.poll() is None:
                proc.terminate()
        for proc in (web, daemon, code_server):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main_ui(args: argparse.Namespace) -> int:
    """Entry point of `stripe-sage ui`."""
    return run_ui(args.host, args.port)
