"""The README stays true to the plugins and to CI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.readme_tables import GENERATED, README, ROOT, render


@pytest.mark.parametrize("path", list(GENERATED), ids=lambda p: str(p.relative_to(ROOT)))
def test_generated_tables_match_the_plugins(path: Path) -> None:
    text = path.read_text()
    assert render(text, path) == text, (
        f"{path.relative_to(ROOT)}: generated tables drifted: run `python -m tests.readme_tables`"
    )


def test_ci_runs_the_readme_test_command() -> None:
    quick_start = README.read_text().split("## Quick start", 1)[1]
    commands = re.findall(r"^bash (\S+)", quick_start, flags=re.M)
    assert commands[:2] == [".ci/demo", ".ci/run"]
    for script in commands[:2]:
        assert (ROOT / script).is_file()
