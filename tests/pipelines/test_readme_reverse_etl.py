"""The README's reverse-ETL example, run as written through `meltano run`, and its errors.

The SQL, the `meltano.yml` configuration and the commands are read from the README's
blocks marked `<!-- readme-example: NAME -->`. The configuration reaches Meltano as the
environment variables it reads for each setting and extra (`TARGET_LAGO_STREAM_MAPS`,
`TAP_POSTGRES__SELECT`, ...); only the connection and the key are the test's own.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.lago_sandbox import Sandbox
from tests.pg import PostgresServer
from tests.pipelines.harness import ROOT, Meltano, MeltanoRun, meltano_bin, target_summary
from tests.target.helpers import is_check

pytestmark = pytest.mark.usefixtures("meltano_installed")

EXAMPLE = re.compile(r"<!-- readme-example: (\S+) -->\n```\w*\n(.*?)```", re.S)
COMMAND = re.compile(r"^((?:[A-Z_]+=\S+\s+)*)meltano run ([^#\n]+?)\s*(?:#.*)?$", re.M)
CONNECTION = {"host", "port", "user", "password", "database"}  # the test's warehouse


def readme_examples() -> dict[str, str]:
    """The README's marked blocks, by name."""
    return dict(EXAMPLE.findall((ROOT / "README.md").read_text()))


def meltano_env(project: dict[str, Any]) -> dict[str, str]:
    """The README's `meltano.yml` settings and extras as Meltano environment variables."""
    env: dict[str, str] = {}
    for kind in ("extractors", "loaders"):
        for plugin in project["plugins"][kind]:
            prefix = plugin["name"].upper().replace("-", "_")
            for key, value in plugin.get("config", {}).items():
                if key not in CONNECTION:
                    text = value if isinstance(value, str) else json.dumps(value)
                    env[f"{prefix}_{key.upper()}"] = text
            for extra in ("select", "metadata"):
                if extra in plugin:
                    env[f"{prefix}__{extra.upper()}"] = json.dumps(plugin[extra])
    return env


def readme_commands() -> list[tuple[dict[str, str], list[str]]]:
    """The README's `meltano run` lines: their environment assignments and arguments."""
    found = []
    for assignments, args in COMMAND.findall(readme_examples()["commands"]):
        env = dict(pair.split("=", 1) for pair in assignments.split())
        found.append((env, shlex.split(args)))
    return found


