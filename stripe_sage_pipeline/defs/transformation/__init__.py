"""Transformation stage: the finance mapping and the dbt models (dbt tests show as asset checks).

dbt sources map onto the ingestion assets' keys (`stripe_staging/<table>`) and onto
`finance/mapping`, so the graph is one lineage from Stripe to the marts; models keep their
Postgres `schema/table` as key (`finance/fct_journal_lines`, `finance_staging/stg_stripe__charges`).
"""


import functools
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, DbtProject, dbt_assets

from ...mapping import load_mapping, mapping_markdown, mapping_rows
from ...transform import DBT_PROJECT_DIR, apply_dbt_env, plan_build, prepare_database, record_build
from ..resources import PostgresResource

MAPPING_KEY = dg.AssetKey(["finance", "mapping"])


def _dbt_executable() -> str:
    """The dbt installed beside this interpreter (a venv that is not activated), else dbt on PATH."""
    beside = Path(sys.executable).parent / "dbt"
    return str(beside) if beside.exists() else "dbt"


@functools.cache
def dbt_project() -> DbtProject:
    """The dbt project, with its manifest parsed on first use when no manifest exists yet."""
    project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
    project.prepare_if_dev()
    if not project.manifest_path.exists():
        # Outside `dagster dev` nothing prepares the manifest; parsing needs no database connection.
        from dbt.cli.main import dbtRunner

        res = dbtRunner().invoke(["parse", "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR), "--quiet"])
        if not res.success:
            raise RuntimeError(f"dbt parse failed: {res.exception}")
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


@dg.asset(key=MAPPING_KEY, group_name="finance", kinds={"yaml", "postgres"})
def finance_mapping(context: dg.AssetExecutionContext, postgres: PostgresResource) -> dg.MaterializeResult:
    """The finance mapping (mapping.yaml), validated and written to finance_config; shown as a table."""
    m = load_mapping()
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


@dbt_assets(manifest=dbt_project().manifest_path, project=dbt_project(), dagster_dbt_translator=TRANSLATOR,
            name="finance_dbt_models")
def finance_dbt_models(
    context: dg.AssetExecutionContext, dbt: DbtCliResource, postgres: PostgresResource
) -> Iterator[Any]:
    """The finance dbt models (staging views, classification, journal lines, invoice lines, payouts, customers).

    The build follows `plan_build`: a changed mapping forces a full refresh; dbt unit tests run when
    the dbt code changed since the last complete build (or on a full refresh). A complete, successful
    build is recorded so the next run can tell.
    """
    url = postgres.url()
    # The mapping in finance_config must match the file, whichever asset ran last.
    prepare_database(url)
    apply_dbt_env(url)
    plan = plan_build(url)
    for reason in plan.reasons:
        context.log.info(reason)
    invocation = dbt.cli(["build", *plan.flags()], context=context)
    yield from invocation.stream()
    if not context.is_subset:
        record_build(url)


defs = dg.Definitions(
    assets=[finance_mapping, finance_dbt_models],
    resources={
        "dbt": DbtCliResource(project_dir=dbt_project(), dbt_executable=_dbt_executable()),
    },
)
