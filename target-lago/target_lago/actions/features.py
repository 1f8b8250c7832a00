"""`features`: `POST /features`, `PUT /features/{code}` when it differs (see `catalog`).

A feature's privileges are written whole: `PUT` deletes the privileges it does not name.
A privilege keeps its `value_type` once created. Features need a premium licence.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from target_lago.actions.catalog import Canonical, CatalogSink, Unmapped, as_object, put, text


def privileges(value: Any, field: str) -> list[dict]:
    """`[{code, name, value_type, config}]` by code; `value_type` defaults to string."""
    value = as_object(value, field)
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(p, Mapping) and p.get("code") for p in value
    ):
        raise Unmapped(field, f"'{field}' must be a list of {{code, ...}}, got {value!r}")
    out = []
    for item in value:
        options = (item.get("config") or {}).get("select_options")
        out.append(
            {
                "code": str(item["code"]),
                "name": text(item.get("name")),
                "value_type": item.get("value_type") or "string",
                "config": {"select_options": list(options)} if options else {},
            }
        )
    return out


class FeaturesSink(CatalogSink):
    """A feature (entitlements) per `code`, with its privileges."""

    action = "features"
    endpoint = "/features"
    root_key = "feature"
    what = "feature"
    rank = 0
    self_parsed = ("privileges",)
    kept = "a privilege keeps its value_type (create a privilege with a new code instead)"

    def known(self) -> frozenset[str]:
        """The feature's fields."""
        return frozenset({"code", "name", "description", "privileges"})

    def canonical(self, record: Mapping[str, Any]) -> Canonical:
        """The feature's write fields."""
        out: Canonical = {}
        put(out, "name", record, text)
        put(out, "description", record, text)
        put(out, "privileges", record, privileges)
        return out
