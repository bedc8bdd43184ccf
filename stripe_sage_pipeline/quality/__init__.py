"""Great Expectations suites kept as code; `run_suite(name, url)` is what Dagster's checks call."""

from stripe_sage_pipeline.quality.suites import SUITES, Check, CheckResult, Result, run_suite, suite_checks

__all__ = ["SUITES", "Check", "CheckResult", "Result", "run_suite", "suite_checks"]
