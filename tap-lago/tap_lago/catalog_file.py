"""`tap-lago-catalog`: a Lago catalog kept in a YAML or JSON file, as Singer records.

The file maps each catalog stream to a list of objects, in Lago's shapes (those tap-lago
reads or those Lago's API takes), each with its `code`:

    taxes: [{code: vat_fr, name: VAT France, rate: "20.0"}]
    billable_metrics: [{code: api_calls, name: API calls, aggregation_type: count_agg}]
    plans:
      - code: starter
        name: Starter
        interval: monthly
        amount_cents: 2900
        amount_currency: EUR
        pay_in_advance: true
        charges:
          - {billable_metric_code: api_calls, charge_model: standard,
             properties: {amount: "0.002"}}

Streams are written in the order target-lago needs (taxes, billable metrics and features,
add-ons, plans, coupons), each with `code` as its key. Settings: `path` (the file).
Usage: `tap-lago-catalog --config config.json | target-lago --config target.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

STREAMS = ("taxes", "billable_metrics", "features", "add_ons", "plans", "coupons")


class CatalogFileError(Exception):
    """A catalog file that cannot be read as one (the message names the problem)."""


def read_catalog(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The file's streams and their objects, checked.

    Raises:
        CatalogFileError: For a missing or unreadable file, an unknown section, or an
            object without `code` (or whose code is repeated in its section).
    """
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogFileError(f"cannot read the catalog file {str(path)!r}: {exc}") from None
    except yaml.YAMLError as exc:
        raise CatalogFileError(f"{path} is not YAML or JSON: {exc}") from None
    if not isinstance(content, dict):
        raise CatalogFileError(f"{path} must map stream names ({', '.join(STREAMS)}) to lists")
    unknown = sorted(set(content) - set(STREAMS))
    if unknown:
        raise CatalogFileError(
            f"{path}: unknown section(s) {', '.join(map(str, unknown))}; the sections are "
            f"{', '.join(STREAMS)}"
        )
    out: dict[str, list[dict[str, Any]]] = {}
    for stream in STREAMS:
        items = content.get(stream) or []
        if not isinstance(items, list):
            raise CatalogFileError(f"{path}: {stream} must be a list of objects")
        seen: set[str] = set()
        for index, item in enumerate(items):
            if not isinstance(item, dict) or item.get("code") in (None, ""):
                raise CatalogFileError(f"{path}: {stream}[{index}] is not an object with a code")
            if str(item["code"]) in seen:
                raise CatalogFileError(f"{path}: {stream} has code {item['code']!r} twice")
            seen.add(str(item["code"]))
        out[stream] = items
    return out


def messages(catalog: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """SCHEMA then RECORD messages per stream, dependencies first."""
    out: list[dict[str, Any]] = []
    for stream in STREAMS:
        if not catalog.get(stream):
            continue
        schema = {"type": "object", "properties": {"code": {"type": "string"}}}
        out.append(
            {"type": "SCHEMA", "stream": stream, "schema": schema, "key_properties": ["code"]}
        )
        out.extend({"type": "RECORD", "stream": stream, "record": r} for r in catalog[stream])
    return out


def _iso(value: Any) -> str:
    """YAML reads unquoted dates as dates: back to ISO-8601 text."""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def main(argv: list[str] | None = None) -> int:
    """Print the file's catalog as Singer messages; one line on stderr when it cannot."""
    parser = argparse.ArgumentParser(prog="tap-lago-catalog", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help='JSON with {"path": FILE}')
    parser.add_argument("--catalog", "--state", dest="ignored", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        config = json.loads(args.config.read_text(encoding="utf-8"))
        path = config.get("path") if isinstance(config, dict) else None
        if not path:
            raise CatalogFileError("the path setting is missing: the catalog file to read")
        for message in messages(read_catalog(Path(path))):
            sys.stdout.write(json.dumps(message, default=_iso) + "\n")
    except (CatalogFileError, OSError, ValueError) as exc:
        print(f"tap-lago-catalog: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