def state_ids(meltano: Meltano) -> str:
    """What `meltano state list` shows for the project's system database."""
    proc = subprocess.run(
        [meltano_bin(), "state", "list"],
        cwd=ROOT,
        env=meltano.env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return proc.stdout


def target_lines(run: MeltanoRun, level: str) -> list[str]:
    """target-lago's log lines of one level, as Meltano shows them."""
    return [
        line
        for line in run.stderr.splitlines()
        if re.search(rf"\[{level}\s*\] target-lago", line)
    ]


@pytest.fixture(scope="module")
def warehouse_rows() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the module, holding the README's tables and rows."""
    with PostgresServer() as pg:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(readme_examples()["warehouse.sql"].encode())
        yield pg


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    """The README's `meltano.yml` block."""
    return dict(yaml.safe_load(readme_examples()["meltano.yml"]))


@pytest.fixture(scope="module")
def org(sandbox_factory) -> Sandbox:
    """A Lago organisation with the seeded catalog (plan `growth`, metric `llm_tokens`)."""
    return sandbox_factory(seed={"seed": 42, "customers": 0, "events": 0})


def _expected(pg: PostgresServer) -> dict[str, Any]:
    with psycopg.connect(pg.url) as conn:
        return {
            "customers": dict(conn.execute("select customer_ref, company from billing.customers")),
            "subscriptions": {
                ref: (customer, plan)
                for ref, customer, plan in conn.execute(
                    "select subscription_ref, customer_ref, plan from billing.subscriptions"
                )
            },
            "events": {
                f"usage-{row_id}": (sub, quantity)
                for row_id, sub, quantity in conn.execute(
                    "select id, subscription_ref, quantity from billing.usage"
                )
            },
        }


def test_the_readme_example_runs_as_written(
    org: Sandbox, warehouse_rows: PostgresServer, project: dict[str, Any], tmp_path: Path
) -> None:
    commands = readme_commands()
    assert [args for _, args in commands] == [["tap-postgres", "target-lago"]] * 3
    assert commands[0][0] == {"TARGET_LAGO_DRY_RUN": "true"}
    assert commands[1][0] == commands[2][0] == {}
    org.reset({"seed": 42, "customers": 0, "events": 0})
    org.requests(clear=True)
    config = meltano_env(project)
    expected = _expected(warehouse_rows)
    assert len(expected["events"]) == 5000

    def run(step: int) -> MeltanoRun:
        env, args = commands[step]
        meltano = Meltano(
            tmp_path, destination=org, warehouse=warehouse_rows, extra_env={**config, **env}
        )
        return meltano.run(*args)

    meltano = Meltano(tmp_path, destination=org, warehouse=warehouse_rows, extra_env=config)

    # 1. The dry run sends nothing, writes no dead letter and stores no state.
    dry = run(0)
    assert org.requests() == []
    assert "tap-postgres-to-target-lago" not in state_ids(meltano)
    assert not meltano.dead_letter_path.exists()
    assert target_summary(dry.stderr, "billing-usage")["delivered"] == 5000  # would send
    [last] = [line for line in dry.stderr.splitlines() if "dry run: nothing was sent" in line]
    assert "5006 record(s) would be written, 0 record(s) would be rejected" in last
    assert target_lines(dry, "error") == []
    assert "billing-wallets" not in dry.stderr  # the README's select, not the repository's

    # 2. The real run lands every customer, subscription and usage row.
    real = run(1)
    dump = org.dump()
    assert {c["external_id"]: c["name"] for c in dump["customers"]} == expected["customers"]
    assert {c["currency"] for c in dump["customers"]} == {"EUR"}
    assert {
        s["external_id"]: (s["external_customer_id"], s["plan_code"])
        for s in dump["subscriptions"]
    } == expected["subscriptions"]
    assert {s["status"] for s in dump["subscriptions"]} == {"active"}
    events = {
        e["transaction_id"]: (e["external_subscription_id"], int(e["properties"]["tokens"]))
        for e in dump["events"]
    }
    assert events == expected["events"]
    assert {e["code"] for e in dump["events"]} == {"llm_tokens"}
    assert target_summary(real.stderr, "billing-usage")["delivered"] == 5000
    assert target_summary(real.stderr, "billing-customers")["delivered"] == 3
    assert target_lines(real, "warning") == target_lines(real, "error") == []
    assert "is full" not in real.stderr  # the SDK's line per drained batch is DEBUG only
    assert meltano.dead_letters() == []
    assert "tap-postgres-to-target-lago" in state_ids(meltano)

    # 3. Run again: only the rows on the bookmarks come back, and nothing is added.
    again = run(2)
    usage = target_summary(again.stderr, "billing-usage")
    assert usage["delivered"] == 0
    assert usage["received"] == usage["already_present"] <= 1
    assert len(org.dump()["events"]) == 5000
    assert org.dump()["customers"] == dump["customers"]


def _writes(lago: Sandbox) -> list[dict[str, Any]]:
    """Requests that could change Lago (not the target's start-up checks)."""
    return [r for r in lago.requests() if r["method"] != "GET" and not is_check(r)]


def _broken(project: dict[str, Any], change: Any) -> dict[str, str]:
    broken = copy.deepcopy(project)
    [target] = broken["plugins"]["loaders"]
    change(target["config"])
    return meltano_env(broken)


def _assert_one_clean_error(run: MeltanoRun) -> str:
    """The run failed with one target-lago ERROR line, and no traceback anywhere."""
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert "BrokenPipeError" not in run.stderr
    assert "Loader failed" in run.stderr
    [line] = target_lines(run, "error")
    return line


def test_a_stream_without_action_stops_the_run_with_one_error_line(
    org: Sandbox, warehouse_rows: PostgresServer, project: dict[str, Any], tmp_path: Path
) -> None:
    # billing-customers comes first: the tap still has every usage row to write after it.
    env = _broken(project, lambda config: config["stream_actions"].pop("billing-customers"))
    org.requests(clear=True)
    meltano = Meltano(tmp_path, destination=org, warehouse=warehouse_rows, extra_env=env)
    run = meltano.run("tap-postgres", "target-lago", check=False)

    line = _assert_one_clean_error(run)
    assert "Stream 'billing-customers' has no Lago action" in line
    assert "customers, subscriptions, events" in line
    assert 'stream_actions: {"billing-customers": "customers"}' in line
    assert _writes(org) == []


def test_a_stream_map_naming_a_missing_column_stops_with_one_error_line(
    org: Sandbox, warehouse_rows: PostgresServer, project: dict[str, Any], tmp_path: Path
) -> None:
    def wrong_column(config: dict[str, Any]) -> None:
        config["stream_maps"]["billing-usage"]["external_subscription_id"] = "subscription_id"

    org.requests(clear=True)
    meltano = Meltano(
        tmp_path,
        destination=org,
        warehouse=warehouse_rows,
        extra_env=_broken(project, wrong_column),
    )
    run = meltano.run("tap-postgres", "target-lago", check=False)

    line = _assert_one_clean_error(run)
    assert "stream map of stream 'billing-usage' failed" in line
    assert "field 'external_subscription_id' = 'subscription_id'" in line
    assert "the record has no column 'subscription_id'" in line
    assert "subscription_ref" in line  # the columns it does have
    # The summary still comes, with what was read and not sent.
    assert target_summary(run.stderr, "billing-customers")["received"] == 3
    assert _writes(org) == []
