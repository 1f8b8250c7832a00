"""Dead letters edited and re-sent with `python -m target_lago.resend` land exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.lago_sandbox import Sandbox
from tests.target.helpers import (
    EVENT_PROPS,
    cli_command,
    cli_env,
    dead_letters,
    record,
    run_cli,
    schema,
    usage_rows,
    write_config,
)


def resend(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "target_lago.resend", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_edited_dead_letters_are_re_sent_and_land_exactly_once(
    lago: Sandbox, config: dict, metric_code: str, tmp_path: Path
) -> None:
    rows = usage_rows(200, ["sub_a", "sub_b"], metric_code)
    for i in (3, 50, 120):
        rows[i]["timestamp"] = "31/12/2025"  # a format nobody can read
    rows[77]["precise_total_amount_cents"] = "12,50"
    customers = [{"external_id": "", "name": "No id"}]
    messages = [
        schema("events", {**EVENT_PROPS, "precise_total_amount_cents": {}}, ["id"]),
        *(record("events", r) for r in rows),
        schema("customers", {"external_id": {"type": "string"}}, ["external_id"]),
        *(record("customers", c) for c in customers),
    ]
    cfg = {**config, "allow_rejections": True}
    first = run_cli(tmp_path, cfg, messages)
    assert first.returncode == 0, first.stderr[-2000:]
    assert len(lago.dump()["events"]) == 196
    letters = dead_letters(config["dead_letter_path"])
    assert len(letters) == 5
    events = [d for d in letters if d["stream"] == "events"]
    assert all(d["key_properties"] == ["id"] and d["transaction_id"] for d in events)

    # The user fixes the rows in the dead-letter file itself.
    fixed = tmp_path / "fixed.jsonl"
    with fixed.open("w") as handle:
        for letter in letters:
            rec = letter["record"]
            if rec.get("timestamp") == "31/12/2025":
                rec["timestamp"] = "2025-12-31T00:00:00Z"
            if rec.get("id") == 120:
                rec["id"] = 9120  # even a key column edited keeps the event's id
            if rec.get("precise_total_amount_cents") == "12,50":
                rec["precise_total_amount_cents"] = "12.50"
            if "external_id" in rec:
                rec["external_id"] = "cust_fixed"
            handle.write(json.dumps(letter) + "\n")
    made = resend(str(fixed))
    assert made.returncode == 0, made.stderr
    assert "5 record(s) to re-send, 0 line(s) left out" in made.stderr
    singer = tmp_path / "resend.singer"
    singer.write_text(made.stdout)
    again = tmp_path / "again"
    again.mkdir()
    settings = {**config, "dead_letter_path": str(again / "dl.jsonl")}
    for attempt in range(2):  # re-sent twice: stored once
        with singer.open() as stdin:
            done = subprocess.run(
                cli_command(write_config(again, settings)),
                stdin=stdin,
                capture_output=True,
                text=True,
                env=cli_env(),
                timeout=60,
                check=False,
            )
        assert done.returncode == 0, done.stderr[-2000:]
        summary = [line for line in done.stderr.splitlines() if "summary stream=events" in line]
        counts = ("delivered=4 already_present=0", "delivered=0 already_present=4")
        assert counts[attempt] in summary[0]
    stored = lago.dump()["events"]
    assert len(stored) == 200
    by_id = {e["properties"]["id"]: e for e in stored}
    assert by_id[77]["precise_total_amount_cents"] == "12.5"
    assert by_id[3]["timestamp"] == "2025-12-31T00:00:00.000Z"
    # The re-sent events kept the ids they were given before they were rejected.
    assert {d["transaction_id"] for d in events} <= {e["transaction_id"] for e in stored}
    [old_120] = [d["transaction_id"] for d in events if d["record"]["id"] == 9120]  # edited
    assert by_id[9120]["transaction_id"] == old_120
    assert not (again / "dl.jsonl").exists()
    assert [c["external_id"] for c in lago.dump()["customers"]] == ["cust_fixed"]


def test_the_resend_tool_reports_lines_it_cannot_use(tmp_path: Path) -> None:
    path = tmp_path / "dl.jsonl"
    conflict = {"stream": "usage", "action": "events", "error_code": "conflicting_duplicate",
                "transaction_id": "t-1", "record": {"id": 2, "transaction_id": "t-1"}}
    renamed = {**conflict, "record": {"id": 3, "transaction_id": "t-1-second"}}
    path.write_text(
        "\n".join(
            [
                json.dumps({"stream": "events", "action": "events", "record": '{"x": [[[...'}),
                "not json",
                json.dumps({"stream": "usage", "action": "events", "record": {"id": 1},
                            "key_properties": ["id"], "transaction_id": "tl-1"}),
                json.dumps(conflict),
                json.dumps(renamed),
                json.dumps({"stream": "usage"}),
            ]
        )
        + "\n"
    )  # fmt: skip
    made = resend(str(path), "--stream", "usage")
    assert made.returncode == 1  # some lines were left out: the file is their only copy
    assert "dl.jsonl:1: left out: stream 'events': the record could not be read" in made.stderr
    assert "dl.jsonl:2: left out: not JSON" in made.stderr
    assert "dl.jsonl:4: left out: stream 'usage': a conflicting duplicate" in made.stderr
    assert "dl.jsonl:6: left out: stream 'usage': the line has no record" in made.stderr
    assert "2 record(s) to re-send, 4 line(s) left out" in made.stderr
    lines = [json.loads(line) for line in made.stdout.splitlines()]
    assert lines[0]["type"] == "SCHEMA"
    assert lines[0]["key_properties"] == ["id"]
    assert lines[1]["record"] == {"id": 1, "transaction_id": "tl-1"}
    assert lines[2]["record"] == {"id": 3, "transaction_id": "t-1-second"}
    missing_file = resend(str(tmp_path / "nope.jsonl"))
    assert missing_file.returncode == 2
    assert "cannot read" in missing_file.stderr
    assert "Traceback" not in missing_file.stderr
