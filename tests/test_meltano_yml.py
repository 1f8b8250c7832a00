"""meltano.yml declares each plugin as `--about` describes it, as its Hub definition does.

The expected entries are those of `tests.hub_definitions`, built from `<plugin> --about
--format=json`: the same capabilities, and every setting (the SDK's included) with the same
label, kind, secrecy and default.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.hub_definitions import PLUGINS, about, definition
from tests.readme_tables import ROOT

NAMES = [spec.name for spec in PLUGINS]


def _entry(name: str) -> dict[str, Any]:
    project = yaml.safe_load((ROOT / "meltano.yml").read_text())
    [spec] = [p for p in PLUGINS if p.name == name]
    [entry] = [p for p in project["plugins"][spec.plugin_type] if p["name"] == name]
    return dict(entry)


@pytest.mark.parametrize("name", NAMES)
def test_capabilities_are_those_of_about(name: str) -> None:
    assert _entry(name)["capabilities"] == about(name)["capabilities"]


@pytest.mark.parametrize("name", NAMES)
def test_every_setting_is_declared_as_about_describes_it(name: str) -> None:
    entry, expected = _entry(name), definition(name)
    declared = {s["name"]: s for s in entry["settings"]}
    wanted = {s["name"]: s for s in expected["settings"]}
    assert list(declared) == list(wanted), f"{name}: meltano.yml settings differ from --about"
    for setting, want in wanted.items():
        got = declared[setting]
        assert got.get("label") == want["label"], setting
        assert got.get("kind") == want["kind"], setting
        assert bool(got.get("sensitive")) is want["sensitive"], setting
        assert got.get("value") == want.get("value"), setting
    assert declared["api_key"]["sensitive"] is True
    assert entry["settings_group_validation"] == expected["settings_group_validation"]
    assert (entry["namespace"], entry["executable"]) == (
        expected["namespace"],
        expected["executable"],
    )
