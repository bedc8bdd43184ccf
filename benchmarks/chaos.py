"""Chaos benchmark: the same history posted fault-free and under faults and kills, compared item by item.

1. A generated Stripe history is extracted from the emulator while it answers 5% 5xx, checked against the
   emulator's counts, and built into the marts (invoice-driven revenue, detail posting: customers,
   invoices, cash receipts and journal entries). The database is then cloned twice.
2. Reference: clone A posted to a fault-free Sage sandbox, in process, day by day.
3. Chaos: clone B posted through Dagster as production runs it — a `dagster-daemon` on the project's
   `dagster.yaml` (queued runs, one-slot `sage_api` pool, run monitoring, run retries, the dead-run
   recovery sensor), one `load_job` run per posting day queued through the webserver's GraphQL API — against a
   Sage sandbox answering 10% 429, 10% 503 and 5% commit-then-504. Meanwhile the benchmark SIGKILLs
   the run worker of `--kills` load runs and the daemon once, at random points. The only thing it does
   besides killing is what a process supervisor (systemd `Restart=always`) does: start the daemon again.
   Nothing repairs Dagster by hand: dead runs are failed and their slots freed by the recovery sensor,
   retried by `run_retries`, and the posting ledger resends in-flight items under their keys.
4. The two Sage states are compared item by item: missing, extra, differing (GL postings of the same
   external_ref), duplicates, and the trial balance per currency.

    python benchmarks/chaos.py [--days 10] [--volume 1.6] [--seed 21] [--kills 3] [--target sagepro]

Heavy (a daemon, a run worker per day, two Sage sandboxes, one dbt build): run it on a quiet machine.
Uses STRIPE_SAGE_DATABASE_URL's server when set, else the embedded one (STRIPE_SAGE_PG_PORT /
STRIPE_SAGE_DATA_DIR choose which); works in databases of its own (`chaos_*`), recreated each time.
The target is chosen by `--target` or SAGE_TARGET (the pipeline's own setting): `sagepro` (the Sage Pro
sandbox) or `intacct` (the Sage Intacct emulator, the same fault mix; records and GL lines read back through
its query service, keyed by the Stripe id each carries). Both the reference and the chaos load go through
the pipeline's target factory. Another target plugs in by adding an entry to TARGETS (a sandbox with fault
injection, the environment that points the pipeline at it, a reader of its records and GL postings, and
its count of injected faults).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import yaml

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DAGSTER_TELEMETRY_ENABLED", "false")
os.environ.setdefault("DBT_TARGET_PATH", os.path.join(tempfile.gettempdir(), "stripe_sage_bench_chaos_dbt_target"))

from stripe_sage_pipeline.extract import extract  # noqa: E402
from stripe_sage_pipeline.extract.client import StripeReader  # noqa: E402
from stripe_sage_pipeline.extract.staging import ensure_schema  # noqa: E402
from stripe_sage_pipeline.extract.tables import TABLES  # noqa: E402
from stripe_sage_pipeline.load.customers import push_customers  # noqa: E402
from stripe_sage_pipeline.load.post import LoadStats, Poster, load_partition, make_client  # noqa: E402
from stripe_sage_pipeline.runtime.db import database_url, libpq_url  # noqa: E402
from stripe_sage_pipeline.runtime.recovery import worker_pid  # noqa: E402
from stripe_sage_pipeline.sage.factory import make_target_client  # noqa: E402
from stripe_sage_pipeline.settings import (  # noqa: E402
    PROJECT_ROOT,
    SANDBOX_SAGE_PASSWORD,
    SANDBOX_SAGE_USER,
    load_settings,
)
from stripe_sage_pipeline.transform.build import dbt_build  # noqa: E402
from stripe_sage_pipeline.transform.mapping import parse_mapping  # noqa: E402
from stripe_sage_sandboxes.stripe_emulator import EmulatorConfig, EmulatorServer, EmulatorState, generate  # noqa: E402

BIN = Path(sys.executable).parent
HOUR = 3600


# -- targets -----------------------------------------------------------------------------------------


@dataclass
class Target:
    """How the benchmark drives one accounting target."""

    start: Callable[..., Any]  # (data_dir, faults: bool, seed) -> a running sandbox with .stop()
    env: Callable[[Any], dict[str, str]]  # the pipeline's environment pointing at the sandbox
    state: Callable[[Any], dict[str, Any]]  # records per resource and GL postings, independent of ids
    faults: Callable[[Any], dict[str, int]]  # faults the sandbox injected, by kind


def _sage_start(data_dir: Path, faults: bool, seed: int) -> Any:
    from stripe_sage_sandboxes.sage import SageSandboxConfig, SageSandboxServer

    rates = {"fault_429_rate": 0.10, "fault_5xx_rate": 0.10, "fault_commit_504_rate": 0.05} if faults else {}
    return SageSandboxServer(
        SageSandboxConfig(
            data_dir=data_dir, rate_per_minute=60_000, max_concurrent=16, fault_retry_after_s=0, seed=seed, **rates
        )
    ).start()


def _sage_env(srv: Any) -> dict[str, str]:
    return {"SAGE_TARGET": "sagepro", "SAGEPRO_BASE_URL": srv.base_url, "SAGEPRO_RATE_PER_MINUTE": "6000"}


def _sage_state(srv: Any) -> dict[str, Any]:
    client, _ = make_client(srv.base_url, SANDBOX_SAGE_USER, SANDBOX_SAGE_PASSWORD, max_retries=10)
    try:
        postings: dict[str, Counter] = {}
        for p in client.list_all("/gl-postings"):
            postings.setdefault(p["external_ref"], Counter())[
                (p["glacnt"], p["posting_date"], p["debit"], p["credit"], p["currency"], p["doc_type"])
            ] += 1
        refs = {
            r: Counter(x["external_ref"] for x in client.list_all(f"/{r}"))
            for r in ("customers", "invoices", "cash-receipts", "journal-entries")
        }
        return {"postings": postings, "refs": refs}
    finally:
        client.close()


def _sage_faults(srv: Any) -> dict[str, int]:
    return dict(Counter(e.fault for e in srv.request_log if e.fault))


def _intacct_start(data_dir: Path, faults: bool, seed: int) -> Any:
    from stripe_sage_sandboxes.targets import start_target_sandbox

    rate = {"rate_429": 0.10, "rate_5xx": 0.10, "rate_commit_504": 0.05} if faults else {}
    srv, _, _ = start_target_sandbox(
        "intacct", data_dir, seed=seed, retry_after_s=0, rate_per_minute=60_000, **rate
    )  # in memory: data_dir unused
    return srv


def _intacct_env(srv: Any) -> dict[str, str]:
    return {"SAGE_TARGET": "intacct", "INTACCT_BASE_URL": srv.base_url, "INTACCT_RATE_PER_MINUTE": "6000"}


def _intacct_state(srv: Any) -> dict[str, Any]:
    """Records and GL lines through Intacct's query service, keyed by the Stripe id each carries: customers by
    `notes` (stripe:cus_…), invoices by `invoiceNumber`, payments by `documentNumber`, journal entries (and
    fee entries, `txn_…~fee`) by `referenceNumber`; GL lines (AR batches included) by their entry's
    `referenceNumber`, with the journal as the document type and the location's currency."""
    from stripe_sage_pipeline.sage.intacct.payloads import STRIPE_NOTE

    client, _ = make_target_client(load_settings(_intacct_env(srv)), max_retries=10)
    try:
        postings: dict[str, Counter] = {}
        for ln in client.query(
            "general-ledger/journal-entry-line",
            [
                "journalEntry.referenceNumber",
                "journalEntry.postingDate",
                "journalEntry.glJournal.id",
                "glAccount.id",
                "txnType",
                "txnAmount",
                "dimensions.location.id",
            ],
            [{"$eq": {"state": "posted"}}],
        ):
            debit = ln["txnAmount"] if ln["txnType"] == "debit" else None
            credit = ln["txnAmount"] if ln["txnType"] == "credit" else None
            postings.setdefault(ln["journalEntry.referenceNumber"], Counter())[
                (
                    ln["glAccount.id"],
                    ln["journalEntry.postingDate"],
                    debit,
                    credit,
                    str(ln["dimensions.location.id"]).lower(),  # the location of a currency is its ISO code here
                    ln["journalEntry.glJournal.id"],
                )
            ] += 1
        by = {
            "customers": ("accounts-receivable/customer", "notes"),
            "invoices": ("accounts-receivable/invoice", "invoiceNumber"),
            "cash-receipts": ("accounts-receivable/payment", "documentNumber"),
            "journal-entries": ("general-ledger/journal-entry", "referenceNumber"),
        }
        refs = {
            resource: Counter(str(row[fld]).removeprefix(STRIPE_NOTE) for row in client.query(obj, ["key", fld]))
            for resource, (obj, fld) in by.items()
        }
        return {"postings": postings, "refs": refs}
    finally:
        client.close()


