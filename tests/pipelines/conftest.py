"""Fixtures of the pipeline tests: a PostgreSQL warehouse and the Meltano project."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import PostgresServer
from tests.pipelines.harness import meltano_bin


@pytest.fixture(scope="session")
def meltano_installed() -> None:
    """Meltano and the project's plugins, as .ci/setup installs them."""
    if not os.path.exists(meltano_bin()):
        if os.environ.get("CI") == "true":
            pytest.fail("Meltano is not installed: .ci/setup installs it")
        pytest.skip("Meltano is not installed: run `bash .ci/run` (or .ci/setup) first")


@pytest.fixture
def warehouse() -> Iterator[PostgresServer]:
    """An empty PostgreSQL server on 127.0.0.1 for one test."""
    with PostgresServer() as pg:
        yield pg


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder for Meltano's system database, dead letters and JSONL output."""
    return tmp_path
