"""The finance mapping: loads, validates with errors naming the key and value, renders, matches money.py."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from stripe_sage_pipeline import money
from stripe_sage_pipeline.settings import PROJECT_ROOT
from stripe_sage_pipeline.transform.build import DBT_PROJECT_DIR, apply_dbt_env, build_target, dbt_args, dbt_env
from stripe_sage_pipeline.transform.mapping import MappingError, load_mapping, mapping_markdown, parse_mapping

DEFAULT = yaml.safe_load((PROJECT_ROOT / "mapping.yaml").read_text())


def test_default_mapping_loads() -> None:
    m = load_mapping(PROJECT_ROOT / "mapping.yaml")
    assert m.posting_mode == "payout_summary"
    assert m.clearing_account("usd") == "1150" and m.bank_account("jpy") == "1010"
    assert m.categories["refund"] == "4050" and m.fees.by_category["dispute"] == "6110"


def _broken(path: list[str], value) -> dict:
    data = copy.deepcopy(DEFAULT)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "key", "bad", "message"),
    [
        (["categories", "refund"], "4051", "categories.refund", "4051", "not in chart_of_accounts"),
        (["categories", "Refund Fee"], "4050", "categories.Refund Fee", "Refund Fee", "lower-case letters"),
        (["posting_date", "timezone"], "Mars/Olympus", "posting_date.timezone", "Mars/Olympus", "unknown time zone"),
        (["posting_mode"], "weekly", "posting_mode", "weekly", "'detail' or 'payout_summary'"),
        (
            ["fees", "by_fee_type", "stripe_fee"],
            "61OO",
            "fees.by_fee_type.stripe_fee",
            "61OO",
            "not in chart_of_accounts",
        ),
        (
            ["currencies", "eur"],
            {"clearing": "1150", "bank": "1019"},
            "currencies.eur.bank",
            "1019",
            "not in chart_of_accounts",
        ),
        (["type_fallback", "payment"], "chrge", "type_fallback.payment", "chrge", "no mapping"),
        (["colour"], "blue", "colour", "blue", "unknown key"),
    ],
)
def test_errors_name_the_key_and_the_bad_value(path, value, key, bad, message) -> None:
    with pytest.raises(MappingError) as err:
        parse_mapping(_broken(path, value), "mapping.yaml")
    text = str(err.value)
    assert f"  {key}: " in text and message in text and repr(bad) in text
    assert any(p[0] == key and p[1] == bad for p in err.value.problems)


def test_bad_yaml_file_is_reported(tmp_path: Path) -> None:
    p = tmp_path / "mapping.yaml"
    p.write_text("posting_mode: [unclosed\n")
    with pytest.raises(MappingError, match="not valid YAML"):
        load_mapping(p)
    with pytest.raises(MappingError, match="not found"):
        load_mapping(tmp_path / "missing.yaml")


def test_markdown_table_shows_accounts_with_names() -> None:
    md = mapping_markdown(parse_mapping(DEFAULT))
    assert md.splitlines()[0] == "| section | key | value | account name |"
    assert "| category | refund | 4050 | Sales Refunds (contra-revenue) |" in md
    assert "| clearing | default | 1150 | Stripe Clearing |" in md


def test_dbt_currency_exponents_match_money_module() -> None:
    vars_ = yaml.safe_load((DBT_PROJECT_DIR / "dbt_project.yml").read_text())["vars"]
    assert set(vars_["zero_decimal_currencies"]) == money.ZERO_DECIMAL
    assert set(vars_["three_decimal_currencies"]) == money.THREE_DECIMAL


def test_no_account_code_in_sql() -> None:
    codes = set(DEFAULT["chart_of_accounts"])
    for sql in (DBT_PROJECT_DIR / "models").rglob("*.sql"):
        text = sql.read_text()
        assert not any(f"'{c}'" in text for c in codes), sql


def test_dbt_env_and_args() -> None:
    env = dbt_env("postgresql+psycopg://u%40x:p%3Aw@db.example:6543/fin")
    assert env == {
        "STRIPE_SAGE_DBT_HOST": "db.example",
        "STRIPE_SAGE_DBT_PORT": "6543",
        "STRIPE_SAGE_DBT_USER": "u@x",
        "STRIPE_SAGE_DBT_PASSWORD": "p:w",
        "STRIPE_SAGE_DBT_DBNAME": "fin",
    }
    args = dbt_args("build", select=["a", "b"], full_refresh=True, vars={"lookback_hours": 0})
    assert args[0] == "build" and args[args.index("--select") + 1 : args.index("--select") + 3] == ["a", "b"]
    assert "--full-refresh" in args and '{"lookback_hours": 0}' in args


def test_dbt_runs_without_its_debug_log_file_unless_the_environment_asks(monkeypatch) -> None:
    url = "postgresql://u:p@db:5432/finance"
    for key in dbt_env(url):  # apply_dbt_env writes these; monkeypatch restores them afterwards
        monkeypatch.setenv(key, "")
    monkeypatch.setenv("DBT_LOG_LEVEL_FILE", "")  # recorded, so the test leaves the variable as it found it
    monkeypatch.delenv("DBT_LOG_LEVEL_FILE")
    apply_dbt_env(url)
    assert os.environ["DBT_LOG_LEVEL_FILE"] == "none" and os.environ["STRIPE_SAGE_DBT_DBNAME"] == "finance"
    monkeypatch.setenv("DBT_LOG_LEVEL_FILE", "debug")
    apply_dbt_env(url)
    assert os.environ["DBT_LOG_LEVEL_FILE"] == "debug"


def test_each_connection_and_set_of_vars_builds_in_a_target_folder_of_its_own(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("DBT_TARGET_PATH", raising=False)
    prod, dev = "postgresql+psycopg://u:p@db:5432/finance", "postgresql+psycopg://u:p@db:5432/finance_dev"
    assert build_target(prod).parent == DBT_PROJECT_DIR / "target" / "builds"
    assert build_target(prod).name.startswith("finance-") and build_target(dev).name.startswith("finance_dev-")
    assert build_target(prod) != build_target(dev)
    # The same database name on another server, port or as another user: dbt's partial parse is not valid there.
    for other in ("u:p@db2:5432/finance", "u:p@db:5433/finance", "v:p@db:5432/finance"):
        assert build_target(f"postgresql+psycopg://{other}") != build_target(prod), other
    assert build_target("postgresql://u:other-password@db:5432/finance") == build_target(prod)
    assert build_target(prod, {"lookback_hours": 0}) == build_target(prod, {"lookback_hours": 0})
    assert build_target(prod, {"lookback_hours": 0}) not in (
        build_target(prod),
        build_target(prod, {"lookback_hours": 1}),
    )
    monkeypatch.setenv("DBT_TARGET_PATH", str(tmp_path))
    assert build_target(prod).parent == tmp_path / "builds"


def test_every_current_reporting_category_has_an_account_and_new_strings_are_warnings() -> None:
    from stripe_sage_pipeline.transform.mapping import BUILT_IN_CATEGORIES, REPORTING_CATEGORIES, mapping_warnings

    m = parse_mapping(DEFAULT)
    assert REPORTING_CATEGORIES - BUILT_IN_CATEGORIES <= set(m.categories)
    assert m.categories["other_adjustment"] != m.accounts.suspense and m.categories["topup"] == m.bank_account("usd")
    # VAT on Stripe's fees lands with the fees, like the tax part of a fee's fee_details.
    assert m.categories["tax"] == m.fees.by_fee_type["tax"]
    assert mapping_warnings(m) == []
    data = copy.deepcopy(DEFAULT)
    data["categories"]["payout_minimum_balance_hold_v2"] = "1170"
    data["type_fallback"]["brand_new_type"] = "other_adjustment"
    warned = parse_mapping(data)
    assert warned.categories["payout_minimum_balance_hold_v2"] == "1170"
    assert {w[0] for w in mapping_warnings(warned)} == {
        "categories.payout_minimum_balance_hold_v2",
        "type_fallback.brand_new_type",
    }


def test_default_chart_of_the_sage_sandbox_has_every_mapped_account() -> None:
    from stripe_sage_sandboxes.sage.store import DEFAULT_CHART

    active = {code for code, _name, _type, is_active, is_postable in DEFAULT_CHART if is_active and is_postable}
    assert set(DEFAULT["chart_of_accounts"]) <= active