def _intacct_faults(srv: Any) -> dict[str, int]:
    return srv.faults_injected


# Keyed like the pipeline's own SAGE_TARGET setting.
TARGETS: dict[str, Target] = {
    "sagepro": Target(_sage_start, _sage_env, _sage_state, _sage_faults),
    "intacct": Target(_intacct_start, _intacct_env, _intacct_state, _intacct_faults),
}


# -- data --------------------------------------------------------------------------------------------


def _db_url(name: str) -> str:
    return urlunsplit(urlsplit(database_url())._replace(path=f"/{name}"))


def _recreate(name: str, template: str | None = None) -> str:
    with psycopg.connect(libpq_url(_db_url("postgres")), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}"' + (f' template "{template}"' if template else ""))
    return _db_url(name)


def _mapping_file(workdir: Path) -> Path:
    data = yaml.safe_load((PROJECT_ROOT / "mapping.yaml").read_text())
    data.update({"revenue_mode": "invoice_driven", "posting_mode": "detail"})
    path = workdir / "mapping-chaos.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def stage(args: argparse.Namespace, workdir: Path) -> tuple[str, dict[str, Any]]:
    """Extract the generated history (Stripe answering 5% 5xx) and build the marts; returns the stage DB URL."""
    url = _recreate("chaos_stage")
    state = EmulatorState(EmulatorConfig(seed=args.seed, fault_5xx_rate=0.05))
    generate(state, seed=args.seed, days=args.days, volume=args.volume)
    summary = state.summary()
    hours = [h for per in summary["counts_by_hour"].values() for h in per]
    start = int(datetime.strptime(min(hours), "%Y-%m-%dT%H").replace(tzinfo=UTC).timestamp())
    end = int(datetime.strptime(max(hours), "%Y-%m-%dT%H").replace(tzinfo=UTC).timestamp()) + HOUR
    srv = EmulatorServer(state, port=0).start()
    try:
        reader = StripeReader(
            "sk_test_emulator", srv.url, rate_limit_per_s=None, backoff_base_s=0.02, backoff_cap_s=0.5, max_retries=10
        )
        with psycopg.connect(libpq_url(url)) as conn:
            ensure_schema(conn)
        for table in TABLES:
            res = extract.extract_window(reader, libpq_url(url), table, start, end)
            extract.raise_if_rejected(res.rejected)
    finally:
        srv.stop()
    with psycopg.connect(libpq_url(url)) as conn:
        got = {t: conn.execute(f"select count(*) from stripe_staging.{t}").fetchone()[0] for t in TABLES}
    want = {t: n for t, n in summary["counts"].items() if t in got}
    if got != want:
        raise SystemExit(f"staging differs from the emulator after the 5xx run: {got} vs {want}")
    mapping_path = _mapping_file(workdir)
    dbt_build(url=url, mapping=parse_mapping(yaml.safe_load(mapping_path.read_text()), str(mapping_path)))
    return url, {
        "stripe_5xx": reader.stats.server_errors,
        "objects": sum(want.values()),
        "mapping": str(mapping_path),
        "first_day": datetime.fromtimestamp(start, UTC).date(),
    }


