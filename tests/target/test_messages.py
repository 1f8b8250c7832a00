"""What a newcomer reads: one ERROR line per fatal problem, short rejections, progress lines.

Every run goes through the `target-lago` console script.
"""

from __future__ import annotations

import itertools
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.lago_sandbox import Sandbox
from tests.target.helpers import (
    EVENT_PROPS,
    cli_command,
    cli_env,
    dead_letters,
    events_messages,
    is_check,
    record,
    run_cli,
    schema,
    to_lines,
    usage_rows,
    write_config,
)

PROGRESS = re.compile(
    r"progress events: ([\d,]+) received, ([\d,]+) delivered, ([\d,]+) already present, "
    r"([\d,]+) rejected \([\d,]+ records/s\)"
)


def errors(stderr: str) -> list[str]:
    """The ERROR lines of a run's log."""
    return [line for line in stderr.splitlines() if "| ERROR" in line]


def summary(stderr: str, stream: str = "events") -> dict[str, int]:
    """The closing counts of a stream."""
    line = next(x for x in stderr.splitlines() if f"summary stream={stream} " in x)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def writes(lago: Sandbox) -> list[dict[str, Any]]:
    """Requests that could change Lago (not the target's start-up checks)."""
    return [r for r in lago.requests() if r["method"] != "GET" and not is_check(r)]


