"""The committed stream schemas are exactly what the generator derives from the spec."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
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


def test_optional_and_nullable_spec_fields_are_nullable() -> None:
    """Fields the server may omit or send as null accept null (records must validate)."""
    invoices = json.loads((SCHEMAS_DIR / "invoices.json").read_text(encoding="utf-8"))
    # nullable (and required) in the spec
    assert "null" in invoices["properties"]["billing_entity_code"]["type"]
    # not required in the spec: the server may omit it
    assert "null" in invoices["properties"]["payment_due_date"]["type"]
    assert invoices["properties"]["payment_due_date"]["format"] == "date"
    # required and non-nullable in the spec: kept strict
    assert invoices["properties"]["lago_id"]["type"] == "string"
    assert set(invoices["properties"]["payment_status"]["enum"]) == {
        "pending",
        "succeeded",
        "failed",
    }
    subscriptions = json.loads((SCHEMAS_DIR / "subscriptions.json").read_text(encoding="utf-8"))
    statuses = subscriptions["properties"]["status"]["enum"]
    assert {"active", "pending", "terminated", "canceled"} <= set(statuses)