def posting_days(url: str) -> list[date]:
    """Posting dates with journal entries (selected mode) or invoices, ascending."""
    with psycopg.connect(libpq_url(url)) as conn:
        return [
            r[0]
            for r in conn.execute(
                "select distinct posting_date from finance.fct_journal_lines where is_selected_mode"
                " union select distinct posting_date from finance.fct_invoice_lines order by 1"
            ).fetchall()
        ]


def post_reference(url: str, env: dict[str, str], mapping_path: str, days: list[date]) -> dict[str, LoadStats]:
    """The fault-free load, in process, day by day (customers, invoices, receipts, journal entries), to the
    target the environment `env` chooses (the pipeline's own factory, `sage.factory.make_target_client`)."""
    mapping = parse_mapping(yaml.safe_load(Path(mapping_path).read_text()), mapping_path)
    client, counter = make_target_client(load_settings({**os.environ, **env}), max_retries=10)
    poster = Poster(url, client, workers=4, transport=counter)
    total: dict[str, LoadStats] = {}
    try:
        for day in days:
            res = load_partition(
                url, poster, day, mapping, customers=lambda d=day: push_customers(url, client, up_to=d, mapping=mapping)
            )
            for k, v in res.items():
                total.setdefault(k, LoadStats()).merge(v)
    finally:
        poster.close()
        client.close()
    return total


