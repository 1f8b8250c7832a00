"""Record validation against a stream's schema: a compiled fast path, jsonschema's verdict.

The SDK runs the full jsonschema validator on every record, which costs more than
everything else target-lago does per record. `RecordValidator` compiles the common
shape of a Singer schema (an object of properties with plain `type` declarations) into
a table of Python types checked with one lookup per field. Properties declared with
anything else are checked by a jsonschema validator of that property alone. A record
the fast path cannot accept is handed to the full validator, so every rejection (and
its message) is exactly jsonschema's; the fast path only ever accepts records that
jsonschema accepts.
"""

from __future__ import annotations

import decimal
import typing as t

from singer_sdk.exceptions import InvalidRecord
from singer_sdk.sinks.core import BaseJSONSchemaValidator, JSONSchemaValidator
from singer_sdk.typing import DEFAULT_JSONSCHEMA_VALIDATOR

#: Python types accepted at once for each JSON type (exact `type()` matches: `True`
#: is not an integer). Values of other types go to jsonschema (e.g. 5.0 as an integer).
PY_TYPES: dict[str, tuple[type, ...]] = {
    "null": (type(None),),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float, decimal.Decimal),
    "string": (str,),
    "object": (dict,),
    "array": (list,),
}
#: Keywords that never make a value invalid (annotations).
ANNOTATIONS = frozenset(
    {
        "description",
        "title",
        "default",
        "examples",
        "$comment",
        "readOnly",
        "writeOnly",
        "deprecated",
    }
)
#: Root keywords the fast path understands.
ROOT_KEYWORDS = ANNOTATIONS | {"type", "properties", "required", "additionalProperties", "$schema"}
#: Keywords that refer to other parts of the schema: such schemas are validated whole.
REFERENCES = ("$ref", "$dynamicRef", "$recursiveRef", "$defs", "definitions", "$id", "$anchor")
_MISSING = object()


def _mentions_references(node: t.Any) -> bool:
    if isinstance(node, dict):
        return any(key in node for key in REFERENCES) or any(
            _mentions_references(value) for value in node.values()
        )
    if isinstance(node, list):
        return any(_mentions_references(value) for value in node)
    return False


def _plain_types(schema: t.Any, *, validate_formats: bool) -> frozenset[type] | None:
    """The accepted Python types when `schema` only declares a type, else None."""
    if not isinstance(schema, dict):
        return None
    allowed = ANNOTATIONS | {"type"} | (set() if validate_formats else {"format"})
    if not set(schema) <= allowed:
        return None
    declared = schema.get("type")
    if declared is None:
        return frozenset({object})  # any value
    names = [declared] if isinstance(declared, str) else declared
    if not isinstance(names, list) or not all(name in PY_TYPES for name in names):
        return None
    return frozenset(py for name in names for py in PY_TYPES[name])


class SchemaMismatch(InvalidRecord):
    """A record the stream's schema refuses.

    Attributes:
        field: Path of the offending value (`a/b/0` for nested ones), or None when the
            record as a whole is refused (e.g. a missing required property).
    """

    def __init__(self, message: str, record: dict, field: str | None) -> None:
        """Create the error.

        Args:
            message: What is wrong, naming the field.
            record: The record.
            field: Path of the offending value, if any.
        """
        super().__init__(message, record)
        self.field = field


class RecordValidator(BaseJSONSchemaValidator):
    """Validates records of one stream; raises the SDK's `InvalidRecord` on a bad one."""

    def __init__(self, schema: dict, *, validate_formats: bool = False) -> None:
        """Compile the schema.

        Args:
            schema: The stream's JSON schema.
            validate_formats: Also check string formats (e.g. `date-time`).
        """
        super().__init__(schema)
        self.full = JSONSchemaValidator(schema, validate_formats=validate_formats)
        self.types: dict[str, frozenset[type]] = {}
        self.others: dict[str, t.Any] = {}
        self.required: tuple[str, ...] = ()
        self.closed: frozenset[str] | None = None
        self.compiled = self._compile(schema, validate_formats=validate_formats)

    def _compile(self, schema: dict, *, validate_formats: bool) -> bool:
        if not set(schema) <= ROOT_KEYWORDS or _mentions_references(schema):
            return False
        root_type = schema.get("type", "object")
        if root_type != "object" and not (isinstance(root_type, list) and "object" in root_type):
            return False
        properties = schema.get("properties") or {}
        required = schema.get("required") or []
        extra = schema.get("additionalProperties", True)
        if not isinstance(properties, dict) or not isinstance(required, list):
            return False
        if extra is False:
            self.closed = frozenset(properties)
        elif extra not in (True, {}):
            return False
        self.required = tuple(str(name) for name in required)
        for name, sub in properties.items():
            types = _plain_types(sub, validate_formats=validate_formats)
            if types is None:
                self.others[name] = self._property_validator(sub, validate_formats)
            elif object not in types:
                self.types[name] = types
        return True

    @staticmethod
    def _property_validator(schema: t.Any, validate_formats: bool) -> t.Any:
        checker = DEFAULT_JSONSCHEMA_VALIDATOR.FORMAT_CHECKER if validate_formats else None
        return DEFAULT_JSONSCHEMA_VALIDATOR(schema, format_checker=checker)

    def accepts(self, record: dict) -> bool:
        """True when the record is valid by the fast path (False: ask jsonschema)."""
        if not self.compiled:
            return False
        types = self.types
        for name, value in record.items():
            allowed = types.get(name)
            if allowed is not None and type(value) not in allowed:
                return False
        for name, validator in self.others.items():
            value = record.get(name, _MISSING)
            if value is not _MISSING and not validator.is_valid(value):
                return False
        if self.required and any(name not in record for name in self.required):
            return False
        return self.closed is None or record.keys() <= self.closed

    def validate(self, record: dict) -> None:
        """Validate one record.

        Args:
            record: The record.

        Raises:
            SchemaMismatch: With jsonschema's verdict and the field it concerns.
        """
        if self.accepts(record):
            return
        # The first error, as `validate` of jsonschema (and so of the SDK) reports it.
        error = next(iter(self.full.validator.iter_errors(record)), None)
        if error is not None:
            field = "/".join(str(part) for part in error.absolute_path) or None
            where = f"field '{field}': " if field else ""
            raise SchemaMismatch(f"{where}{error.message}", record, field)
