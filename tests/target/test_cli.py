"""The console script: killed and rerun, exit status on rejections, summary lines."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from tests.lago_sandbox import Sandbox
from tests.target.conftest import both_event_stores
from tests.target.helpers import (
    cli_command,
    cli_env,
    dead_letters,
    events_messages,
    run_cli,
    to_lines,
    usage_rows,
    write_config,
)

BATCH = "/api/v1/events/batch"


def acknowledged_batches(lago: Sandbox) -> int:
    return sum(1 for r in lago.requests() if r["path"] == BATCH and r["status"] == 200)


@both_event_stores
def test_killed_mid_run_then_rerun_stores_every_event_exactly_once(
    lago: Sandbox, config: dict, metric_code: str, tmp_path: Path, event_store: str
) -> None:
    rows = usage_rows(4000, ["sub_k1", "sub_k2", "sub_k3"], metric_code)
    input_path = tmp_path / "events.singer"
    input_path.write_text(to_lines(events_messages(rows)))
    # Slow writes plus lost responses, so the kill lands with batches in flight.
    lago.set_faults(
        [
            {"method": "POST", "path": BATCH, "fault": "lost_response", "probability": 0.2},
            {"method": "POST", "path": BATCH, "fault": "latency", "delay_ms": 60},
        ]
    )
    command = cli_command(write_config(tmp_path, {**config, "max_in_flight": 3}))
    with input_path.open() as stdin:
        proc = subprocess.Popen(
            command,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path,
            env=cli_env(),
        )
        deadline = time.monotonic() + 60
        while acknowledged_batches(lago) < 6 and time.monotonic() < deadline:
            assert proc.poll() is None, "the target finished before it could be killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert out == b""  # no STATE: the orchestrator keeps its old bookmark
    lago.set_faults([])
    partial = len(lago.dump()["events"])
    assert 0 < partial < 4000

    rerun = run_cli(tmp_path, config, events_messages(rows))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    events = lago.dump()["events"]
    assert len(events) == 4000
    assert len({(e["external_subscription_id"], e["transaction_id"]) for e in events}) == 4000
    summary = next(line for line in rerun.stderr.splitlines() if "summary stream=events" in line)
    assert "received=4000" in summary
    assert "rejected=0" in summary
    if event_store == "postgres":
        assert "already_present=0" not in summary  # the rerun found the killed run's events
    else:  # a ClickHouse store cannot tell them apart, and the summary says so
        assert "delivered=0 already_present=0" in summary
        assert "accepted_unverified=4000" in summary


def test_cli_exit_status_and_summary_with_rejected_records(
    lago: Sandbox, config: dict, metric_code: str, tmp_path: Path
) -> None:
    rows = usage_rows(50, ["sub_a"], metric_code)
    rows[10]["code"] = None
    rows[20]["external_subscription_id"] = ""
    strict = run_cli(tmp_path, config, events_messages(rows))
    assert strict.returncode == 1
    assert "2 record(s) rejected" in strict.stderr
    assert "Traceback" not in strict.stderr
    assert (
        "summary stream=events action=events received=50 delivered=48 already_present=0 "
        "rejected=2 skipped=0" in strict.stderr
    )
    assert len(lago.dump()["events"]) == 48
    assert len(dead_letters(config["dead_letter_path"])) == 2

    lenient = run_cli(tmp_path, {**config, "allow_rejections": True}, events_messages(rows))
    assert lenient.returncode == 0
    assert "already_present=48 rejected=2" in lenient.stderr
    assert len(lago.dump()["events"]) == 48