# -- the chaos run -----------------------------------------------------------------------------------


class Daemon:
    """`dagster-daemon run` as a supervised child: started, SIGKILLed, started again."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.proc: subprocess.Popen | None = None
        self.groups: list[int] = []  # every daemon's process group: its code server and run workers live there

    def start(self) -> None:
        log = open(self.log_path, "a")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", str(PROJECT_ROOT / "workspace.yaml")],
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.groups.append(self.proc.pid)

    def kill(self) -> None:
        """SIGKILL the daemon process only (its code server and run workers are left as a crash leaves them)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """End every daemon started and everything they started (code servers wait for their run workers on
        SIGTERM, so whatever is left after a grace period is SIGKILLed, group by group)."""
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        time.sleep(2)
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


@contextlib.contextmanager
def _webserver(env: dict[str, str], log_path: Path) -> Iterator[Any]:
    """A Dagster webserver on a free loopback port, for its GraphQL API (what the UI's Launch button uses)."""
    import httpx
    from dagster_graphql import DagsterGraphQLClient

    from stripe_sage_pipeline.runtime.embedded_pg import free_port

    port = free_port()
    log = open(log_path, "a")  # noqa: SIM115 (the child keeps it)
    proc = subprocess.Popen(
        [
            str(BIN / "dagster-webserver"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            str(PROJECT_ROOT / "workspace.yaml"),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=5).status_code == 200:
                    break
            if proc.poll() is not None:
                raise SystemExit(f"dagster-webserver exited; see {log_path}")
            time.sleep(1)
        yield DagsterGraphQLClient("127.0.0.1", port_number=port)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def _launch(client: Any, day: date, log_path: Path, wait_s: float = 300) -> str:
    """Queue the load_job run of one posting day, as the UI's launchpad does.

    /server_info answers before the code location has loaded (on a busy machine that takes a minute or
    more): until then the job is not found, so this retries for up to `wait_s` seconds."""
    tags = {"dagster/partition": f"{day:%Y-%m-%d}", "stripe_sage/chaos": "1"}
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job_execution("load_job", tags=tags)
        except Exception as exc:  # the code location may still be loading
            if time.monotonic() >= deadline:
                tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
                raise SystemExit(f"load_job could not be launched in {wait_s:.0f} s: {exc}\n{tail}") from exc
            time.sleep(5)


def _render_home(home: Path) -> None:
    from stripe_sage_pipeline.runtime.dagster_home import render_instance_config

    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(render_instance_config({}))


def chaos_run(
    args: argparse.Namespace,
    url: str,
    target: Target,
    srv: Any,
    mapping_path: str,
    first_day: date,
    days: list[date],
    workdir: Path,
) -> dict[str, Any]:
    """Post every day through Dagster under faults, SIGKILLing load workers and the daemon; no repair by hand."""
    import dagster as dg

    home = workdir / "dagster_home"
    _render_home(home)
    dagster_db = _recreate("chaos_dagster")
    env = {
        **os.environ,
        **target.env(srv),
        "DAGSTER_HOME": str(home),
        "DAGSTER_POSTGRES_URL": libpq_url(dagster_db).replace("postgresql://", "postgresql+psycopg2://", 1),
        "STRIPE_SAGE_DATABASE_URL": url,
        "STRIPE_SAGE_MAPPING": mapping_path,
        "STRIPE_SAGE_START_DATE": f"{first_day:%Y-%m-%d}-00:00",
        "STRIPE_SAGE_RECOVERY_INTERVAL_S": str(args.recovery_interval),
        "PYTHONPATH": str(PROJECT_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    os.environ.update({k: env[k] for k in ("DAGSTER_HOME", "DAGSTER_POSTGRES_URL")})
    instance = dg.DagsterInstance.get()
    rng = random.Random(args.seed)
    daemon = Daemon(env, workdir / "daemon.log")
    t0 = time.monotonic()
    daemon.start()
    kills: list[dict[str, Any]] = []
    killed_roots: set[str] = set()
    daemon_killed_at: float | None = None
    # Kill moments spread over the expected run time; the daemon dies between the first and the last.
    next_kill_at = t0 + rng.uniform(20, 40)
    daemon_kill_at = t0 + rng.uniform(60, 120)
    web = _webserver(env, workdir / "webserver.log")
    try:
        client = web.__enter__()
        for day in days:
            _launch(client, day, workdir / "webserver.log")
        launched = time.monotonic()
        print(
            f"  launched {len(days)} load_job runs in {launched - t0:.0f} s (daemon and webserver start-up included)",
            flush=True,
        )
        next_kill_at = max(next_kill_at, launched + rng.uniform(5, 20))
        daemon_kill_at = max(daemon_kill_at, launched + rng.uniform(40, 90))
        deadline = time.monotonic() + args.timeout
        done: set[str] = set()
        while time.monotonic() < deadline:
            runs = instance.get_runs(filters=dg.RunsFilter(job_name="load_job", tags={"stripe_sage/chaos": "1"}))
            done = {r.tags.get("dagster/partition") for r in runs if r.status == dg.DagsterRunStatus.SUCCESS}
            if len(done) == len(days):
                break
            now = time.monotonic()
            if len(kills) < args.kills and now >= next_kill_at:
                victims = [
                    r
                    for r in runs
                    if r.status == dg.DagsterRunStatus.STARTED and (r.root_run_id or r.run_id) not in killed_roots
                ]
                if victims:
                    run = rng.choice(victims)
                    pid, _ = worker_pid(instance, run.run_id)
                    if pid:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                            kills.append(
                                {
                                    "run": run.run_id[:8],
                                    "day": run.tags.get("dagster/partition"),
                                    "pid": pid,
                                    "at_s": round(now - t0),
                                }
                            )
                            killed_roots.add(run.root_run_id or run.run_id)
                            print(
                                f"  SIGKILL run worker {pid} of {run.tags.get('dagster/partition')} at"
                                f" {now - t0:.0f} s",
                                flush=True,
                            )
                            next_kill_at = now + rng.uniform(15, 45)
            if daemon_killed_at is None and now >= daemon_kill_at:
                daemon.kill()
                daemon_killed_at = now
                print(f"  SIGKILL dagster-daemon at {now - t0:.0f} s; the supervisor restarts it in 5 s", flush=True)
                time.sleep(5)
                daemon.start()
            time.sleep(1)
        runs = instance.get_runs(filters=dg.RunsFilter(job_name="load_job", tags={"stripe_sage/chaos": "1"}))
        statuses = Counter(r.status.value for r in runs)
        return {
            "seconds": round(time.monotonic() - t0),
            "days_done": len(done),
            "days": len(days),
            "runs": dict(statuses),
            "retries": sum(1 for r in runs if r.parent_run_id),
            "kills": kills,
            "daemon_killed_at_s": round(daemon_killed_at - t0) if daemon_killed_at else None,
        }
    finally:
        web.__exit__(None, None, None)
        daemon.stop()


# -- comparison --------------------------------------------------------------------------------------


def compare(ref: dict[str, Any], got: dict[str, Any]) -> dict[str, Any]:
    """Item by item: missing, extra, differing (GL postings of a ref) and duplicates, per resource."""
    out: dict[str, Any] = {"missing": {}, "extra": {}, "duplicates": {}, "differing": []}
    for resource, refs in ref["refs"].items():
        mine = got["refs"].get(resource, Counter())
        out["missing"][resource] = sorted(set(refs) - set(mine))
        out["extra"][resource] = sorted(set(mine) - set(refs))
        out["duplicates"][resource] = sorted(r for r, n in mine.items() if n > 1)
    for ext_ref in sorted(set(ref["postings"]) | set(got["postings"])):
        if ref["postings"].get(ext_ref) != got["postings"].get(ext_ref):
            out["differing"].append(ext_ref)
    return out


def trial_balance(state: dict[str, Any]) -> dict[str, Decimal]:
    """Σ debit − Σ credit of every GL posting, per currency (0 when every entry balances)."""
    tb: dict[str, Decimal] = {}
    for counter in state["postings"].values():
        for (_acct, _day, debit, credit, currency, _doc), n in counter.items():
            tb[currency] = tb.get(currency, Decimal(0)) + n * (Decimal(str(debit or 0)) - Decimal(str(credit or 0)))
    return dict(sorted(tb.items()))


def _ledger_outcomes(url: str) -> dict[str, int]:
    with psycopg.connect(libpq_url(url)) as conn:
        return dict(
            conn.execute(
                "select coalesce(post_outcome, status), count(*) from sage_sync.posting_ledger group by 1 order by 1"
            ).fetchall()
        )


def _alerts(url: str) -> dict[str, int]:
    with psycopg.connect(libpq_url(url)) as conn:
        if conn.execute("select to_regclass('sage_sync.alerts')").fetchone()[0] is None:
            return {}
        return dict(conn.execute("select kind, count(*) from sage_sync.alerts group by 1 order by 1").fetchall())


@contextlib.contextmanager
def _sandbox(target: Target, data_dir: Path, faults: bool, seed: int) -> Iterator[Any]:
    srv = target.start(data_dir, faults, seed)
    try:
        yield srv
    finally:
        srv.stop()


def main() -> int:
    """Run the benchmark and print its figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--days", type=int, default=10)
    p.add_argument("--volume", type=float, default=1.6)
    p.add_argument("--seed", type=int, default=21)
    p.add_argument("--kills", type=int, default=3, help="load run workers to SIGKILL (the daemon is killed once)")
    p.add_argument("--timeout", type=int, default=2400, help="seconds to wait for every day to post")
    p.add_argument("--recovery-interval", type=int, default=5, help="seconds between dead-run recovery passes")
    p.add_argument(
        "--min-postings",
        type=int,
        default=None,
        help="fewest reference postings for a PASS (default: 3000 from 10 days up, else 1)",
    )
    p.add_argument(
        "--target",
        default=os.environ.get("SAGE_TARGET", "sagepro"),
        choices=sorted(TARGETS),
        help="the accounting target (default: SAGE_TARGET, as the pipeline reads it)",
    )
    args = p.parse_args()
    target = TARGETS[args.target]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stripe-sage-chaos-") as tmp:
        workdir = Path(tmp)
        print(
            f"1/4 staging {args.days} generated days (volume {args.volume}, seed {args.seed}) from the emulator"
            " at 5% 5xx, then the marts",
            flush=True,
        )
        stage_url, info = stage(args, workdir)
        days = posting_days(stage_url)
        ref_url = _recreate("chaos_ref", template="chaos_stage")
        run_url = _recreate("chaos_run", template="chaos_stage")
        print(
            f"    {info['objects']} Stripe objects, {info['stripe_5xx']} Stripe 5xx retried, {len(days)} posting days",
            flush=True,
        )

        print("2/4 reference: fault-free load, in process", flush=True)
        with _sandbox(target, workdir / "target-ref", False, args.seed) as srv:
            stats = post_reference(ref_url, target.env(srv), info["mapping"], days)
            ref_state = target.state(srv)
        postings = sum(sum(c.values()) for c in ref_state["refs"].values())
        print(
            f"    {postings} records posted: "
            + ", ".join(f"{r} {sum(c.values())}" for r, c in ref_state["refs"].items())
            + f"; dead letters {sum(s.dead_lettered for s in stats.values())}",
            flush=True,
        )

        print(
            f"3/4 chaos: Dagster daemon + queued load_job runs, {args.target} at 10% 429 + 10% 503 + 5%"
            f" commit-then-504, {args.kills} run workers and the daemon SIGKILLed",
            flush=True,
        )
        with _sandbox(target, workdir / "target-chaos", True, args.seed + 1) as srv:
            run = chaos_run(args, run_url, target, srv, info["mapping"], info["first_day"], days, workdir)
            faults = target.faults(srv)
            got_state = target.state(srv)

        print("4/4 comparing the two states item by item", flush=True)
        diff = compare(ref_state, got_state)
        n = {k: sum(len(v) for v in diff[k].values()) for k in ("missing", "extra", "duplicates")}
        n["differing"] = len(diff["differing"])
        tb_ref, tb_got = trial_balance(ref_state), trial_balance(got_state)
        outcomes = _ledger_outcomes(run_url)
        print()
        print(
            f"postings (reference)      {postings}  ({', '.join(f'{r} {sum(c.values())}' for r, c in ref_state['refs'].items())})"
        )
        print(
            f"chaos run                 {run['days_done']}/{run['days']} days posted in {run['seconds']} s;"
            f" runs {run['runs']}, {run['retries']} automatic retries"
        )
        print(
            f"kills                     {len(run['kills'])} load run workers {[k['day'] for k in run['kills']]},"
            f" daemon at {run['daemon_killed_at_s']} s"
        )
        print(f"faults injected           {faults}; Stripe 5xx during extraction {info['stripe_5xx']}")
        print(f"ledger outcomes (chaos)   {outcomes}")
        print(f"alerts (chaos)            {_alerts(run_url)}")
        print(f"missing                   {n['missing']}  { ({k: v[:5] for k, v in diff['missing'].items() if v}) }")
        print(f"extra                     {n['extra']}  { ({k: v[:5] for k, v in diff['extra'].items() if v}) }")
        print(f"differing                 {n['differing']}  {diff['differing'][:5]}")
        print(
            f"duplicates                {n['duplicates']}  { ({k: v[:5] for k, v in diff['duplicates'].items() if v}) }"
        )
        print(
            "trial balance             "
            + ", ".join(f"{c.upper()} {v}" for c, v in tb_got.items())
            + f"  (reference: {', '.join(f'{c.upper()} {v}' for c, v in tb_ref.items())})"
        )
        print(f"total                     {time.monotonic() - t0:.0f} s")
        min_postings = args.min_postings if args.min_postings is not None else (3000 if args.days >= 10 else 1)
        failed = [
            why
            for why, bad in (
                (f"fewer than {min_postings} postings", postings < min_postings),
                ("missing/extra/differing/duplicates", any(n.values())),
                ("trial balance not 0", any(v != 0 for v in tb_got.values())),
                ("days not posted", run["days_done"] != run["days"]),
            )
            if bad
        ]
        ok = not failed
        print("RESULT                    " + ("PASS" if ok else f"FAIL ({'; '.join(failed)})"))
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
