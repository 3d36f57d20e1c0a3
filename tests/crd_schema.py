"""Validating manifests as the API server would: CRD schemas (tests/data/crds) as JSON Schema."""

import json
from functools import cache
from pathlib import Path

import jsonschema

CRDS = Path(__file__).resolve().parent / "data" / "crds"


def kube_schema(node: dict, closed: bool = True) -> dict:
    """A CRD's structural schema as plain JSON Schema, checking what the API server checks:
    `x-kubernetes-*` keys dropped, int-or-string as integer or string, `set` lists unique, and objects
    with declared properties closed (the API server prunes or, with strict field validation, rejects
    unknown fields, so an open schema would let a misspelt field pass); `closed=False` leaves them
    open (what a create with the default field validation is refused for: types, required fields)."""
    out = {key: value for key, value in node.items() if not key.startswith("x-kubernetes-")}
    if "properties" in out:
        out["properties"] = {name: kube_schema(sub, closed) for name, sub in out["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = kube_schema(out[key], closed)
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [kube_schema(sub, closed) for sub in out[key]]
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if closed and "properties" in out and "additionalProperties" not in out \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@cache
def crd_validator(schema_file: str, closed: bool = True) -> jsonschema.Draft7Validator:
    """A validator for one CRD's schema file in tests/data/crds."""
    return jsonschema.Draft7Validator(kube_schema(json.loads((CRDS / schema_file).read_text()), closed))


def field_errors(schema_file: str, obj: dict) -> list[str]:
    """What the API server would say is invalid in `obj`, one `field.path: reason` each, as in its
    422 messages ("spec.model: Required value", "spec.engine.minReplicas: Invalid value: ...")."""
    problems = []
    for error in crd_validator(schema_file, closed=False).iter_errors(obj):
        path = ".".join(str(part) for part in error.absolute_path)
        if error.validator == "required":
            missing = error.message.split("'")[1]
            problems.append(f"{path + '.' if path else ''}{missing}: Required value")
        else:
            problems.append(f"{path}: Invalid value: {json.dumps(error.instance)[:60]}: {error.message[:80]}")
    return sorted(problems)
