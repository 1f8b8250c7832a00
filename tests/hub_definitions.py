"""The Meltano Hub definitions of both plugins, generated from what they say of themselves.

``python -m tests.hub_definitions`` rewrites ``tap-lago/meltano-hub.yml`` and
``target-lago/meltano-hub.yml`` from ``<plugin> --about --format=json`` (capabilities,
settings, their kinds, labels and secrecy) and the listing facts below;
``tests/test_hub_definitions.py`` fails when they have drifted. A Meltano user adds a plugin
with ``meltano add --from-ref <raw URL or path of meltano-hub.yml> tap-lago``.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
#: The one home of the project: pip_url, docs and every pyproject and README link point here.
REPOSITORY = "https://github.com/tap-lago/tap-lago-target-lago"
#: On Meltano Hub a variant is named after the GitHub owner of its repository.
VARIANT = REPOSITORY.split("/")[-2].lower()
LAGO_URL = "https://www.getlago.com"
MAINTENANCE_STATUS = "beta"
DEFINITION_FILE = "meltano-hub.yml"

#: JSON Schema type of a setting -> Meltano setting kind. Every number setting is an
#: integer (Meltano 4.4 cannot pass a `decimal` setting from an environment variable).
KINDS = {
    "string": "string",
    "integer": "integer",
    "boolean": "boolean",
    "object": "object",
    "array": "array",
}


@dataclass(frozen=True)
class Plugin:
    """One plugin: its package folder, console script and Meltano name are all ``name``."""

    name: str
    plugin_type: str
    label: str
    description: str
    keywords: tuple[str, ...]

    @property
    def folder(self) -> Path:
        """The package's folder in this repository."""
        return ROOT / self.name

    @property
    def definition_path(self) -> Path:
        """Where its Hub definition is committed."""
        return self.folder / DEFINITION_FILE

    @property
    def pip_url(self) -> str:
        """pip installs the package from the repository's subfolder."""
        return f"git+{REPOSITORY}.git#subdirectory={self.name}"

    @property
    def docs(self) -> str:
        """The package's README on GitHub."""
        return f"{REPOSITORY}/blob/main/{self.name}/README.md"


PLUGINS = (
    Plugin(
        name="tap-lago",
        plugin_type="extractors",
        label="Lago",
        description="Open-source usage-based billing: customers, subscriptions, usage "
        "events, invoices, fees, credit notes and wallets",
        keywords=("meltano_sdk", "api", "lago", "billing", "usage-based-billing"),
    ),
    Plugin(
        name="target-lago",
        plugin_type="loaders",
        label="Lago",
        description="Open-source usage-based billing: usage events, customers, "
        "subscriptions, wallets and coupons written into Lago (reverse ETL)",
        keywords=("meltano_sdk", "api", "lago", "billing", "reverse-etl"),
    ),
)


def plugin(name: str) -> Plugin:
    """The plugin of that name."""
    [found] = [p for p in PLUGINS if p.name == name]
    return found


@functools.cache
def about(name: str) -> dict[str, Any]:
    """What ``<name> --about --format=json`` prints (the console script next to Python's)."""
    exe = Path(sys.executable).parent / name
    out = subprocess.run(
        [str(exe), "--about", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return _json_object(json.loads(out))


def _json_object(value: Any) -> dict[str, Any]:
    """``value``, checked to be a JSON object."""
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def setting_kind(name: str, schema: dict[str, Any]) -> tuple[str, list[dict[str, Any]] | None]:
    """The Meltano kind of a setting's JSON Schema, and its options when it is an enum."""
    types = schema.get("type")
    declared = [types] if isinstance(types, str) else list(types or [])
    [json_type] = [t for t in declared if t != "null"] or [None]
    if json_type == "string" and schema.get("format") in {"date-time", "date"}:
        return "date_iso8601", None
    if json_type == "string" and schema.get("enum"):
        return "options", [{"label": str(v), "value": v} for v in schema["enum"]]
    if json_type not in KINDS:
        raise ValueError(f"setting {name}: no Meltano kind for JSON Schema type {types!r}")
    return KINDS[json_type], None


def setting_definition(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """One entry of a definition's ``settings``, from the setting's JSON Schema."""
    for field in ("title", "description"):
        if not schema.get(field):
            raise ValueError(f"setting {name} has no {field} in --about: give it one")
    kind, options = setting_kind(name, schema)
    entry: dict[str, Any] = {
        "name": name,
        "label": schema["title"],
        "kind": kind,
        "description": " ".join(schema["description"].split()),
        "sensitive": bool(schema.get("secret")),
    }
    if options:
        entry["options"] = options
    default = schema.get("default")
    if default not in (None, {}, []) and kind != "date_iso8601":
        entry["value"] = default
    return entry


def definition(name: str) -> dict[str, Any]:
    """The Meltano Hub definition of one plugin."""
    spec = plugin(name)
    info = about(name)
    settings = info["settings"]
    return {
        "name": spec.name,
        "variant": VARIANT,
        "label": spec.label,
        "namespace": spec.name.replace("-", "_"),
        "description": spec.description,
        "logo_url": f"/assets/logos/{spec.plugin_type}/lago.png",
        "domain_url": LAGO_URL,
        "docs": spec.docs,
        "repo": REPOSITORY,
        "pip_url": spec.pip_url,
        "executable": spec.name,
        "supported_python_versions": list(info["supported_python_versions"]),
        "capabilities": list(info["capabilities"]),
        "keywords": list(spec.keywords),
        "maintenance_status": MAINTENANCE_STATUS,
        "settings_group_validation": [list(settings.get("required") or [])],
        "settings": [
            setting_definition(setting, schema)
            for setting, schema in settings["properties"].items()
        ],
    }


def render(name: str) -> str:
    """The text of ``<name>/meltano-hub.yml``."""
    header = (
        f"# Meltano Hub definition of {name}, generated from `{name} --about --format=json`\n"
        "# by `python -m tests.hub_definitions`: do not edit by hand.\n"
        f"# meltano add --from-ref {name}/{DEFINITION_FILE} {name}\n"
    )
    body = yaml.safe_dump(definition(name), sort_keys=False, width=100, allow_unicode=True)
    return header + body


def main() -> None:
    """Rewrite both definitions in place."""
    for spec in PLUGINS:
        spec.definition_path.write_text(render(spec.name))


if __name__ == "__main__":
    main()
