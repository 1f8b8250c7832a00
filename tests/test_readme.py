"""The README stays true to the plugins and to CI."""

from __future__ import annotations

import re

from tests.readme_tables import README, ROOT, render


def test_settings_tables_match_about_output() -> None:
    text = README.read_text()
    assert render(text) == text, (
        "README settings tables drifted from `--about`: run `python -m tests.readme_tables`"
    )


def test_ci_runs_the_readme_test_command() -> None:
    quick_start = README.read_text().split("## Quick start", 1)[1]
    commands = re.findall(r"^bash (\S+)", quick_start, flags=re.M)
    assert commands[:2] == [".ci/demo", ".ci/run"]
    for script in commands[:2]:
        assert (ROOT / script).is_file()
