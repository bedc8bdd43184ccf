"""`stripe-sage ui`: the Dagster webserver and daemon on the embedded defaults."""

from __future__ import annotations

import subprocess
import sys

from stripe_sage_pipeline.runtime.dagster_home import prepare_dagster_home
from stripe_sage_pipeline.settings import PROJECT_ROOT


def run_ui(host: str = "127.0.0.1", port: int = 3000) -> int:
    """Start `dagster-daemon` and `dagster-webserver` with the project's workspace; stop both on Ctrl-C."""
    prepare_dagster_home()
    # The webserver and the daemon each load the code location from the manifest: refresh it once here,
    # before either starts, so an edited model shows (and they do not race to parse it).
    from stripe_sage_pipeline.transform.build import DBT_PROJECT_DIR
    from stripe_sage_pipeline.transform.manifest import ensure_fresh_manifest

    if ensure_fresh_manifest(DBT_PROJECT_DIR, DBT_PROJECT_DIR / "target" / "manifest.json"):
        print("dbt project changed since the last parse: manifest re-parsed")
    bindir = __import__("pathlib").Path(sys.executable).parent
    workspace = str(PROJECT_ROOT / "workspace.yaml")
    daemon = subprocess.Popen([str(bindir / "dagster-daemon"), "run", "-w", workspace], cwd=PROJECT_ROOT)
    print(f"Dagster UI: http://{host}:{port}  (Ctrl-C stops the webserver and the daemon)")
    try:
        return subprocess.call([str(bindir / "dagster-webserver"), "-h", host, "-p", str(port), "-w", workspace],
                               cwd=PROJECT_ROOT)
    except KeyboardInterrupt:
        return 0
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