def test_a_stream_without_action_is_one_error_line_and_the_input_is_read_to_its_end(
    lago: Sandbox, config: dict, tmp_path: Path
) -> None:
    # A tap writing into the target after it failed must not hit a closed pipe: under
    # Meltano that ends the run with a BrokenPipeError traceback.
    proc = subprocess.Popen(
        cli_command(write_config(tmp_path, config)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=cli_env(),
    )
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(to_lines([schema("billing-usage", EVENT_PROPS, ["id"])]).encode())
    proc.stdin.flush()
    # The error comes at the SCHEMA; then 2 MB more input, far beyond a pipe's buffer.
    line = proc.stderr.readline().decode()
    while "| ERROR" not in line and line:
        line = proc.stderr.readline().decode()
    rows = usage_rows(10_000, ["sub_a"], "api_calls")
    proc.stdin.write(to_lines(record("billing-usage", r) for r in rows).encode())
    proc.stdin.close()  # raises BrokenPipeError if the target stopped reading
    rest = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1

    assert "Stream 'billing-usage' has no Lago action" in line
    assert "one_off_invoices" in line  # every valid action
    assert 'stream_actions: {"billing-usage": "events"}' in line  # an example to copy
    assert errors(rest) == []  # that one line only
    assert "Traceback" not in line + rest
    assert writes(lago) == []


def test_a_failing_stream_map_is_one_error_line_after_the_summary(
    lago: Sandbox, config: dict, metric_code: str, tmp_path: Path
) -> None:
    rows = usage_rows(60, ["sub_a"], metric_code)
    del rows[45]["units"]  # a row without the column the map reads
    maps = {"events": {"properties": "{'units': units * 2}", "units": "__NULL__"}}
    settings = {**config, "stream_maps": maps, "batch_size": 10, "max_in_flight": 1}
    done = run_cli(tmp_path, settings, events_messages(rows))

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    [line] = errors(done.stderr)
    assert "stream map of stream 'events' failed (record id=45)" in line
    assert "field 'properties' = \"{'units': units * 2}\"" in line
    assert "the record has no column 'units'" in line
    assert "(its columns: code, external_subscription_id, id, timestamp)" in line
    assert line == done.stderr.strip().splitlines()[-1]
    # The summary comes first, with what was delivered before the failure and what not.
    counts = summary(done.stderr)
    assert counts["received"] == 45
    assert counts["delivered"] == len(lago.dump()["events"]) > 0
    assert counts["unsent"] == 45 - counts["delivered"]


def test_an_expression_error_names_the_expression_and_the_error(
    lago: Sandbox, config: dict, metric_code: str, tmp_path: Path
) -> None:
    maps = {"events": {"transaction_id": "'usage-' + id"}}  # id is an integer
    rows = usage_rows(3, ["sub_a"], metric_code)
    done = run_cli(tmp_path, {**config, "stream_maps": maps}, events_messages(rows))

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    [line] = errors(done.stderr)
    assert "field 'transaction_id' = \"'usage-' + id\"" in line
    assert "TypeError: can only concatenate str" in line
    assert writes(lago) == []


def test_a_malformed_line_mid_run_still_logs_the_summary(
    lago: Sandbox, config: dict, metric_code: str, tmp_path: Path
) -> None:
    rows = usage_rows(30, ["sub_a"], metric_code)
    text = to_lines(events_messages(rows)) + "this is not JSON\n"
    text += to_lines(record("events", r) for r in usage_rows(5, ["sub_a"], metric_code, start=30))
    done = subprocess.run(
        cli_command(write_config(tmp_path, config)),
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=cli_env(),
        check=False,
    )
    assert done.returncode == 1
    [line] = errors(done.stderr)
    assert "input line 32 is not a Singer message" in line
    assert summary(done.stderr)["received"] == 30


def invalid_rows(count: int, metric_code: str) -> list[dict[str, Any]]:
    rows = usage_rows(count, ["sub_a"], metric_code)
    for row in rows:
        row["timestamp"] = "yesterday"
    return rows


def test_an_all_invalid_dry_run_shows_the_first_rejections_and_says_nothing_was_sent(
    lago: Sandbox, config: dict, metric_code: str, tmp_path: Path
) -> None:
    rows = invalid_rows(40, metric_code)
    done = run_cli(tmp_path, {**config, "dry_run": True}, events_messages(rows))

    assert done.returncode == 1
    assert lago.requests() == []
    assert done.stderr.count("Would reject a record of stream 'events'") == 5
    assert done.stderr.count("Rejected record: ") == 5
    assert (
        "40 record(s) of stream 'events' would be rejected, the first 5 logged above: "
        "40 x timestamp invalid_format"
    ) in done.stderr
    [line] = errors(done.stderr)
    assert "dry run: nothing was sent to Lago and no STATE was emitted" in line
    assert "all 40 record(s) would be rejected" in line
    assert "deliver" not in line
    assert "Traceback" not in done.stderr


def test_an_all_invalid_real_run_says_nothing_was_written(
    lago: Sandbox, config: dict, metric_code: str, tmp_path: Path
) -> None:
    rows = invalid_rows(40, metric_code)
    done = run_cli(tmp_path, config, events_messages(rows))

    assert done.returncode == 1
    assert writes(lago) == []
    assert done.stderr.count("Rejected a record of stream 'events'") == 5
    assert len(dead_letters(config["dead_letter_path"])) == 40  # every one is kept
    [line] = errors(done.stderr)
    assert "all 40 record(s) were rejected" in line
    assert "nothing was written to Lago and no STATE was emitted" in line
    assert config["dead_letter_path"] in line
    assert "deliver" not in line


def test_progress_lines_count_every_record_and_the_sdk_batch_lines_are_gone(
    lago: Sandbox, config: dict, metric_code: str, tmp_path: Path
) -> None:
    rows = usage_rows(400, ["sub_a"], metric_code)
    rows[7]["code"] = None
    settings = {
        **config,
        "progress_interval": 1,
        "batch_size": 10,
        "max_in_flight": 1,
        "allow_rejections": True,
    }
    # 40 batches one at a time, each held 100 ms: about four seconds, several intervals.
    lago.set_faults([{"fault": "latency", "path": "/api/v1/events/batch", "delay_ms": 100}])
    done = run_cli(tmp_path, settings, events_messages(rows))
    assert done.returncode == 0, done.stderr[-2000:]

    progress = [
        tuple(int(n.replace(",", "")) for n in match)
        for match in PROGRESS.findall(done.stderr)
    ]
    assert len(progress) >= 2
    for received, delivered, present, rejected in progress:
        assert delivered + present + rejected <= received <= 400
    for before, after in itertools.pairwise(progress):
        assert all(a <= b for a, b in zip(before, after, strict=True))  # counts only grow
    assert max(p[3] for p in progress) == 1
    assert summary(done.stderr)["delivered"] == 399
    # The SDK's line per drained batch and its METRIC per batch are DEBUG lines now.
    assert "is full" not in done.stderr
    assert "batch_processing_time" not in done.stderr

    quiet = run_cli(tmp_path, {**settings, "progress_interval": 0}, events_messages(rows))
    assert quiet.returncode == 0
    assert PROGRESS.findall(quiet.stderr) == []
