"""meltano.yml declares exactly the settings each plugin takes, with the key marked secret."""

from __future__ import annotations

import pytest
import yaml
from singer_sdk.plugin_base import PluginBase
from tap_lago.tap import TapLago
from target_lago.target import TargetLago

from tests.readme_tables import ROOT

PLUGINS: dict[tuple[str, str], type[PluginBase]] = {
    ("extractors", "tap-lago"): TapLago,
    ("loaders", "target-lago"): TargetLago,
}


# Settings the SDK adds to every plugin with these capabilities (it appends them to the
# class's config schema once a plugin has been instantiated, so they may or may not be there).
SDK_SETTINGS = {
    "stream_maps", "stream_map_config", "faker_config", "flattening_enabled",
    "flattening_max_depth", "flattening_max_key_length", "flattening_separator",
    "batch_config", "add_record_metadata", "load_method", "batch_size_rows",
    "validate_records",
}  # fmt: skip
# Of those, the ones meltano.yml declares (the ones a Meltano user sets most); target-lago
# has no schema flattening (Lago reads nested fields nested).
DECLARED_SDK_SETTINGS = {
    "tap-lago": {
        "stream_maps", "stream_map_config", "flattening_enabled", "flattening_max_depth",
    },
    "target-lago": {"stream_maps", "stream_map_config"},
}  # fmt: skip


def _declared(kind: str, name: str) -> dict[str, dict]:
    project = yaml.safe_load((ROOT / "meltano.yml").read_text())
    [plugin] = [p for p in project["plugins"][kind] if p["name"] == name]
    return {s["name"]: s for s in plugin["settings"]}


@pytest.mark.parametrize(("kind", "name"), list(PLUGINS))
def test_meltano_settings_match_the_plugin(kind: str, name: str) -> None:
    plugin = PLUGINS[(kind, name)]
    own = set(plugin.config_jsonschema["properties"]) - SDK_SETTINGS
    declared = _declared(kind, name)
    assert own <= set(declared), f"{name}: settings missing from meltano.yml"
    assert set(declared) - own == DECLARED_SDK_SETTINGS[name]
    assert declared["api_key"].get("sensitive") is True
    for setting in own:
        spec = plugin.config_jsonschema["properties"][setting]
        if "default" in spec and spec["default"] not in ({}, None):
            assert declared[setting].get("value") == spec["default"], setting
