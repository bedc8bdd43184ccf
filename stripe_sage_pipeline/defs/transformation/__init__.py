"""Transformation stage: the finance mapping and the dbt models (dbt tests show as asset checks).

dbt sources map onto the ingestion assets' keys (`stripe_staging/<table>`) and onto
`finance/mapping`, so the graph is one lineage from Stripe to the marts; models keep their
Postgres `schema/table` as key (`finance/fct_journal_lines`, `finance_staging/stg_stripe__charges`).
dbt data tests become blocking asset checks through dagster-dbt; dbt unit tests, which dagster-dbt
leaves out, become blocking asset checks on the model they test here, reported from the build's
run results.
"""

import functools
import json
import os
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, DbtProject
from dagster_dbt.asset_utils import DAGSTER_DBT_SELECT_METADATA_KEY, DBT_DEFAULT_SELECT, build_dbt_specs

from stripe_sage_pipeline.defs.resources import PostgresResource
from stripe_sage_pipeline.transform.build import (
    DBT_PROJECT_DIR,
    apply_dbt_env,
    dbt_target_dir,
    plan_build,
    prepare_database,
    record_build,
)
from stripe_sage_pipeline.transform.manifest import ensure_fresh_manifest
from stripe_sage_pipeline.transform.mapping import load_mapping, mapping_markdown, mapping_rows
from stripe_sage_pipeline.transform.marts import MARTS_POOL, MARTS_RUN_TAG, marts_lock

MAPPING_KEY = dg.AssetKey(["finance", "mapping"])


def _dbt_executable() -> str:
    """dbt as installed beside this interpreter (a venv that is not activated), else on PATH: the project's
    `stripe-sage-dbt` entry point (dbt with a `--version` that skips dbt's start-up), else dbt itself."""
    for name in ("stripe-sage-dbt", "dbt"):
        beside = Path(sys.executable).parent / name
        if beside.exists():
            return str(beside)
    return shutil.which("stripe-sage-dbt") or "dbt"


class FinanceDbtCliResource(DbtCliResource):
    """dagster-dbt's dbt resource, without the in-process dbt adapter it opens before every invocation.

    dagster-dbt registers a dbt adapter in the run's own process (loading the profile, the project and
    dbt's base macros) only for `fetch_row_counts` and `fetch_column_metadata`, which this project does
    not call: ~1.7 s of CPU in every dbt step, on a webhook's way to Sage. The build itself runs in the
    dbt subprocess as before; an invocation without an adapter is what dagster-dbt does for dbt Fusion.
    """

    def _initialize_dbt_core_adapter(self, args: Sequence[str]) -> None:  # type: ignore[override]
        return None


@functools.cache
def dbt_project() -> DbtProject:
    """The dbt project, with its manifest parsed on first use when no manifest exists yet."""
    project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
    project.prepare_if_dev()
    # Outside `dagster dev` nothing prepares the manifest: parse it when missing or older than the project.
    ensure_fresh_manifest(DBT_PROJECT_DIR, project.manifest_path)
    return project


class FinanceDbtTranslator(DagsterDbtTranslator):
    """Sources -> ingestion keys (stripe_staging/<table>) and finance/mapping; models -> <schema>/<name>."""

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None) -> dg.AssetSpec:
        """The default spec with the keys and group of this pipeline."""
        spec = super().get_asset_spec(manifest, unique_id, project)
        props = self.get_resource_props(manifest, unique_id)
        if props["resource_type"] == "source":
            if props["source_name"] == "finance_config":
                return spec.replace_attributes(key=MAPPING_KEY)
            return spec.replace_attributes(key=dg.AssetKey([props["schema"], props["name"]]))
        return spec.replace_attributes(key=dg.AssetKey([props["schema"], props["name"]]), group_name="finance")


TRANSLATOR = FinanceDbtTranslator(
    settings=DagsterDbtTranslatorSettings(enable_asset_checks=True, enable_duplicate_source_asset_keys=True)
)


@dg.asset(key=MAPPING_KEY, group_name="finance", kinds={"yaml", "postgres"}, pool=MARTS_POOL)
def finance_mapping(context: dg.AssetExecutionContext, postgres: PostgresResource) -> dg.MaterializeResult:
    """The finance mapping (mapping.yaml), validated and written to finance_config; shown as a table."""
    m = load_mapping()
    with marts_lock(postgres.url(), exclusive=True, on_wait=context.log.info):
        prepare_database(postgres.url(), m)
    rows = mapping_rows(m)
    context.log.info("mapping %s: %d entries, posting mode %s", m.fingerprint(), len(rows), m.posting_mode)
    return dg.MaterializeResult(
        metadata={
            "mapping": dg.MetadataValue.md(mapping_markdown(m)),
            "fingerprint": m.fingerprint(),
            "posting_mode": m.posting_mode,
            "accounts": len(m.chart_of_accounts),
        }
    )


