"""The warm run worker: one long-lived process that has imported Dagster, the code location and the
heavy libraries its runs use, and forks a child per run (`runtime/run_launcher.py` starts and feeds it).

Dagster's default launcher starts every run in a fresh interpreter spawned by the code server, and
each one imports Dagster (~1 s), the code location (~3 s: dagster-dbt imports dbt-core) and, for
the runs that check data, Great Expectations (~3.5 s) before its first step: about 8 CPU-seconds a
run on this project, which every sensor and scheduled run pays again. A fork of a process that has
already imported them starts the run in a few milliseconds.

What the child runs is `dagster api execute_run <args>`, the command every Dagster launcher that
starts runs as processes or containers runs, through Dagster's own command-line entry point in the
forked process: run storage, events, cancellation and exit codes are Dagster's.

Protocol (one JSON object per line): on stdin `{"args": ["api", "execute_run", "..."]}`; on the
stdout it was started with, `{"ready": seconds}` once preloaded (or `{"error": text}` and exit), then
per request `{"pid": n}` (the run's process) or `{"stale": [files]}` and exit when a source file of
the code location (or a watched path) changed since the preload: the launcher starts a fresh worker,
as a code server reload would load the new code. The worker exits when its stdin closes (the process
that launched it is gone); children already running carry on to the end of their run.

Fork safety: the worker runs no thread and holds no connection while it waits (checked after the
preload; a library that starts a thread there is named on stderr and the worker refuses to start).

    python -m stripe_sage_pipeline.runtime.warm_worker <JobPythonOrigin JSON> [--preload MODULE ...]
        [--watch PATH ...]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import select
import signal
import sys
import threading
import time
import traceback
import types
from collections.abc import Iterable
from pathlib import Path

from stripe_sage_pipeline.runtime.gc_policy import relax_for_process

# Directories under a watched path whose files are outputs, not sources (dbt's target, logs, packages).
SKIP_DIRS = frozenset({"target", "logs", "dbt_packages", "__pycache__", "node_modules"})
REAP_EVERY_S = 1.0


def watched_files(code_dir: Path, watch: Iterable[Path], modules: Iterable[object]) -> dict[str, int]:
    """mtime (ns) of every source file the worker's code depends on: the modules loaded from under the
    code location's working directory, and every file under the watched paths (outputs skipped)."""
    # Plain prefix tests (the folder as given and with its links resolved): resolving every module's path
    # cost ~0.35 s per fork with a virtualenv inside the project (4k modules).
    prefixes = tuple({os.path.join(os.path.abspath(code_dir), ""), os.path.join(os.path.realpath(code_dir), "")})
    out: dict[str, int] = {}
    for mod in modules:
        if not_loaded_yet(mod):
            continue  # reading its __file__ would execute it (scipy.stats, deferred by quality/gx_import)
        f = getattr(mod, "__file__", None)
        if f and os.path.abspath(f).startswith(prefixes):
            out[f] = _mtime(f)
    for root in watch:
        if root.is_file():
            out[str(root)] = _mtime(root)
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")]
            for name in filenames:
                if not name.startswith("."):
                    f = os.path.join(dirpath, name)
                    out[f] = _mtime(f)
    return out


def not_loaded_yet(mod: object) -> bool:
    """A module registered by `importlib.util.LazyLoader` and not executed yet: any attribute read executes it."""
    kind = type(mod)
    return kind is not types.ModuleType and isinstance(mod, types.ModuleType) and kind.__name__ == "_LazyModule"


def _mtime(path: str | Path) -> int:
    """The file's mtime in ns; -1 when it is gone (a removed module or file counts as a change)."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def changed_files(before: dict[str, int], after: dict[str, int]) -> list[str]:
    """Files added, removed or modified between two `watched_files` snapshots."""
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def _preload(origin_json: str, preload: list[str]) -> None:
    """Import Dagster, load the code location as the run's process will, then import `preload`."""
    from dagster import deserialize_value

    # Dagster's own loader, as `api execute_run` uses it (no public equivalent; DECISIONLOG 33).
    from dagster._utils.hosted_user_process import recon_repository_from_origin

    origin = deserialize_value(origin_json)
    recon_repository_from_origin(origin.repository_origin).get_definition()
    for name in preload:
        importlib.import_module(name)


def _run_child(args: list[str]) -> int:
    """In the forked child: `dagster api execute_run ...` through Dagster's own CLI entry point."""
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # The `dagster` executable's own entry point (its console script points into this module).
    from dagster._cli import ENV_PREFIX, cli

    try:
        cli.main(args=args, prog_name="dagster", auto_envvar_prefix=ENV_PREFIX, standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def _fork(args: list[str], close_fds: tuple[int, ...]) -> int:
    """Fork; the child runs `args` and exits with the run's exit code, never returning here."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)  # the worker's stdin (requests) is not the run's
        os.close(devnull)
        for fd in close_fds:
            os.close(fd)
        code = _run_child(args)
    except BaseException:  # noqa: BLE001 - the child must never return into the worker's loop
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def reap_children() -> int:
    """Collect the exit status of every child that ended (no zombies left behind); how many still run."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return 0
        if pid == 0:
            return 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("origin", help="the JobPythonOrigin of a run of the code location, serialized")
    ap.add_argument("--preload", action="append", default=[], help="module to import before forking")
    ap.add_argument("--watch", action="append", default=[], help="path whose files, when changed, end the worker")
    args = ap.parse_args(argv)

    # stdout is the protocol; anything a library prints goes to stderr (the launching process's log).
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the runs handle it
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))

    def say(**msg) -> None:
        proto.write(json.dumps(msg) + "\n")

    t0 = time.monotonic()
    try:
        _preload(args.origin, args.preload)
    except BaseException:  # noqa: BLE001 - reported to the launcher, which falls back to the default
        say(error=traceback.format_exc())
        return 1
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if threads:
        say(error=f"threads running after the preload, not safe to fork: {threads}")
        return 1
    relax_for_process()  # the runs forked from here inherit a frozen heap and fewer collections
    code_dir, watch = Path.cwd(), [Path(w) for w in args.watch]
    snapshot = watched_files(code_dir, watch, list(sys.modules.values()))
    say(ready=round(time.monotonic() - t0, 3))

    stdin = sys.stdin.buffer
    while True:
        readable, _, _ = select.select([stdin], [], [], REAP_EVERY_S)
        reap_children()
        if not readable:
            continue
        line = stdin.readline()
        if not line:
            return 0  # the launching process is gone
        request = json.loads(line)
        changed = changed_files(snapshot, watched_files(code_dir, watch, list(sys.modules.values())))
        if changed:
            say(stale=changed[:20])
            return 0
        say(pid=_fork(request["args"], close_fds=(proto.fileno(),)))


if __name__ == "__main__":
    sys.exit(main())
