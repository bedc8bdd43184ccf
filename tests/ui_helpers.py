"""A real Dagster webserver and daemon for the UI tests, on a fresh instance database.

`dagster_ui(...)` starts both as subprocesses (the binaries beside this interpreter) with the
project's workspace.yaml, a temporary DAGSTER_HOME rendered from the project's dagster.yaml, and a
new `dagster_<uuid>` database on the test's Postgres server for instance storage. The code location
sees the test's pipeline database and Sage sandbox through the same environment variables a
deployment uses. Both process groups are killed on exit; their logs stay under the test's basetemp
and their tails are printed when the body fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml

from stripe_sage_pipeline.runtime.code_server import code_server_command, wait_until_serving, write_grpc_workspace
from stripe_sage_pipeline.runtime.dagster_home import render_instance_config
from stripe_sage_pipeline.runtime.embedded_pg import EmbeddedPostgres, free_port
from stripe_sage_pipeline.settings import PROJECT_ROOT

SAGE_USER, SAGE_PASSWORD = "pipeline", "pipeline-secret"
BIN_DIR = Path(sys.executable).parent

WORKSPACE_QUERY = """
query Workspace {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on RepositoryLocation { name repositories { name } }
          ... on PythonError { message stack }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""

DAEMON_HEALTH_QUERY = """
query DaemonHealth {
  instance { daemonHealth { allDaemonStatuses { daemonType healthy } } }
}
"""


class UIStartupError(RuntimeError):
    """The webserver or the daemon did not come up (the message carries their log tails)."""


@dataclass
class DagsterUI:
    """A running webserver + daemon: base URL, GraphQL access and the processes' logs."""

    url: str
    home: Path
    instance_db_url: str
    logs: dict[str, Path]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    location: str = ""
    repository: str = ""

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None, timeout: float = 60) -> dict[str, Any]:
        """POST a query to /graphql, as the UI does; GraphQL-level errors raise."""
        resp = httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": dict(variables or {})}, timeout=timeout
        )
        try:
            body = resp.json()
        except ValueError:
            resp.raise_for_status()
            raise
        if body.get("errors") or resp.status_code != 200:
            raise AssertionError(f"GraphQL {resp.status_code}: {body.get('errors')}")
        return body["data"]

    def repository_selector(self) -> dict[str, str]:
        """The `RepositorySelector` input of the project's code location."""
        return {"repositoryLocationName": self.location, "repositoryName": self.repository}

    def assert_alive(self) -> None:
        """Fail fast (with the logs) when the webserver or the daemon has exited."""
        dead = {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise AssertionError(f"process exited: {dead}\n{self.tails()}")

    def tails(self, lines: int = 60) -> str:
        """The last lines of each process's log."""
        out = []
        for name, path in self.logs.items():
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            out.append(f"----- {name} ({path}), last {min(lines, len(text))} of {len(text)} lines -----")
            out.extend(text[-lines:])
        return "\n".join(out)


def create_database(pg_server: EmbeddedPostgres, prefix: str) -> str:
    """A new empty database on the test server; returns its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        f"host=127.0.0.1 port={pg_server.port} user=postgres dbname=postgres", autocommit=True
    ) as conn:
        conn.execute(f'create database "{name}"')
    return name


def write_dagster_home(home: Path, env: Mapping[str, str], dequeue_interval_s: int = 1) -> Path:
    """DAGSTER_HOME/dagster.yaml as `prepare_dagster_home` renders it, with a faster queue poll for tests."""
    home.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(render_instance_config(dict(env)))
    # The only test-specific change: the queue daemon checks every second instead of every 5 s.
    config.setdefault("run_coordinator", {}).setdefault("config", {})["dequeue_interval_seconds"] = dequeue_interval_s
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return home


def ui_environment(
    base: Mapping[str, str],
    *,
    home: Path,
    instance_db_url: str,
    pipeline_db_url: str,
    sage_base_url: str | None,
    data_dir: Path,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The subprocesses' environment: instance, pipeline database, Sage sandbox, telemetry off."""
    env = dict(base)
    env.update(
        {
            "DAGSTER_HOME": str(home),
            "DAGSTER_POSTGRES_URL": instance_db_url,
            "DAGSTER_TELEMETRY_ENABLED": "false",
            "GX_ANALYTICS_ENABLED": "false",
            "STRIPE_SAGE_DATABASE_URL": pipeline_db_url,
            # Keeps anything the code location writes out of the checkout's .data.
            "STRIPE_SAGE_DATA_DIR": str(data_dir),
            "SAGEPRO_USER": SAGE_USER,
            "SAGEPRO_PASSWORD": SAGE_PASSWORD,
            "PYTHONUNBUFFERED": "1",
            # The workspace loads `stripe_sage_pipeline.definitions` by module name.
            "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), base.get("PYTHONPATH", "")) if p),
        }
    )
    if sage_base_url:
        env["SAGEPRO_BASE_URL"] = sage_base_url
    env.update(extra or {})
    return env


def _stop(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    # Children (code servers, run workers) may outlive the leader: kill the whole group regardless.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _wait_until_ready(ui: DagsterUI, timeout_s: float, wait_for_daemon: bool) -> None:
    """/server_info answers, the code location is LOADED (a load error fails at once), the daemon beats."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        ui.assert_alive()
        try:
            if httpx.get(f"{ui.url}/server_info", timeout=5).status_code == 200:
                break
        except httpx.HTTPError as err:
            last = err
        time.sleep(0.5)
    else:
        raise UIStartupError(f"/server_info did not answer within {timeout_s:.0f}s ({last})\n{ui.tails()}")

    while time.monotonic() < deadline:
        ui.assert_alive()
        ws = ui.graphql(WORKSPACE_QUERY)["workspaceOrError"]
        if ws["__typename"] != "Workspace":
            raise UIStartupError(f"workspaceOrError: {ws}\n{ui.tails()}")
        entries = {e["name"]: e for e in ws["locationEntries"]}
        entry = entries.get("stripe_sage_pipeline")
        last = entry
        if entry and entry["loadStatus"] == "LOADED" and entry["locationOrLoadError"]:
            loc = entry["locationOrLoadError"]
            if loc["__typename"] == "PythonError":
                raise UIStartupError(f"code location failed to load: {loc['message']}\n{loc['stack']}")
            ui.location, ui.repository = loc["name"], loc["repositories"][0]["name"]
            break
        time.sleep(0.5)
    else:
        raise UIStartupError(f"code location not loaded within {timeout_s:.0f}s: {last}\n{ui.tails()}")

    while wait_for_daemon and time.monotonic() < deadline:
        ui.assert_alive()
        statuses = ui.graphql(DAEMON_HEALTH_QUERY)["instance"]["daemonHealth"]["allDaemonStatuses"]
        last = statuses
        needed = {
            s["daemonType"]: s["healthy"] for s in statuses if s["daemonType"] in ("BACKFILL", "QUEUED_RUN_COORDINATOR")
        }
        if needed and all(needed.values()):
            return
        time.sleep(0.5)
    if wait_for_daemon:
        raise UIStartupError(f"daemon not healthy within {timeout_s:.0f}s: {last}\n{ui.tails()}")


@contextlib.contextmanager
def dagster_ui(
    pg_server: EmbeddedPostgres,
    workdir: Path,
    pipeline_db_url: str,
    sage_base_url: str | None = None,
    *,
    daemon: bool = True,
    startup_timeout_s: float = 90,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[DagsterUI]:
    """Webserver (+ daemon) on a free 127.0.0.1 port with a fresh instance database; stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    instance_db = create_database(pg_server, "dagster")
    instance_db_url = pg_server.url(instance_db, driver="postgresql+psycopg2")
    home = workdir / "dagster_home"
    env = ui_environment(
        os.environ,
        home=home,
        instance_db_url=instance_db_url,
        pipeline_db_url=pipeline_db_url,
        sage_base_url=sage_base_url,
        data_dir=workdir / "data",
        extra=extra_env,
    )
    write_dagster_home(home, env)

    ui = DagsterUI(url="", home=home, instance_db_url=instance_db_url, logs={})
    try:
        # A free port can be taken by another process in the seconds the webserver needs to start (the
        # tests run side by side): the webserver then exits with EADDRINUSE, and it starts again on another.
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                ui = _start(workdir, env, home, instance_db_url, daemon=daemon)
                _wait_until_ready(ui, startup_timeout_s, wait_for_daemon=daemon)
                break
            except (AssertionError, UIStartupError):
                if attempt == PORT_ATTEMPTS or not _port_was_taken(ui):
                    raise
                print(f"\n{ui.url}: port taken meanwhile, starting again on another", file=sys.stderr)
                for proc in ui.procs.values():
                    _stop(proc)
        yield ui
    except BaseException:
        print(f"\nDagster UI at {ui.url}, DAGSTER_HOME {home}\n{ui.tails()}", file=sys.stderr)
        raise
    finally:
        for proc in ui.procs.values():
            _stop(proc)


PORT_ATTEMPTS = 3


def _port_was_taken(ui: DagsterUI) -> bool:
    """Whether the webserver exited because its port was in use when it came to bind it."""
    log = ui.logs.get("webserver")
    proc = ui.procs.get("webserver")
    if log is None or proc is None or proc.poll() is None or not log.exists():
        return False
    return "address already in use" in log.read_text(errors="replace")


def _start(workdir: Path, env: Mapping[str, str], home: Path, instance_db_url: str, *, daemon: bool) -> DagsterUI:
    """Start one code server, then the webserver (on a port free right now) and, with `daemon`, the daemon
    on it, as `stripe-sage ui` does (runtime/code_server.py)."""
    port, code_port = free_port(), free_port()
    ui = DagsterUI(url=f"http://127.0.0.1:{port}", home=home, instance_db_url=instance_db_url, logs={})

    def launch(name: str, cmd: list[str]) -> subprocess.Popen:
        ui.logs[name] = workdir / f"{name}.log"
        with ui.logs[name].open("wb") as log:
            # Own session = own process group, so the code servers and run workers die with it.
            ui.procs[name] = subprocess.Popen(
                cmd,
                cwd=PROJECT_ROOT,
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return ui.procs[name]

    for attempt in range(1, PORT_ATTEMPTS + 1):
        code_server = launch("code_server", code_server_command(BIN_DIR, "127.0.0.1", code_port))
        try:
            wait_until_serving(code_server, "127.0.0.1", code_port, timeout_s=120)
            break
        except RuntimeError as err:
            _stop(code_server)
            # Its port can be taken in the seconds the code takes to load (it binds after loading).
            if attempt == PORT_ATTEMPTS or "CouldNotBindGrpcServerToAddress" not in ui.tails():
                raise UIStartupError(f"{err}\n{ui.tails()}") from err
            code_port = free_port()
    workspace = str(write_grpc_workspace(workdir / "workspace.yaml", "127.0.0.1", code_port))
    launch("webserver", [str(BIN_DIR / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", workspace])
    if daemon:
        launch("daemon", [str(BIN_DIR / "dagster-daemon"), "run", "-w", workspace])
    return ui
