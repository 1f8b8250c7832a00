"""The committed stream schemas are exactly what the generator derives from the spec."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from tap_lago.records import UNKNOWN_FIELDS
from tap_lago.streams import STREAM_TYPES
from tap_lago.tap import TapLago

from tests.openapi_spec import load_spec

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMAS_DIR = REPO_ROOT / "tap-lago" / "tap_lago" / "schemas"
GENERATOR = REPO_ROOT / "tap-lago" / "scripts" / "generate_schemas.py"
# The streams the tap registers (its STREAM_TYPES table).
STREAM_NAMES = sorted(TapLago(config={"api_key": "unused"}, parse_env_config=False).streams)


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("generate_schemas", GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("generate_schemas", module)
    spec.loader.exec_module(module)
    return module


def _committed() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(SCHEMAS_DIR.glob("*.json"))}


def test_regenerating_from_the_spec_gives_the_committed_files() -> None:
    generated = _generator().generate(load_spec())
    committed = _committed()
    assert sorted(generated) == sorted(committed), "schema files differ from the stream list"
    drifted = [name for name, text in generated.items() if committed[name] != text]
    assert not drifted, (
        f"schemas drifted from the spec: {drifted}; run "
        "`python tap-lago/scripts/generate_schemas.py` and commit the result"
    )


def test_every_stream_has_exactly_one_schema_file() -> None:
    names = set(STREAM_NAMES)
    assert len(STREAM_TYPES) == len(names)
    assert names == {p.stem for p in SCHEMAS_DIR.glob("*.json")}
    assert names == set(_generator().STREAMS)


def _untyped(schema: dict[str, Any], path: str) -> list[str]:
    if "anyOf" in schema:
        return [m for i, s in enumerate(schema["anyOf"]) for m in _untyped(s, f"{path}|{i}")]
    missing = [] if schema.get("type") else [path]
    for name, prop in (schema.get("properties") or {}).items():
        missing += _untyped(prop, f"{path}.{name}")
    if isinstance(schema.get("items"), dict) and schema["items"]:
        missing += _untyped(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        missing += _untyped(schema["additionalProperties"], f"{path}.*")
    return missing


@pytest.mark.parametrize("path", sorted(SCHEMAS_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_every_property_has_a_type(path: Path) -> None:
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert schema["type"] == "object"
    assert schema["properties"], f"{path.name} has no properties"
    assert _untyped(schema, path.stem) == []


@pytest.mark.parametrize("name", STREAM_NAMES)
def test_key_fields_are_declared_non_null_and_required(name: str) -> None:
    stream = TapLago(config={"api_key": "unused"}, parse_env_config=False).streams[name]
    schema = json.loads((SCHEMAS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    keys = [*stream.primary_keys, *([stream.replication_key] if stream.replication_key else [])]
    for key in keys:
        prop = schema["properties"][key]
        types = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
        assert "null" not in types, f"{name}.{key} must not be nullable"
        assert key in schema["required"]
    generator_keys = set(_generator().STREAMS[name][2])
    assert generator_keys == set(keys), f"{name}: generator key list out of date"


def _non_nullable(schema: dict[str, Any], path: str) -> list[str]:
    """Properties (at any depth) whose schema refuses null."""
    found = []
    for name, prop in (schema.get("properties") or {}).items():
        where = f"{path}.{name}"
        types = prop.get("type")
        types = types if isinstance(types, list) else [types]
        branches = [b.get("type") for b in prop.get("anyOf", [])]
        if "null" not in types and "null" not in branches:
            found.append(where)
        if "enum" in prop and None not in prop["enum"]:
            found.append(f"{where} (enum)")
        found += _non_nullable(prop, where)
        if isinstance(prop.get("items"), dict):
            found += _non_nullable(prop["items"], f"{where}[]")
    return found


@pytest.mark.parametrize("name", STREAM_NAMES)
def test_every_field_but_the_keys_accepts_null(name: str) -> None:
    """lago-api sends null where the spec says it cannot (issue 11): only keys are strict."""
    schema = json.loads((SCHEMAS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    keys = {f"{name}.{key}" for key in schema["required"]}
    assert set(_non_nullable(schema, name)) == keys


def test_spec_defects_are_corrected() -> None:
    events = json.loads((SCHEMAS_DIR / "events.json").read_text(encoding="utf-8"))
    # A key: non-null, the tap emits "" for an event without subscription.
    assert events["properties"]["external_subscription_id"]["type"] == "string"
    fees = json.loads((SCHEMAS_DIR / "fees.json").read_text(encoding="utf-8"))
    assert fees["required"] == ["created_at", "lago_id"]
    # Decimal strings are numbers (emitted exactly); rates that are numbers stay numbers.
    for stream, field in (
        ("fees", "precise_amount"),
        ("fees", "units"),
        ("wallets", "credits_balance"),
        ("wallets", "balance"),
        ("coupons", "percentage_rate"),
        ("events", "precise_total_amount_cents"),
        ("taxes", "rate"),
    ):
        schema = json.loads((SCHEMAS_DIR / f"{stream}.json").read_text(encoding="utf-8"))
        assert schema["properties"][field] == {"type": ["number", "null"]}, (stream, field)
    # Every stream keeps fields it does not declare; nested objects accept new keys.
    assert _generator().UNKNOWN_FIELDS == UNKNOWN_FIELDS == "_unknown_fields"
    for name in STREAM_NAMES:
        schema = json.loads((SCHEMAS_DIR / f"{name}.json").read_text(encoding="utf-8"))
        assert schema["properties"]["_unknown_fields"]["type"] == ["object", "null"]
        assert "additionalProperties" not in schema
    customers = json.loads((SCHEMAS_DIR / "customers.json").read_text(encoding="utf-8"))
    assert customers["properties"]["billing_configuration"]["additionalProperties"] is True
    subscriptions = json.loads((SCHEMAS_DIR / "subscriptions.json").read_text(encoding="utf-8"))
    statuses = subscriptions["properties"]["status"]["enum"]
    assert {"active", "pending", "terminated", "canceled", None} <= set(statuses)
