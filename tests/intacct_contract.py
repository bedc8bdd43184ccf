"""Sage's Intacct OpenAPI documents (reference/sage-intacct-openapi/) as a validator of HTTP exchanges.

`validate_exchange(method, path, request_body, status, response_body)` finds the operation in the group
document that declares the path, and validates the request body against its `requestBody` schema and
the response against the schema of its status (error answers against `error-response`, the envelope
every group shares). OpenAPI 3.0's `nullable` is translated to JSON Schema; `strict` also rejects any
property the schema does not declare (Sage's schemas leave additionalProperties open, so a misspelt
field would otherwise pass).
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

import jsonschema

from stripe_sage_pipeline.settings import PROJECT_ROOT

SPEC_DIR = PROJECT_ROOT / "reference" / "sage-intacct-openapi"
GROUPS = ("general-ledger", "accounts-receivable", "common-resources", "cash-management")
PREFIX = "/ia/api/v1"


@cache
def spec(group: str) -> dict[str, Any]:
    return json.loads((SPEC_DIR / f"{group}.json").read_text())


def _nullable(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _nullable(v) for k, v in node.items() if k not in ("example", "examples")}
        if out.pop("nullable", False) and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        return out
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


def resolve(doc: dict[str, Any], node: Any, depth: int = 0) -> Any:
    """A schema with every local `$ref` inlined (OpenAPI 3.0 → JSON Schema), to a bounded depth."""
    if depth > 30:
        return {}
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = doc
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return resolve(doc, merged, depth + 1)
        return {k: resolve(doc, v, depth + 1) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(doc, v, depth + 1) for v in node]
    return node


def find_operation(method: str, path: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(document, operation, spec path) for a request path under /ia/api/v1."""
    local = path[len(PREFIX) :] if path.startswith(PREFIX) else path
    for group in GROUPS:
        doc = spec(group)
        for template, item in doc["paths"].items():
            pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
            if re.match(pattern, local) and method.lower() in item:
                return doc, item[method.lower()], template
    raise AssertionError(f"{method} {local} is not an operation of Sage's Intacct OpenAPI documents")


def _branches(schema: dict[str, Any]) -> list[dict[str, Any]]:
    out = [schema]
    for key in ("allOf", "anyOf", "oneOf"):
        for b in schema.get(key, []):
            if isinstance(b, dict):
                out += _branches(b)
    return out


def unknown_fields(schema: Any, instance: Any, where: str = "") -> list[str]:
    """Properties of `instance` that no (sub)schema declares."""
    if not isinstance(schema, dict):
        return []
    branches = _branches(schema)
    if isinstance(instance, dict):
        props: dict[str, list[Any]] = {}
        open_ = False
        for b in branches:
            for name, sub in (b.get("properties") or {}).items():
                props.setdefault(name, []).append(sub)  # a property named in several branches: all of them
            if b.get("additionalProperties") not in (None, False):
                open_ = True
        out = []
        for k, v in instance.items():
            if k in props:
                out += unknown_fields({"allOf": props[k]}, v, f"{where}/{k}")
            elif not open_ and props:
                out.append(f"{where}/{k}")
        return out
    if isinstance(instance, list):
        items = [b["items"] for b in branches if "items" in b]
        merged = {"allOf": items} if items else None
        return [f for i, v in enumerate(instance) for f in unknown_fields(merged, v, f"{where}/{i}")]
    return []


def _check(schema: dict[str, Any], instance: Any, what: str, strict: bool) -> None:
    schema = _nullable(schema)
    try:
        jsonschema.validate(instance, schema, cls=jsonschema.Draft7Validator)
    except jsonschema.ValidationError as err:
        raise AssertionError(f"{what} breaks Sage's schema at {list(err.absolute_path)}: {err.message}") from None
    if strict:
        extra = unknown_fields(schema, instance)
        assert not extra, f"{what} has fields Sage's schema does not declare: {extra}"


def validate_exchange(
    method: str, path: str, request_body: Any, status: int, response_body: Any, strict: bool = True
) -> str:
    """Validate one exchange; returns the spec path it matched."""
    doc, op, template = find_operation(method, path)
    if method.upper() in ("POST", "PATCH") and "requestBody" in op:
        schema = resolve(doc, op["requestBody"]["content"]["application/json"]["schema"])
        _check(schema, request_body, f"request {method} {template}", strict)
    responses = op["responses"]
    if status >= 400:
        schema = resolve(doc, doc["components"]["schemas"]["error-response"])
    else:
        answer = responses.get(str(status))
        assert answer is not None, f"{method} {template} does not declare status {status} ({sorted(responses)})"
        schema = resolve(doc, answer["content"]["application/json"]["schema"])
    _check(schema, response_body, f"response {status} to {method} {template}", strict and status < 400)
    return template
