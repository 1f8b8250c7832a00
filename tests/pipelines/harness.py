"""Run this repository's Meltano project against a sandbox and a throwaway warehouse.

Shared by the demo (``tests/demo.py``) and the pipeline tests: it builds the environment that
points every plugin of ``meltano.yml`` at the given Lago sandboxes and PostgreSQL server, with
a Meltano system database (and so Meltano's state) of its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests

from tests.lago_sandbox import Sandbox
from tests.pg import DATABASE, USER, PostgresServer

ROOT = Path(__file__).resolve().parents[2]


def meltano_bin() -> str:
    """The Meltano executable that .ci/setup installed."""
    return os.environ.get("MELTANO_BIN", str(ROOT / ".cache" / "meltano" / "bin" / "meltano"))


@dataclass
class MeltanoRun:
    """What one `meltano run` did."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


@dataclass
class Meltano:
    """The repository's Meltano project, wired to sandboxes and a warehouse."""

    workdir: Path
    source: Sandbox | None = None
    destination: Sandbox | None = None
    warehouse: PostgresServer | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """The process environment of a `meltano` command."""
        env = dict(os.environ)
        env.update(
            {
                "MELTANO_PROJECT_ROOT": str(ROOT),
                "MELTANO_DATABASE_URI": f"sqlite:///{self.workdir / 'meltano.db'}",
                "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
                "TARGET_LAGO_DEAD_LETTER_PATH": str(self.dead_letter_path),
                "TARGET_JSONL_DESTINATION_PATH": str(self.workdir / "jsonl"),
            }
        )
        if self.source is not None:
            env["TAP_LAGO_API_URL"] = self.source.url
            env["TAP_LAGO_API_KEY"] = self.source.api_key
        if self.destination is not None:
            env["TARGET_LAGO_API_URL"] = self.destination.url
            env["TARGET_LAGO_API_KEY"] = self.destination.api_key
        if self.warehouse is not None:
            for prefix in ("TARGET_POSTGRES", "TAP_POSTGRES"):
                env[f"{prefix}_HOST"] = self.warehouse.host
                env[f"{prefix}_PORT"] = str(self.warehouse.port)
                env[f"{prefix}_USER"] = USER
                env[f"{prefix}_DATABASE"] = DATABASE
                # The throwaway server trusts loopback; target-postgres insists on a password.
                env[f"{prefix}_PASSWORD"] = "unused"
            env["TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA"] = "lago"
            env["TAP_POSTGRES_FILTER_SCHEMAS"] = '["billing"]'
        env.update(self.extra_env)
        return env

    @property
    def dead_letter_path(self) -> Path:
        """Where target-lago writes rejected records in these runs."""
        return self.workdir / "dead_letters.jsonl"

    def run(self, *args: str, check: bool = True, timeout: float = 900) -> MeltanoRun:
        """`meltano run ARGS`; with check, raise with the log when it fails."""
        (self.workdir / "jsonl").mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        proc = subprocess.run(
            [meltano_bin(), "run", *args],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        result = MeltanoRun(
            args, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"meltano run {' '.join(args)} exited {proc.returncode}\n"
                f"{proc.stdout[-5000:]}\n{proc.stderr[-15000:]}"
            )
        return result

    def stored_state(self, state_id: str) -> dict[str, Any]:
        """The Singer state Meltano stored under `state_id` (`meltano state get`)."""
        proc = subprocess.run(
            [meltano_bin(), "state", "get", state_id],
            env=self.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return dict(json.loads(proc.stdout)["singer_state"])

    def dead_letters(self) -> list[str]:
        """The lines target-lago dead-lettered in these runs."""
        path = self.dead_letter_path
        return path.read_text().splitlines() if path.exists() else []


def lago_total(lago: Sandbox, stream: str, params: dict[str, Any] | None = None) -> int:
    """How many objects the Lago API lists for a stream (its `meta.total_count`)."""
    response = requests.get(
        f"{lago.url}/{stream}",
        params={**(params or {}), "per_page": 1},
        headers={"Authorization": f"Bearer {lago.api_key}"},
        timeout=30,
    )
    response.raise_for_status()
    return int(response.json()["meta"]["total_count"])


def table_rows(pg: PostgresServer, schema: str, table: str) -> int | None:
    """Rows in a warehouse table, or None when it does not exist."""
    with psycopg.connect(pg.url) as conn:
        found = conn.execute("select to_regclass(%s)", (f'"{schema}"."{table}"',)).fetchone()
        if not found or found[0] is None:
            return None
        row = conn.execute(f'select count(*) from "{schema}"."{table}"').fetchone()
        return int(row[0]) if row else 0


def lago_objects(
    lago: Sandbox, stream: str, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Every object the Lago API lists for a stream, page by page (bounded)."""
    objects: list[dict[str, Any]] = []
    for page in range(1, 10_000):
        response = requests.get(
            f"{lago.url}/{stream}",
            params={**(params or {}), "page": page, "per_page": 500},
            headers={"Authorization": f"Bearer {lago.api_key}"},
            timeout=30,
        )
        response.raise_for_status()
        body = response.json()
        objects.extend(body[stream])
        if not body["meta"]["next_page"]:
            return objects
    raise AssertionError(f"{stream}: more than 10,000 pages")


def table_values(pg: PostgresServer, schema: str, table: str, columns: str) -> list[tuple]:
    """Rows of selected columns of a warehouse table."""
    with psycopg.connect(pg.url) as conn:
        return conn.execute(f'select {columns} from "{schema}"."{table}"').fetchall()


def target_summary(log: str, stream: str) -> dict[str, int]:
    """target-lago's closing counts for one stream, read from a run's log."""
    match = re.search(rf"summary stream={re.escape(stream)} action=\w+ ((?:\w+=\d+ ?)+)", log)
    assert match, f"no target-lago summary line for {stream}"
    return {k: int(v) for k, v in (pair.split("=") for pair in match.group(1).split())}
