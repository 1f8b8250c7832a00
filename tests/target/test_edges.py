"""The edges of the Singer protocol: STATE, misconfiguration, conflicts, bad values, the key.

Each test names a way target-lago once lost or miscounted data silently.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from target_lago.target import RecordsRejectedError, TargetLago

from tests.lago_sandbox import Sandbox
from tests.target.conftest import both_event_stores
from tests.target.helpers import (
    EVENT_PROPS,
    cli_command,
    cli_env,
    dead_letters,
    events_messages,
    record,
    run_cli,
    run_target,
    schema,
    state,
    usage_rows,
    write_config,
)

BATCH = "/api/v1/events/batch"


def with_states(rows: list[dict[str, Any]], every: int) -> list[dict]:
    """An events stream with a STATE after every `every` rows (the last row's id)."""
    messages: list[dict] = [events_messages([])[0]]
    for n, row in enumerate(rows, start=1):
        messages.append(record("events", row))
        if n % every == 0:
            messages.append(state({"last_id": row["id"]}))
    return messages


# STATE ------------------------------------------------------------------------------------


def test_a_dry_run_emits_no_state_and_its_last_line_says_so(
    lago: Sandbox, config: dict, metric_code: str, tmp_path: Path
) -> None:
    rows = usage_rows(300, ["sub_a"], metric_code)
    done = run_cli(tmp_path, {**config, "dry_run": True}, with_states(rows, 100))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == ""  # no STATE for the orchestrator to store
    last = done.stderr.strip().splitlines()[-1]
    assert "dry run: nothing was sent to Lago and no STATE was emitted" in last
    assert lago.requests() == []


def test_a_rejected_record_holds_back_every_later_state(
    lago: Sandbox, config: dict, metric_code: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Drain (and so offer STATE) after every record, as a long run does every 5 minutes.
    monkeypatch.setattr(TargetLago, "_MAX_RECORD_AGE_IN_MINUTES", -1.0)
    rows = usage_rows(300, ["sub_a"], metric_code)
    rows[150]["timestamp"] = "not a time"
    strict = run_target(config, with_states(rows, 100))
    assert isinstance(strict.error, RecordsRejectedError)
    assert "no STATE was emitted after the first rejected record" in str(strict.error)
    assert strict.states[-1] == {"last_id": 99}  # the STATE before the bad row only
    assert {"last_id": 199} not in strict.states
    assert strict.counts["events"]["delivered"] == 299  # the good rows still land

    lenient = run_target({**config, "allow_rejections": True}, with_states(rows, 100))
    assert lenient.error is None
    assert lenient.states[-1] == {"last_id": 299}  # the dead letter is the record's copy
    assert lenient.counts["events"]["already_present"] == 299


# Misconfiguration --------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("{base}", "api_url must be the API root ending in /api/v1"),
        ("{base}/v1", "api_url must be the API root ending in /api/v1"),
        ("127.0.0.1:8080/api/v1", "api_url must start with https://"),
        ("{base}/lago/api/v1", "Lago has no endpoint POST {base}/lago/api/v1/events/batch"),
        ("http://127.0.0.1:{closed}/api/v1", "the connection was refused"),
        ("https://127.0.0.1:{port}/api/v1", "the TLS handshake failed"),
        ("http://no-such-host.invalid/api/v1", "the host name does not resolve"),
    ],
    ids=["no-api-v1", "half-path", "no-scheme", "wrong-prefix", "closed-port", "tls", "dns"],
)
def test_a_wrong_api_url_is_one_line_and_no_dead_letter(  # noqa: PLR0917
    lago: Sandbox, config: dict, metric_code: str, tmp_path: Path, url: str, expected: str
) -> None:
    port = lago.base_url.rsplit(":", 1)[1]
    fill = {"base": lago.base_url, "closed": closed_port(), "port": port}
    rows = usage_rows(1000, ["sub_a"], metric_code)
    # Default retries (8): a wrong address must not be retried for a minute.
    cfg = {k: v for k, v in config.items() if k != "max_retries"}
    done = run_cli(
        tmp_path, {**cfg, "api_url": url.format(**fill)}, with_states(rows, 500), timeout=30
    )
    assert done.returncode == 1
    assert done.stdout == ""  # no STATE
    assert expected.format(**fill) in done.stderr
    assert "api_url" in done.stderr
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line or "CRITICAL" in line]
    assert len(errors) == 1, errors
    assert "Traceback" not in done.stderr
    assert "retry" not in done.stderr
    assert not Path(config["dead_letter_path"]).exists()
    assert lago.dump()["events"] == []


