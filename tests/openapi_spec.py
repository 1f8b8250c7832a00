"""Access to the official Lago OpenAPI spec for tests.

The spec is never copied into the repository. It is found through the environment
variable ``LAGO_OPENAPI_SPEC`` or, failing that, at ``<repo root>/../shared/lago-openapi.yaml``.
When it is missing, tests that need it are skipped with a clear message, except under
``CI=true`` where a missing spec fails the test.

Validation uses JSON Schema Draft 2020-12 (the dialect of OpenAPI 3.1) with a
``referencing`` registry holding the whole spec, so ``#/components/schemas/...``
references resolve. Formats are checked too (``date-time``, ``date``, ``uuid``, ``email``,
``uri``).
"""

from __future__ import annotations

import copy
import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_ENV = "LAGO_OPENAPI_SPEC"
SPEC_URI = "urn:lago:openapi"
REPO_ROOT = Path(__file__).resolve().parent.parent
API_PREFIX = "/api/v1"

_DATE_TIME = re.compile(
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt]([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)"
    r"(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)$"
)
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]*$")


def _format_checker() -> FormatChecker:
    checker = FormatChecker()

    @checker.checks("date-time")
    def _is_date_time(value: object) -> bool:
        return not isinstance(value, str) or bool(_DATE_TIME.match(value))

    @checker.checks("uri")
    def _is_uri(value: object) -> bool:
        return not isinstance(value, str) or bool(_URI.match(value))

    return checker


FORMAT_CHECKER = _format_checker()


def _missing(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def spec_path() -> Path:
    """Return the path of the Lago OpenAPI spec (skip or fail the test when it is missing)."""
    configured = os.environ.get(SPEC_ENV)
    path = Path(configured) if configured else REPO_ROOT.parent / "shared" / "lago-openapi.yaml"
    if not path.is_file():
        source = f"${SPEC_ENV}" if configured else f"the default location (set ${SPEC_ENV})"
        _missing(f"Lago OpenAPI spec not found at {path} (from {source})")
    return path


@functools.lru_cache(maxsize=4)
def _load(path: str) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as handle:
        spec = yaml.load(handle, Loader=loader)
    if not isinstance(spec, dict) or "components" not in spec:
        raise AssertionError(f"{path} is not an OpenAPI document")
    return spec


def load_spec() -> dict[str, Any]:
    """Return the parsed spec (cached; do not mutate it)."""
    return _load(str(spec_path()))


@functools.lru_cache(maxsize=4)
def _registry(path: str) -> Registry:
    resource = Resource.from_contents(_load(path), default_specification=DRAFT202012)
    return Registry().with_resource(SPEC_URI, resource)


def component_schema(name: str) -> dict[str, Any]:
    """Return ``#/components/schemas/<name>`` as written in the spec."""
    schemas = load_spec()["components"]["schemas"]
    if name not in schemas:
        raise KeyError(f"no component schema {name!r} in the Lago OpenAPI spec")
    return schemas[name]


def _absolute_refs(node: Any) -> Any:
    """Rewrite local ``#/...`` references so that they point into the registered spec."""
    if isinstance(node, dict):
        return {
            key: (
                SPEC_URI + value
                if key == "$ref" and isinstance(value, str) and value.startswith("#")
                else _absolute_refs(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_absolute_refs(item) for item in node]
    return node


@functools.lru_cache(maxsize=512)
def _validator_for_ref(ref: str, path: str) -> Draft202012Validator:
    return Draft202012Validator(
        {"$ref": SPEC_URI + ref}, registry=_registry(path), format_checker=FORMAT_CHECKER
    )


def _json_path(error: ValidationError) -> str:
    path = "$"
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _leaf_errors(errors: Iterator[ValidationError]) -> Iterator[ValidationError]:
    """Yield the most specific errors (the branches of oneOf/anyOf failures)."""
    for error in errors:
        if error.context:
            yield from _leaf_errors(iter(error.context))
        else:
            yield error


def _raise_violations(errors: list[ValidationError], label: str) -> None:
    if not errors:
        return
    lines = sorted({f"  {_json_path(err)}: {err.message}" for err in _leaf_errors(iter(errors))})
    raise AssertionError(f"{label}: {len(lines)} violation(s)\n" + "\n".join(lines))


def validate_object(component: str, obj: Any) -> None:
    """Validate ``obj`` against ``#/components/schemas/<component>``.

    Raises:
        AssertionError: listing every violation with its JSON path.
    """
    component_schema(component)  # a clear KeyError for an unknown name
    validator = _validator_for_ref(f"#/components/schemas/{component}", str(spec_path()))
    _raise_violations(list(validator.iter_errors(obj)), component)


def validate_schema(schema: dict[str, Any], obj: Any, label: str = "object") -> None:
    """Validate ``obj`` against a schema taken from the spec (its ``#/...`` refs resolve).

    Raises:
        AssertionError: listing every violation with its JSON path.
    """
    validator = Draft202012Validator(
        _absolute_refs(copy.deepcopy(schema)),
        registry=_registry(str(spec_path())),
        format_checker=FORMAT_CHECKER,
    )
    _raise_violations(list(validator.iter_errors(obj)), label)


def _operation(method: str, path_template: str) -> dict[str, Any]:
    template = path_template.split("?", 1)[0]
    if template.startswith(API_PREFIX):
        template = template[len(API_PREFIX) :] or "/"
    paths = load_spec()["paths"]
    if template not in paths:
        raise KeyError(f"no path {template!r} in the Lago OpenAPI spec")
    operation = paths[template].get(method.lower())
    if operation is None:
        raise KeyError(f"no operation {method.upper()} {template} in the Lago OpenAPI spec")
    return operation


def _resolve_local(node: dict[str, Any]) -> dict[str, Any]:
    spec = load_spec()
    while "$ref" in node:
        target: Any = spec
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def operation_response_schema(method: str, path_template: str, status: int = 200) -> dict:
    """Return the JSON schema of a response body of ``METHOD path_template`` for ``status``.

    ``path_template`` is the spec's template, e.g. ``/customers/{external_customer_id}``;
    a leading ``/api/v1`` is accepted. Local ``$ref`` values are kept; validate with
    :func:`validate_schema` or :func:`validate_response`.

    Raises:
        KeyError: when the spec has no such operation, status or JSON body.
    """
    operation = _operation(method, path_template)
    responses = operation.get("responses", {})
    response = responses.get(str(status), responses.get(status, responses.get("default")))
    if response is None:
        raise KeyError(
            f"{method.upper()} {path_template} documents no {status} response "
            f"(documented: {sorted(map(str, responses))})"
        )
    response = _resolve_local(response)
    content = response.get("content", {})
    media = content.get("application/json")
    if media is None or "schema" not in media:
        raise KeyError(f"{method.upper()} {path_template} {status} has no JSON body schema")
    return media["schema"]


def validate_response(method: str, path_template: str, body: Any, status: int = 200) -> None:
    """Validate a whole response body against the spec's schema for that operation.

    Raises:
        AssertionError: listing every violation with its JSON path.
    """
    schema = operation_response_schema(method, path_template, status)
    validate_schema(schema, body, f"{method.upper()} {path_template} {status}")
