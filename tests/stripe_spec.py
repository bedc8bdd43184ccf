"""A small validator for Stripe objects against the official OpenAPI spec (spec3.json).

It understands the subset of OpenAPI 3 that Stripe's spec uses for response objects: `$ref`,
`nullable`, `anyOf`/`oneOf` (expandable fields are "id string or the full object"), `enum`, `type`,
`required`, `properties`, `additionalProperties`, `items` and `maxLength`. It is deliberately not a
general JSON-Schema engine: it exists so that tests can prove the emulator and the extractor speak
exactly the shapes Stripe documents.

    from stripe_spec import validate
    errors = validate("charge", obj)   # [] when the object conforms
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

_DEFAULT_SPEC = Path(__file__).resolve().parent.parent / "reference" / "stripe-openapi" / "spec3.json"
_REF_PREFIX = "#/components/schemas/"
# Enough to cover a fully expanded object graph; deeper means a cycle in the data, not in the spec.
_MAX_DEPTH = 40


def spec_path() -> Path:
    """Where spec3.json is read from: `$STRIPE_OPENAPI_SPEC`, else the copy vendored in `reference/stripe-openapi/`."""
    env = os.environ.get("STRIPE_OPENAPI_SPEC")
    return Path(env) if env else _DEFAULT_SPEC


@lru_cache(maxsize=4)
def _load(path: str) -> dict[str, Any]:
    raw = Path(path).read_bytes()
    try:  # orjson parses the 5 MB spec several times faster; it is optional
        import orjson

        return orjson.loads(raw)
    except ImportError:
        return json.loads(raw)


def load_spec() -> dict[str, Any]:
    """The parsed OpenAPI document (cached per path)."""
    return _load(str(spec_path()))


def schemas() -> dict[str, Any]:
    """All component schemas by name (`charge`, `balance_transaction`, ...)."""
    return load_spec()["components"]["schemas"]


def schema(name: str) -> dict[str, Any]:
    """One component schema; KeyError names the schema when it does not exist."""
    try:
        return schemas()[name]
    except KeyError:
        raise KeyError(f"no schema named {name!r} in {spec_path()}") from None


def expandable_fields(name: str) -> list[str]:
    """The spec's `x-expandableFields` of a schema."""
    return list(schema(name).get("x-expandableFields", []))


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _type_ok(expected: str, value: Any) -> bool:
    actual = _type_name(value)
    if expected == "number":
        return actual in ("integer", "number")
    return actual == expected


class _Validator:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.all = schemas()

    def resolve(self, sch: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in sch:
            ref = sch["$ref"]
            if not ref.startswith(_REF_PREFIX):
                raise ValueError(f"unsupported $ref {ref}")
            sch = self.all[ref[len(_REF_PREFIX) :]]
        return sch

    def check(self, sch: dict[str, Any], value: Any, path: str, depth: int) -> list[str]:
        nullable = bool(sch.get("nullable"))
        sch = self.resolve(sch)
        nullable = nullable or bool(sch.get("nullable"))
        if value is None:
            return [] if nullable else [f"{path}: null is not allowed"]
        if depth > _MAX_DEPTH:
            return [f"{path}: nesting deeper than {_MAX_DEPTH}"]
        alternatives = sch.get("anyOf") or sch.get("oneOf")
        if alternatives:
            return self.check_alternatives(alternatives, value, path, depth)
        errors: list[str] = []
        expected = sch.get("type")
        if expected and not _type_ok(expected, value):
            return [f"{path}: expected {expected}, got {_type_name(value)} ({_short(value)})"]
        if "enum" in sch and value not in sch["enum"]:
            errors.append(f"{path}: {_short(value)} is not one of {sch['enum']}")
        if isinstance(value, str) and "maxLength" in sch and len(value) > sch["maxLength"]:
            errors.append(f"{path}: longer than maxLength {sch['maxLength']}")
        if isinstance(value, list) and "items" in sch:
            for i, item in enumerate(value):
                errors.extend(self.check(sch["items"], item, f"{path}[{i}]", depth + 1))
        if isinstance(value, dict):
            errors.extend(self.check_object(sch, value, path, depth))
        return errors

    def check_object(self, sch: dict[str, Any], value: dict[str, Any], path: str, depth: int) -> list[str]:
        errors: list[str] = []
        props: dict[str, Any] = sch.get("properties", {})
        for name in sch.get("required", []):
            if name not in value:
                errors.append(f"{path}.{name}: required field missing")
        extra = sch.get("additionalProperties")
        for key, item in value.items():
            sub = f"{path}.{key}"
            if key in props:
                errors.extend(self.check(props[key], item, sub, depth + 1))
            elif isinstance(extra, dict):
                errors.extend(self.check(extra, item, sub, depth + 1))
            elif extra is False or (self.strict and props):
                errors.append(f"{sub}: property not in the schema")
        return errors

    def check_alternatives(self, alternatives: list[dict[str, Any]], value: Any, path: str, depth: int) -> list[str]:
        best: list[str] | None = None
        for alt in alternatives:
            errs = self.check(alt, value, path, depth)
            if not errs:
                return []
            # Report the branch that came closest: usually the object the caller meant to send.
            if best is None or len(errs) < len(best):
                best = errs
        if best is None:
            return []
        if len(alternatives) > 1 and all(e.startswith(f"{path}: expected") for e in best):
            kinds = sorted({self.resolve(a).get("type", "object") for a in alternatives})
            return [f"{path}: {_type_name(value)} matches none of {kinds}"]
        return best


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate(schema_name: str, obj: Any, *, strict: bool = False) -> list[str]:
    """Check `obj` against the spec's schema `schema_name`; return error messages with JSON paths.

    `strict=True` also reports properties the 2023 schema does not know (the SDK accepts them,
    but an emulator should not invent fields).
    """
    return _Validator(strict).check(schema(schema_name), obj, "$", 0)


def validate_list(schema_name: str, body: Any, *, strict: bool = False) -> list[str]:
    """Check a list response (`{"object": "list", "data": [...], "has_more", "url"}`) and every item."""
    if not isinstance(body, dict):
        return [f"$: expected object, got {_type_name(body)}"]
    errors: list[str] = []
    if body.get("object") != "list":
        errors.append(f"$.object: expected 'list', got {_short(body.get('object'))}")
    if not isinstance(body.get("has_more"), bool):
        errors.append("$.has_more: expected boolean")
    url = body.get("url")
    if not isinstance(url, str) or not url.startswith("/v1/"):
        errors.append(f"$.url: expected a /v1/ path, got {_short(url)}")
    data = body.get("data")
    if not isinstance(data, list):
        return [*errors, "$.data: expected array"]
    validator = _Validator(strict)
    item_schema = schema(schema_name)
    for i, item in enumerate(data):
        errors.extend(validator.check(item_schema, item, f"$.data[{i}]", 1))
    return errors