def test_a_404_on_the_endpoint_mid_run_stops_without_dead_letters(
    lago: Sandbox, config: dict, metric_code: str
) -> None:
    # A gateway that lost its route after the start-up check: every batch would be a 404.
    lago.set_faults([{"path": BATCH, "fault": "error", "status": 404, "after": 1}])
    run = run_target(config, with_states(usage_rows(500, ["sub_a"], metric_code), 100))
    assert "Lago has no endpoint POST" in str(run.error)
    assert run.states == []
    assert dead_letters(config["dead_letter_path"]) == []


def test_an_api_key_ending_in_a_newline_appears_in_no_output(
    lago: Sandbox, config: dict, metric_code: str, tmp_path: Path
) -> None:
    secret = f"{lago.api_key}\n"
    rows = usage_rows(20, ["sub_a"], metric_code)
    env = {**cli_env(), "LOGLEVEL": "DEBUG"}
    good = subprocess.run(
        cli_command(write_config(tmp_path, {**config, "api_key": secret})),
        input="".join(json.dumps(m) + "\n" for m in with_states(rows, 10)),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert good.returncode == 0, good.stderr[-2000:]
    assert len(lago.dump()["events"]) == 20  # trimmed, the key works
    wrong = "sk-wrong-0b9e41\n"
    bad = subprocess.run(
        cli_command(write_config(tmp_path, {**config, "api_key": wrong})),
        input="".join(json.dumps(m) + "\n" for m in with_states(rows, 10)),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1
    assert "HTTP 401" in bad.stderr
    inner = subprocess.run(
        cli_command(write_config(tmp_path, {**config, "api_key": "sk-in\nsidekey9"})),
        input="",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert inner.returncode != 0
    assert "api_key contains a line break" in inner.stderr
    for done in (good, bad, inner):
        text = done.stdout + done.stderr
        assert "DEBUG" in done.stderr or done is inner  # the runs logged at DEBUG level
        for fragment in (lago.api_key, "sk-wrong-0b9e41", "sk-in", "sidekey9"):
            assert fragment not in text


# Conflicting duplicates --------------------------------------------------------------------


@both_event_stores
def test_a_conflicting_duplicate_in_one_run_is_dead_lettered_with_both_values(
    lago: Sandbox, config: dict, metric_code: str, event_store: str
) -> None:
    props = {**EVENT_PROPS, "transaction_id": {"type": "string"}, "properties": {}}
    first = {"id": 1, "transaction_id": "inv-7", "code": metric_code,
             "external_subscription_id": "sub_a", "timestamp": 1_735_689_600,
             "properties": {"units": 5}}
    same = {**first, "id": 2}  # the same event again: not a conflict
    other_time = {**first, "id": 3, "timestamp": 1_735_689_660}
    other_units = {**first, "id": 4, "properties": {"units": 50}}
    rows = [first, same, other_time, other_units]  # fmt: skip
    messages = [schema("events", props, ["id"]), *(record("events", r) for r in rows)]
    run = run_target(config, messages)
    assert isinstance(run.error, RecordsRejectedError)
    letters = dead_letters(config["dead_letter_path"])
    assert [d["record"]["id"] for d in letters] == [3, 4]
    counts = run.counts["events"]
    if event_store == "postgres":  # the exact repeat was sent and found already stored
        assert (counts["delivered"], counts["already_present"]) == (1, 1)
    else:
        assert counts["accepted_unverified"] == 2
    assert counts["rejected"] == 2
    assert {d["error_code"] for d in letters} == {"conflicting_duplicate"}
    assert all(d["transaction_id"] == "inv-7" for d in letters)
    message = letters[1]["message"]
    assert '"units":5' in message
    assert '"units":50' in message
    events = lago.dump()["events"]
    assert [(e["timestamp"], e["properties"]) for e in events] == [
        ("2025-01-01T00:00:00.000Z", {"units": 5})
    ]  # billed once, with the first value


def test_verify_duplicates_finds_a_conflict_with_an_earlier_run(
    lago: Sandbox, config: dict, metric_code: str
) -> None:
    rows = usage_rows(50, ["sub_a"], metric_code)
    assert run_target(config, events_messages(rows)).error is None
    changed = [dict(r) for r in rows]
    changed[7]["units"] = 999  # the warehouse row changed after it was billed
    plain = run_target(config, events_messages(changed))
    assert plain.error is None  # Lago keeps the stored event: counted as already present
    assert plain.counts["events"]["already_present"] == 50

    checked = run_target({**config, "verify_duplicates": True}, events_messages(changed))
    assert isinstance(checked.error, RecordsRejectedError)
    assert checked.counts["events"]["already_present"] == 49
    [letter] = dead_letters(config["dead_letter_path"])
    assert (letter["error_code"], letter["record"]["id"]) == ("conflicting_duplicate", 7)
    assert '"units": 8' in letter["message"]  # the stored value
    assert '"units":999' in letter["message"]  # this record's value
    reads = [r for r in lago.requests() if r["method"] == "GET" and "/events/" in r["path"]]
    assert len(reads) == 50  # one GET per reported duplicate, in the verified run only


# Bad values ----------------------------------------------------------------------------------


BAD_VALUES = {
    "nan": ('"units": NaN', "units"),
    "infinity": ('"units": -Infinity', "units"),
    "surrogate": ('"region": "\\udc80"', "region"),
    "deep": ('"tags": ' + "[" * 2000 + "]" * 2000, None),
    "deep-object": ('"tags": ' + '{"a":' * 40 + "1" + "}" * 40, "tags.a.a.a"),
    "decimal-comma": ('"precise_total_amount_cents": "12,50"', "precise_total_amount_cents"),
    "decimal-text": ('"precise_total_amount_cents": "abc"', "precise_total_amount_cents"),
    "decimal-nan": ('"precise_total_amount_cents": "NaN"', "precise_total_amount_cents"),
    "decimal-empty": ('"precise_total_amount_cents": ""', "precise_total_amount_cents"),
    "decimal-bool": ('"precise_total_amount_cents": true', "precise_total_amount_cents"),
    "decimal-huge": ('"precise_total_amount_cents": "1e25"', "precise_total_amount_cents"),
    "key-column-null": ('"id": null, "row": 500', "id"),
}


def strict_json(constant: str) -> None:
    raise AssertionError(f"the dead-letter file holds {constant}, which is not JSON")


@pytest.mark.parametrize("kind", list(BAD_VALUES))
def test_a_bad_value_rejects_its_own_record_and_the_other_999_land(
    lago: Sandbox, config: dict, metric_code: str, tmp_path: Path, kind: str
) -> None:
    rows = usage_rows(1000, ["sub_a", "sub_b"], metric_code)
    lines = [json.dumps(m) for m in with_states(rows, 250)]
    bad_index = next(i for i, line in enumerate(lines) if '"id": 500,' in line)
    fragment, field = BAD_VALUES[kind]
    lines[bad_index] = lines[bad_index].replace('"units":', fragment + ', "x":', 1)
    done = subprocess.run(
        cli_command(write_config(tmp_path, {**config, "allow_rejections": True})),
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    stored = lago.dump()["events"]
    assert len(stored) == 999
    assert all(e["precise_total_amount_cents"] is None for e in stored)
    [line] = Path(config["dead_letter_path"]).read_text().splitlines()
    letter = json.loads(line, parse_constant=strict_json)  # NaN is written as text
    assert letter["stream"] == "events"
    if kind == "key-column-null":  # refused by the schema (id is an integer), named
        assert list(letter["details"]) == ["id"]
    elif field is not None:
        [named] = letter["details"]
        assert named.startswith(field), letter
        assert f"'{named}'" in letter["message"]
        assert letter["record"]["id"] == 500
        assert letter["transaction_id"].startswith("tl-")
    else:  # too deep for any JSON reader: the raw line is kept
        assert '"id": 500' in letter["record"]
    assert json.loads(done.stdout.splitlines()[-1]) == {"last_id": 999}


# Counts --------------------------------------------------------------------------------------


@both_event_stores
def test_a_replay_under_lost_responses_reports_nothing_delivered(
    lago: Sandbox, config: dict, metric_code: str, event_store: str
) -> None:
    rows = usage_rows(2000, ["sub_a", "sub_b"], metric_code)
    first = run_target(config, events_messages(rows))
    assert first.error is None
    # Lago's created_at has whole seconds: an event stored less than about two seconds
    # before a lost response cannot be told from one stored by it (README).
    time.sleep(2.5)
    lago.set_faults(
        [
            {"path": BATCH, "fault": "lost_response", "probability": 0.3, "seed": 5},
            {"path": BATCH, "fault": "drop", "probability": 0.1, "seed": 6},
        ]
    )
    replay = run_target({**config, "max_retries": 12}, events_messages(rows))
    assert replay.error is None
    assert sum(rule["fired"] for rule in lago.faults()) > 5
    counts = replay.counts["events"]
    assert counts["delivered"] == 0
    if event_store == "postgres":
        assert counts["already_present"] == 2000
    else:  # a ClickHouse store answers 200 to a duplicate: reported as such
        assert counts["accepted_unverified"] == 2000
    lago.set_faults([])
    assert len(lago.dump()["events"]) == 2000


def test_the_summary_names_each_counter(
    lago: Sandbox, config: dict, metric_code: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        run_target(config, events_messages(usage_rows(3, ["sub_a"], metric_code)))
    assert (
        "summary stream=events action=events received=3 delivered=3 already_present=0 "
        "rejected=0 skipped=0 accepted_unverified=0"
    ) in caplog.text


@both_event_stores
def test_an_event_property_named_lago_id_does_not_confuse_the_counts(
    lago: Sandbox, config: dict, metric_code: str, event_store: str
) -> None:
    props = {**EVENT_PROPS, "properties": {}}
    row = {"id": 1, "code": metric_code, "external_subscription_id": "sub_a",
           "timestamp": 1_735_689_600, "properties": {"lago_id": None, "units": 1}}  # fmt: skip
    run = run_target(config, [schema("events", props, ["id"]), record("events", row)])
    assert run.error is None
    counter = "delivered" if event_store == "postgres" else "accepted_unverified"
    assert run.counts["events"][counter] == 1


def test_a_conflict_across_a_schema_change_or_another_stream_is_still_caught(
    lago: Sandbox, config: dict, metric_code: str
) -> None:
    props = {**EVENT_PROPS, "transaction_id": {"type": "string"}, "properties": {}}
    row = {"id": 1, "transaction_id": "inv-9", "code": metric_code,
           "external_subscription_id": "sub_a", "timestamp": 1_735_689_600,
           "properties": {"units": 5}}  # fmt: skip
    wider = {**props, "loaded_at": {"type": "string"}}
    messages = [
        schema("events", props, ["id"]),
        record("events", row),
        schema("events", wider, ["id"]),  # the source added a column mid-run
        record("events", {**row, "id": 2, "properties": {"units": 6}, "loaded_at": "x"}),
        schema("more-usage", props, ["id"]),
        record("more-usage", {**row, "id": 3, "properties": {"units": 7}}),
    ]
    run = run_target({**config, "stream_actions": {"more-*": "events"}}, messages)
    assert isinstance(run.error, RecordsRejectedError)
    letters = dead_letters(config["dead_letter_path"])
    assert [(d["stream"], d["error_code"]) for d in letters] == [
        ("events", "conflicting_duplicate"),
        ("more-usage", "conflicting_duplicate"),
    ]
    assert [e["properties"] for e in lago.dump()["events"]] == [{"units": 5}]


# What a red team found ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"api_url": "http://127.0.0.1:99999/api/v1"}, "has no valid host and port"),
        ({"api_url": "http://[::1/api/v1"}, "is not a URL"),
        ({"api_url": "https://lago.example.com/api/v2"}, "e.g. https://lago.example.com/api/v1"),
        ({"api_url": "http://user:PASSW0RD@127.0.0.1:9/api/v2"}, "http://user:***@127.0.0.1"),
        ({"api_key": ["SECRETZZZ"]}, "*** is not of type 'string'"),
        ({"api_key": 12345678}, "*** is not of type 'string'"),
        ({"dead_letter_path": ""}, "dead_letter_path must name a file"),
        ({"dead_letter_path": "."}, "is a folder"),
        (
            {"flattening_enabled": True, "flattening_max_depth": 3},
            "flattening_enabled would rename nested fields",
        ),
    ],
)
def test_a_bad_setting_is_one_line_that_quotes_no_secret(
    config: dict, tmp_path: Path, change: dict, expected: str
) -> None:
    done = run_cli(tmp_path, {**config, **change}, [])
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, done.stderr
    assert expected in errors[0]
    for secret in ("SECRETZZZ", "12345678", "PASSW0RD"):
        assert secret not in done.stderr


def test_a_password_in_api_url_is_not_printed_when_lago_cannot_be_reached(
    config: dict, tmp_path: Path, metric_code: str
) -> None:
    url = f"http://user:PASSW0RD@127.0.0.1:{closed_port()}/api/v1"
    done = run_cli(tmp_path, {**config, "api_url": url}, events_messages([]))
    assert done.returncode == 1
    assert "the connection was refused" in done.stderr
    assert "PASSW0RD" not in done.stderr


def test_a_wrong_column_in_transaction_id_columns_stops_at_the_schema(
    lago: Sandbox, config: dict, metric_code: str, tmp_path: Path
) -> None:
    cfg = {**config, "transaction_id_columns": {"events": ["nope"]}, "allow_rejections": True}
    done = run_cli(tmp_path, cfg, events_messages(usage_rows(5, ["sub_a"], metric_code)))
    assert done.returncode == 1
    assert "transaction_id_columns names nope for stream 'events'" in done.stderr
    assert not Path(config["dead_letter_path"]).exists()
    assert lago.dump()["events"] == []


def test_globs_of_equal_length_are_decided_by_name_not_by_order(config: dict) -> None:
    routes = []
    orders = ({"pub*": "customers", "*age": "events"}, {"*age": "events", "pub*": "customers"})
    for actions in orders:
        target = TargetLago(config={**config, "stream_actions": actions})
        routes.append(target.action_for("public-usage"))
    assert routes == ["events", "events"]  # "*age" sorts before "pub*"


def test_an_unwritable_dead_letter_file_stops_the_run_in_one_line(
    lago: Sandbox, config: dict, metric_code: str, tmp_path: Path
) -> None:
    rows = usage_rows(20, ["sub_a"], metric_code)
    rows[3]["timestamp"] = "never"
    cfg = {**config, "dead_letter_path": "/dev/full", "allow_rejections": True}
    done = run_cli(tmp_path, cfg, with_states(rows, 10))
    assert done.returncode == 1
    assert "cannot write the dead-letter file /dev/full" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""  # the record is nowhere: no STATE may pass it


def test_odd_input_lines_are_skipped_dead_lettered_or_one_fatal_line(
    lago: Sandbox, config: dict, metric_code: str, tmp_path: Path
) -> None:
    rows = usage_rows(4, ["sub_a"], metric_code)
    lines = [json.dumps(m) for m in events_messages(rows)]
    broken = lines[2][:-5]  # a record cut short
    latin1 = lines[3].replace('"sub_a"', '"sub_\xe9"').encode("latin-1")
    data = b"\xef\xbb\xbf" + "\n".join([lines[0], "", lines[1], broken]).encode() + b"\n"
    data += latin1 + b"\n" + lines[4].encode() + b"\n"
    done = subprocess.run(
        cli_command(write_config(tmp_path, {**config, "allow_rejections": True})),
        input=data,
        capture_output=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(lago.dump()["events"]) == 2
    letters = dead_letters(config["dead_letter_path"])
    assert [d["details"] for d in letters] == [
        {"record": ["unreadable"]},
        {"external_subscription_id": ["value_is_invalid"]},
    ]
    fatal = subprocess.run(
        cli_command(write_config(tmp_path, config)),
        input=lines[0] + "\n{not json\n",
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert fatal.returncode == 1
    assert "input line 2 is not a Singer message" in fatal.stderr
    assert "Traceback" not in fatal.stderr


def test_sigterm_during_a_long_rate_limit_wait_stops_at_once(
    lago: Sandbox, config: dict, metric_code: str, tmp_path: Path
) -> None:
    lago.set_faults([{"path": BATCH, "fault": "rate_limit", "reset_seconds": 3600, "after": 1}])
    proc = subprocess.Popen(
        cli_command(write_config(tmp_path, config)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    assert proc.stdin is not None
    proc.stdin.write("".join(json.dumps(m) + "\n" for m in with_states(
        usage_rows(5, ["sub_a"], metric_code), 5)))
    proc.stdin.close()
    deadline = time.monotonic() + 30
    while not any(r["status"] == 429 for r in lago.requests()) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 1  # not the 300 s the 429 asked for
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    assert "stopped by SIGTERM" in err
    assert out == ""


def test_amounts_in_other_spellings_are_one_event_and_lossy_ones_are_refused(
    lago: Sandbox, config: dict, metric_code: str
) -> None:
    props = {**EVENT_PROPS, "transaction_id": {"type": "string"},
             "precise_total_amount_cents": {}, "properties": {}}
    base = {"transaction_id": "amt-1", "code": metric_code, "external_subscription_id": "sub_a",
            "timestamp": 1_735_689_600, "properties": {"units": 1}}
    rows = [
        {**base, "id": 1, "precise_total_amount_cents": "12.50"},
        {**base, "id": 2, "precise_total_amount_cents": 12.5},
        {**base, "id": 3, "precise_total_amount_cents": "1.25e1"},
        {**base, "id": 4, "transaction_id": "amt-2", "precise_total_amount_cents": "1e-30"},
        {**base, "id": 5, "transaction_id": "amt-3", "precise_total_amount_cents": "\uff11\uff12"},
        {**base, "id": 6, "transaction_id": "amt-4", "code": "api\x00calls"},
    ]  # fmt: skip
    run = run_target(
        config, [schema("events", props, ["id"]), *(record("events", r) for r in rows)]
    )
    assert isinstance(run.error, RecordsRejectedError)
    letters = dead_letters(config["dead_letter_path"])
    assert [(d["record"]["id"], list(d["details"])) for d in letters] == [
        (4, ["precise_total_amount_cents"]),
        (5, ["precise_total_amount_cents"]),
        (6, ["code"]),
    ]
    assert "more than 15 decimal places" in letters[0]["message"]
    [event] = lago.dump()["events"]
    assert event["precise_total_amount_cents"] == "12.5"
