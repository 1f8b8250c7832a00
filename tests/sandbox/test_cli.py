"""``python -m tests.lago_sandbox``: one ready line, serves, stops cleanly on signals."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^LAGO_SANDBOX_URL=(http://127\.0\.0\.1:(\d+)/api/v1)\n$")


@pytest.fixture
def launch() -> Iterator:
    started: list[subprocess.Popen] = []

    def run(*args: str) -> tuple[subprocess.Popen, str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.lago_sandbox", *args],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = LINE.match(line)
        stderr = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
        assert match, f"unexpected first line {line!r}; stderr: {stderr}"
        return proc, match.group(1)

    yield run
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_the_seeded_org_and_stops_on_signal(launch, sig: signal.Signals) -> None:
    proc, url = launch(
        "--port",
        "0",
        "--api-key",
        "cli-key",
        "--seed",
        "4",
        "--customers",
        "3",
        "--events",
        "25",
        "--months",
        "2",
        "--anchor",
        "2026-03-15",
    )
    response = requests.get(
        url + "/events", headers={"Authorization": "Bearer cli-key"}, timeout=10
    )
    assert response.status_code == 200
    assert response.json()["meta"]["total_count"] == 25
    customers = requests.get(
        url + "/customers", headers={"Authorization": "Bearer cli-key"}, timeout=10
    ).json()
    assert customers["meta"]["total_count"] == 3
    wrong = requests.get(url + "/events", headers={"Authorization": "Bearer x"}, timeout=10)
    assert wrong.status_code == 401
    premium = requests.get(
        url + "/analytics/mrr", headers={"Authorization": "Bearer cli-key"}, timeout=10
    )
    assert (premium.status_code, premium.json()["code"]) == (403, "feature_unavailable")
    proc.send_signal(sig)
    assert proc.wait(timeout=15) == 0
    assert proc.stdout is not None
    assert proc.stdout.read() == "", "exactly one line on stdout"
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url + "/events", timeout=2)


def test_cli_latency_and_premium_options_are_accepted_and_port_is_honoured(launch) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc, url = launch(
        "--port", str(port), "--customers", "1", "--events", "0", "--latency-ms", "5", "--premium"
    )
    assert url == f"http://127.0.0.1:{port}/api/v1"
    response = requests.get(
        url + "/taxes", headers={"Authorization": "Bearer test-api-key"}, timeout=10
    )
    assert response.status_code == 200
    licensed = requests.get(
        url + "/analytics/mrr", headers={"Authorization": "Bearer test-api-key"}, timeout=10
    )
    assert licensed.status_code == 200, "--premium serves the premium endpoints"
    proc.terminate()
    assert proc.wait(timeout=15) == 0


def test_cli_same_options_give_the_same_organisation(launch) -> None:
    dumps = []
    for _ in range(2):
        proc, url = launch(
            "--seed", "8", "--customers", "2", "--events", "10", "--anchor", "2026-01-10"
        )
        dumps.append(requests.get(url.replace("/api/v1", "/_sandbox/dump"), timeout=10).json())
        proc.terminate()
        assert proc.wait(timeout=15) == 0
    assert dumps[0] == dumps[1]