def unit_test_check_specs(manifest: Mapping[str, Any]) -> list[dg.AssetCheckSpec]:
    """One blocking check per dbt unit test, on the asset of the model it tests (named as the test)."""
    specs = []
    for ut in manifest.get("unit_tests", {}).values():
        model = manifest["nodes"][f"model.{ut['package_name']}.{ut['model']}"]
        specs.append(
            dg.AssetCheckSpec(
                name=ut["name"],
                asset=dg.AssetKey([model["schema"], model["name"]]),
                blocking=True,
                description=f"dbt unit test of {ut['model']}: {(ut.get('description') or '').strip()}"[:1000],
            )
        )
    return specs


def unit_test_results(run_results: Mapping[str, Any], specs: list[dg.AssetCheckSpec]) -> Iterator[dg.AssetCheckResult]:
    """The check results of the unit tests a dbt invocation ran (none when the build skipped them)."""
    by_name = {s.name: s for s in specs}
    for r in run_results.get("results", []):
        uid = r.get("unique_id", "")
        name = uid.rsplit(".", 1)[-1]
        if not uid.startswith("unit_test.") or name not in by_name:
            continue
        yield dg.AssetCheckResult(
            asset_key=by_name[name].asset_key,
            check_name=name,
            passed=r.get("status") == "pass",
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "status": str(r.get("status")),
                "message": (r.get("message") or "")[:2000],
                "execution_time_s": round(r.get("execution_time") or 0, 3),
            },
        )


def keep_partial_parse(invocation_target: Path) -> None:
    """Keep an invocation's parse for the next one, so dbt parses only what changed.

    dagster-dbt copies target/partial_parse.msgpack into each invocation's own folder; dbt discards a
    parse made for another profile (e.g. the `dbt parse` that prepared the manifest, or a run against
    another database), so without this every run of the code location parsed the whole project again.
    """
    src = invocation_target / "partial_parse.msgpack"
    if not src.exists():
        return
    dst = dbt_target_dir() / src.name
    tmp = dst.with_name(f"{src.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)  # atomic: a concurrent invocation copies the old file or the new one, never half


_MANIFEST = json.loads(dbt_project().manifest_path.read_text())
_SPECS, _TEST_CHECK_SPECS = build_dbt_specs(
    translator=TRANSLATOR,
    manifest=_MANIFEST,
    select=DBT_DEFAULT_SELECT,
    exclude="",
    selector="",
    io_manager_key=None,
    project=dbt_project(),
)
UNIT_TEST_CHECK_SPECS = unit_test_check_specs(_MANIFEST)


# What @dbt_assets builds, plus the unit-test checks it has no place for.
@dg.multi_asset(
    name="finance_dbt_models",
    specs=_SPECS,
    check_specs=[*_TEST_CHECK_SPECS, *UNIT_TEST_CHECK_SPECS],
    can_subset=True,
    op_tags={DAGSTER_DBT_SELECT_METADATA_KEY: DBT_DEFAULT_SELECT},
    allow_arbitrary_check_specs=True,
    pool=MARTS_POOL,
)
def finance_dbt_models(
    context: dg.AssetExecutionContext, dbt: FinanceDbtCliResource, postgres: PostgresResource
) -> Iterator[Any]:
    """The finance dbt models (staging views, classification, journal lines, invoice lines, payouts, customers).

    The build follows `plan_build`: a changed mapping forces a full refresh; the staging views and
    the unit tests run when the dbt code changed since the last complete build (or on a full
    refresh). A complete, successful build is recorded, with its mapping, so the next run can tell
    and the loads post in the mode the marts were built with. The whole build holds the marts lock
    exclusively: no other build and no load touches the marts meanwhile. The unit tests' outcomes
    are reported as their checks (also when one fails, before the run fails); a successful
    invocation's target folder (compiled SQL, logs) is removed, a failed one's kept for diagnosis.
    """
    url = postgres.url()
    with marts_lock(url, exclusive=True, on_wait=context.log.info) as waited:
        if waited >= 1:
            context.log.info(f"marts lock acquired after {waited:.1f}s")
        # The mapping in finance_config must match the file, whichever asset ran last.
        mapping = prepare_database(url)
        apply_dbt_env(url)
        plan = plan_build(url)
        for reason in plan.reasons:
            context.log.info(reason)
        invocation = dbt.cli(["build", *plan.flags()], context=context, raise_on_error=False)
        yield from invocation.stream()
        selected = context.selected_asset_check_keys
        run_results = invocation.get_artifact("run_results.json")
        yield from (
            r
            for r in unit_test_results(run_results, UNIT_TEST_CHECK_SPECS)
            if dg.AssetCheckKey(r.asset_key, r.check_name) in selected
        )
        if not invocation.is_successful():
            raise invocation.get_error() or RuntimeError("dbt build failed")
        keep_partial_parse(invocation.target_path)
        shutil.rmtree(invocation.target_path, ignore_errors=True)
        if not context.is_subset:
            record_build(url, mapping)


transform_job = dg.define_asset_job(
    "transform_job",
    selection=dg.AssetSelection.groups("finance"),
    tags=MARTS_RUN_TAG,
    description="Rebuild the finance marts from staging (mapping, dbt models and tests) and run the blocking checks.",
)

defs = dg.Definitions(
    assets=[finance_mapping, finance_dbt_models],
    jobs=[transform_job],
    resources={
        "dbt": FinanceDbtCliResource(project_dir=dbt_project(), dbt_executable=_dbt_executable()),
    },
)
