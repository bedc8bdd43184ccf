"""`stripe-sage doctor`: one line per check of the set-up; exit status 0 only when all pass."""

from __future__ import annotations

import argparse

from stripe_sage_pipeline.cli.checks import run_checks


def main_doctor(args: argparse.Namespace) -> int:
    """Print each check as it completes; 0 when all pass, 1 otherwise."""
    results = run_checks(only=args.only, echo=lambda line: print(line, flush=True))
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"{len(failed)} of {len(results)} checks failed.")
        return 1
    print(f"All {len(results)} checks passed.")
    return 0
