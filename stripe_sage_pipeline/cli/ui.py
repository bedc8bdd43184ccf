"""`stripe-sage ui`: the Dagster webserver and daemon on the embedded defaults.

Before anything starts: the port must be free, the database must answer and the Dagster instance
must load (the doctor's checks), so a wrong set-up is one line, not hundreds of retries from the
webserver. The URL is printed once the webserver answers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from stripe_sage_pipeline.cli.errors import CommandError
from stripe_sage_pipeline.runtime.dagster_home import prepare_dagster_home
from stripe_sage_pipeline.runtime.doctor import run_checks
from stripe_sage_pipeline.runtime.embedded_pg import port_is_free
from stripe_sage_pipeline.settings import PROJECT_ROOT

STARTUP_TIMEOUT_S = 180


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def run_ui(host: str = "127.0.0.1", port: int = 3000) -> int:
    """Check, start `dagster-daemon` and `dagster-webserver` with the project's workspace; stop both on Ctrl-C."""
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
    workspace = str(PROJECT_ROOT / "workspace.yaml")
    log_dir = home / "logs"
    log_dir.mkdir(exist_ok=True)
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
        for proc in (web, daemon):
            if proc.poll() is None:
                proc.terminate()
        for proc in (web, daemon):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main_ui(args: argparse.Namespace) -> int:
    """Entry point of `stripe-sage ui`."""
    return run_ui(args.host, args.port)
