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


def _declared(kind: str, name: str) -> dict[str, dict]:
    project = yaml.safe_load((ROOT / "meltano.yml").read_text())
    [plugin] = [p for p in project["plugins"][kind] if p["name"] == name]
    return {s["name"]: s for s in plugin["settings"]}


@pytest.mark.parametrize(("kind", "name"), list(PLUGINS))
def test_meltano_settings_match_the_plugin(kind: str, name: str) -> None:
    plugin = PLUGINS[(kind, name)]
    own = set(plugin.config_jsonschema["properties"])
    declared = _declared(kind, name)
    assert own <= set(declared), f"{name}: settings missing from meltano.yml"
    # Beyond the plugin's own settings, only SDK capabilities it declares are listed.
    sdk = {"stream_maps", "stream_map_config", "flattening_enabled", "flattening_max_depth"}
    assert set(declared) - own <= sdk
    assert declared["api_key"].get("sensitive") is True
    for setting, spec in plugin.config_jsonschema["properties"].items():
        if "default" in spec and spec["default"] not in ({}, None):
            assert declared[setting].get("value") == spec["default"], setting
