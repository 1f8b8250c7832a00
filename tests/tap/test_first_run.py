"""A first run explains itself: one line per invalid setting or failed connection, exit 1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.tap.conftest import parse_messages, tap_config

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_cli(
    tmp_path: Path, config: dict[str, Any], *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the ``tap-lago`` console script; return the process and its wall time."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    exe = Path(sys.executable).parent / "tap-lago"
    started = time.monotonic()
    proc = subprocess.run(
        [str(exe), "--config", str(path), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )
    return proc, time.monotonic() - started


def errors(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The ERROR lines of a run's log."""
    return [line for line in proc.stderr.splitlines() if "| ERROR " in line]


def assert_one_line_failure(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 1, no traceback, exactly one ERROR line holding every needle; returns it."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = errors(proc)
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command", [("--discover",), ()], ids=["discover", "sync"])
def test_api_url_without_scheme_names_the_setting_and_the_fix(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    config = {"api_key": "k", "api_url": "api.eu.getlago.com/api/v1"}
    proc, _ = run_cli(tmp_path, config, *command)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    named = [line for line in errors(proc) if "api_url" in line]
    assert len(named) == 1, proc.stderr
    assert "'https://api.eu.getlago.com/api/v1'" in named[0]
    assert "scheme" in named[0]


def test_api_url_without_api_v1_names_the_fix_and_the_instances(
    sandbox: Any, tmp_path: Path
) -> None:
    """A warning at start-up (a proxy or a mock may serve the API elsewhere), then the
    connection check's 404 ends the run in one line."""
    url = sandbox.base_url  # the sandbox serves the API under /api/v1 only
    proc, _ = run_cli(tmp_path, tap_config(sandbox, api_url=url))
    warned = [line for line in proc.stderr.splitlines() if "| WARNING " in line]
    (warning,) = [line for line in warned if "api_url" in line]
    assert f"'{url}/api/v1'" in warning
    for instance in ("https://api.getlago.com/api/v1", "https://api.eu.getlago.com/api/v1"):
        assert instance in warning
    assert "self-hosted" in warning
    assert_one_line_failure(proc, "404", "api_url", "/api/v1")


def test_invalid_start_date_is_named_before_any_stream(sandbox: Any, tmp_path: Path) -> None:
    sandbox.requests(clear=True)
    proc, _ = run_cli(tmp_path, tap_config(sandbox, start_date="2026-02-30"))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    (line,) = [line for line in errors(proc) if "start_date" in line]
    assert "'2026-02-30'" in line
    assert "2026-01-01" in line  # an example of a valid value
    assert not [m for m in parse_messages(proc.stdout) if m["type"] != "STATE"]
    assert sandbox.requests() == []


@pytest.mark.parametrize(
    ("value", "needle"), [(-1, "minimum of 0"), ("fast", "not of type 'integer'")]
)
def test_a_setting_of_the_wrong_kind_is_one_line_naming_it(
    tmp_path: Path, value: Any, needle: str
) -> None:
    config = {"api_key": "k", "api_url": "http://127.0.0.1:9/api/v1"}
    proc, _ = run_cli(tmp_path, {**config, "max_requests_per_second": value})
    assert_one_line_failure(proc, "Invalid setting", "max_requests_per_second", needle)


def test_closed_port_gives_up_within_seconds_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/v1"
    proc, seconds = run_cli(tmp_path, {"api_key": "k", "api_url": url, "max_retries": 8})
    assert_one_line_failure(proc, url, "refused")
    assert seconds < 20, seconds  # no backoff: the interpreter start-up is most of it


def test_https_against_an_http_server_is_a_tls_hint(sandbox: Any, tmp_path: Path) -> None:
    url = sandbox.url.replace("http://", "https://")
    proc, seconds = run_cli(tmp_path, tap_config(sandbox, api_url=url))
    assert_one_line_failure(proc, "TLS", "http://")
    assert seconds < 20, seconds


def test_unknown_path_is_a_404_hint_about_api_url(sandbox: Any, tmp_path: Path) -> None:
    url = sandbox.base_url + "/lago/api/v1"
    proc, _ = run_cli(tmp_path, tap_config(sandbox, api_url=url))
    assert_one_line_failure(proc, "404", "api_url", "/api/v1")


def test_connection_is_checked_once_before_the_first_stream(sandbox: Any, tmp_path: Path) -> None:
    sandbox.requests(clear=True)
    proc, _ = run_cli(tmp_path, tap_config(sandbox, api_key="wrong-key"))
    assert_one_line_failure(proc, "HTTP 401", "api_key")
    # One request of one record, and no stream wrote a record.
    assert [(r["status"], "per_page=1" in r["query"]) for r in sandbox.requests()] == [(401, True)]
    assert not [m for m in parse_messages(proc.stdout) if m["type"] == "RECORD"]


@pytest.mark.parametrize(
    "env",
    [{"LOGLEVEL": "debug"}, {"TAP_LAGO_LOGLEVEL": "debug"}, {}],
    ids=["LOGLEVEL", "TAP", "info"],
)
def test_key_with_a_trailing_newline_is_trimmed_and_never_printed(
    sandbox: Any, tmp_path: Path, env: dict[str, str]
) -> None:
    wrong = "sk-live-4f1c9a77-trailing-newline\n"
    proc, _ = run_cli(tmp_path, tap_config(sandbox, api_key=wrong), env=env)
    assert proc.returncode == 1
    output = proc.stdout + proc.stderr
    assert wrong.strip() not in output
    assert "sk-live" not in output
    assert "HTTP 401" in output  # sent (trimmed) and refused, not an invalid header

    right = tap_config(sandbox, api_key=sandbox.api_key + "\n")
    proc, _ = run_cli(tmp_path, right, "--test", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_test_flag_and_a_sync_are_quiet(sandbox: Any, tmp_path: Path) -> None:
    config = tap_config(sandbox, page_size=5, max_concurrency=8)
    for args in (("--test",), ()):
        proc, _ = run_cli(tmp_path, config, *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        for noise in ("DeprecationWarning", "unhandled error", "Connection pool is full"):
            assert noise not in proc.stderr, (args, noise)
        assert not errors(proc), args
