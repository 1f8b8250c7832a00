"""Progress lines while a stream runs, and one summary table at the end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.tap.conftest import tap_config

REPO_ROOT = Path(__file__).resolve().parents[2]
# The console entry point with a progress line allowed every 0.2 s (the default is 5 s).
_CLI = (
    "import tap_lago.progress as p; p.PROGRESS_EVERY_SECONDS = 0.2; "
    "from tap_lago.tap import TapLago; TapLago.cli()"
)
PROGRESS = re.compile(
    r"\| events: (?P<records>[\d,]+) records, window (?P<part>\d+)/(?P<parts>\d+) .*"
    r"page (?P<page>[\d,]+)/(?P<pages>[\d,]+), (?P<rate>[\d,]+) records/s, ETA \d+:\d\d:\d\d$"
)


def test_progress_lines_and_the_closing_table(sandbox_factory: Any, tmp_path: Path) -> None:
    sb = sandbox_factory(seed={"seed": 4, "customers": 6, "events": 600})
    sb.set_faults(
        [
            {"path": "/api/v1/events", "fault": "latency", "delay_ms": 40},
            {"path": "/api/v1/taxes", "fault": "rate_limit", "reset_seconds": 0, "count": 1},
            {"path": "/api/v1/taxes", "fault": "error", "status": 503, "count": 1},
        ]
    )
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tap_config(sb, page_size=10, max_concurrency=1)))
    proc = subprocess.run(
        [sys.executable, "-c", _CLI, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env={**os.environ},
        check=False,
    )
    sb.set_faults([])
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr.splitlines()

    lines = [m for line in log if (m := PROGRESS.search(line))]
    assert len(lines) >= 3, "\n".join(log[-40:])
    records = [int(m["records"].replace(",", "")) for m in lines]
    assert records == sorted(records)
    assert all(int(m["parts"]) >= 1 and int(m["page"]) <= int(m["pages"]) for m in lines)

    # The table: a header, then one row per stream that ran, with the counts of the run.
    start = next(i for i, line in enumerate(log) if line.endswith("Sync summary:"))
    header = log[start + 1].split("| ")[-1].split()
    assert header == ["stream", "records", "requests", "retries", "429s", "seconds"]
    rows = {}
    for line in log[start + 2 :]:
        cells = line.split("| ")[-1].split()
        if len(cells) != len(header):
            break
        rows[cells[0]] = dict(zip(header[1:], cells[1:], strict=True))
    emitted: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        message = json.loads(line)
        if message["type"] == "RECORD":
            emitted[message["stream"]] = emitted.get(message["stream"], 0) + 1
    assert {s: int(r["records"].replace(",", "")) for s, r in rows.items() if s in emitted} == (
        emitted
    )
    assert rows["taxes"]["retries"] == "2"
    assert rows["taxes"]["429s"] == "1"
    assert rows["taxes"]["requests"] == "3"
    assert int(rows["events"]["requests"].replace(",", "")) >= 600 // 10
    assert float(rows["events"]["seconds"]) > 0
    # Per-request METRIC lines are gone; what is left (the SDK's counters and timer, per
    # stream and child context) stays far below one per request.
    metric_lines = [line for line in log if "METRIC" in line]
    assert not [line for line in metric_lines if "http_request_duration" in line]
    events = [line for line in metric_lines if '"stream":"events"' in line]
    assert len(events) < int(rows["events"]["requests"].replace(",", "")) / 10
