"""Red-team inputs for the events fast path: each must give what the SDK path gives.

Every test sends one input twice (`run(..., fast=True/False)`, the harness of
test_events_fast_path.py) and compares the requests, stored events, dead letters,
STATE and counts.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.lago_sandbox import Sandbox
from tests.target.helpers import cli_command, cli_env, dead_letters, write_config
from tests.target.test_events_fast_path import (
    PROPERTIES,
    STREAM,
    both_ways,
    event_row,
)


def _text(records: list[Any], *, streams: tuple[str, ...] = (STREAM,)) -> str:
    """A SCHEMA line per stream, then the records (dicts, or raw lines as text)."""
    lines = []
    for stream in streams:
        schema = {"type": "object", "properties": PROPERTIES}
        head = {
            "type": "SCHEMA",
            "stream": stream,
            "schema": schema,
            "key_properties": ["id"],
        }
        lines.append(json.dumps(head))
    for record in records:
        if isinstance(record, str):
            lines.append(record)
        else:
            stream = record.pop("__stream", STREAM)
            lines.append(json.dumps({"type": "RECORD", "stream": stream, "record": record}))
    lines.append(json.dumps({"type": "STATE", "value": {"done": True}}))
    return "\n".join(lines) + "\n"


def _settings(config: dict, **more: Any) -> dict:
    return {**config, "stream_actions": {STREAM: "events"}, "max_in_flight": 1, **more}


def test_sdc_sync_started_at_is_dropped_as_the_sdk_drops_it(
    lago: Sandbox, config: dict, metric_code: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK drops `_sdc_sync_started_at` too: a dead letter must not hold it."""
    stamp = "2025-01-01T00:00:00Z"
    records = [
        event_row(metric_code, 1, _sdc_sync_started_at=stamp),
        event_row(metric_code, 1, _sdc_sync_started_at=stamp, units=99),  # same key, other content
    ]
    fast, fast_letters, slow, slow_letters, taken = both_ways(
        lago, _settings(config), _text(records), monkeypatch
    )
    assert taken == 2
    assert len(slow_letters) == 1
    assert fast_letters == slow_letters
    assert fast.requests == slow.requests


def test_a_drain_of_every_sink_for_record_age_loses_no_event_of_another_fast_stream(
    lago: Sandbox, config: dict, metric_code: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two events streams; the SDK's age check drains every sink once, mid-batch.

    The clock is replaced by a call counter so both runs are repeatable: the second
    look at the oldest record's age finds it older than the limit. The fast path looks
    after B's first record (young) and after A's first record (old: every sink drains,
    B's with it); B's next record must not go to the batch that was just sent.
    """
    from target_lago.target import TargetLago

    calls = 0

    def age(self: Any) -> float:
        nonlocal calls
        calls += 1
        return 10.0 if calls == 2 else 0.0

    monkeypatch.setattr(TargetLago, "_max_record_age_in_minutes", property(age))
    other = "usage_b"
    records = [event_row(metric_code, i) for i in range(5)]
    for i in (0, 1, 2, 4):
        records[i]["__stream"] = other
    settings = _settings(config, stream_actions={STREAM: "events", other: "events"})
    text = _text(records, streams=(STREAM, other))
    fast, _, slow, _, taken = both_ways(lago, settings, text, monkeypatch)
    assert taken == 5
    assert len(slow.events) == 5
    assert fast.counts == slow.counts  # fast: usage_b received 4, delivered 3
    assert fast.events == slow.events


def _line(record: dict[str, Any], **envelope: Any) -> str:
    return json.dumps({"type": "RECORD", "stream": STREAM, "record": record, **envelope})


def test_odd_lines_and_texts_give_what_the_sdk_path_gives(
    lago: Sandbox, config: dict, metric_code: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Envelopes, escapes and bytes the plain-line shortcut and the typed decode meet."""
    # Log lines name the odd fields; pytest-xdist cannot carry a lone surrogate in them.
    message = logging.LogRecord.getMessage
    monkeypatch.setattr(
        logging.LogRecord,
        "getMessage",
        lambda self: message(self).encode("utf-8", "backslashreplace").decode("utf-8"),
    )
    code = metric_code
    rows = [_line(event_row(code, i)) for i in range(6)]
    odd = [
        # Duplicate envelope keys: the last one counts, as for the SDK's reader.
        rows[0].replace('{"type": "RECORD"', '{"type": "STATE", "type": "RECORD"', 1),
        rows[1][:-1] + ', "record": ' + json.dumps(event_row(code, 101)) + "}",
        '{"\\u0074ype": "RECORD", "stream": "usage", "record": '
        + json.dumps(event_row(code, 102))
        + "}",
        _line(event_row(code, 103), time_extracted="2025-01-01T00:00:00Z", version=1e999),
        "\ufeff" + _line(event_row(code, 104)),
        "   " + _line(event_row(code, 105)) + "   ",
        # Texts: a NUL or lone surrogate escaped, non-ASCII, escaped slashes, a key with NUL.
        _line(event_row(code, 106, region="a\u0000b")),
        _line(event_row(code, 107, region="z\u00fcrich")),
        _line(event_row(code, 108, region="a/b")).replace("/", "\\/"),
        _line(event_row(code, 109, **{"k\u0000": 1})),
        _line(event_row(code, 110, properties={"k\u0000": 1})),
        _line(event_row(code, 111, properties={"b": "\u00e9", "a": 1, "Z": None})),
        _line(event_row(f"{code}\u0000", 112)),
        _line({**event_row(code, 113), "external_subscription_id": "sub\u0000"}),
        _line({**event_row(code, 114), "transaction_id": "t\u0000"}),
        # Bytes that are not UTF-8 arrive as lone surrogates (surrogateescape).
        _line(event_row(code, 115, region="R")).replace('"R"', '"\udcff"'),
        _line(event_row(code, 116, region="R")).replace('"region"', '"\udcffregion"'),
        _line(event_row(code, 117), extra="X").replace('"X"', '"\udcff"'),
        _line(event_row(code, 118, properties={"p": "R"})).replace('"R"', '"\udcc3"'),
        _line(event_row(code, 119, region="\\u0000")),  # a backslash and "u0000": plain text
        _line(event_row(code, 120, region="\ud83d\ude00")),  # a pair, escaped
        _line(
            event_row(code, 121, region="\U0001f600"),
        ).replace("\\ud83d\\ude00", "\U0001f600"),
    ]
    text = _text([*rows, *odd])
    settings = _settings(config, allow_rejections=True, batch_size=4)
    fast, fast_letters, slow, slow_letters, taken = both_ways(lago, settings, text, monkeypatch)
    assert taken >= 10
    assert fast.requests == slow.requests
    assert fast.events == slow.events
    assert fast_letters == slow_letters
    assert fast.states == slow.states
    assert fast.counts == slow.counts


def _cli(tmp_path: Path, settings: dict, data: bytes, *, fast: bool) -> subprocess.CompletedProcess:
    """The console script on raw stdin bytes (the fast path switched off by a wrapper)."""
    command = cli_command(write_config(tmp_path, settings))
    if not fast:
        wrapper = (
            "import sys; from target_lago import fastpath; fastpath.ENABLED = False; "
            "from target_lago.target import TargetLago; sys.argv[0] = 'target-lago'; "
            "TargetLago.cli()"
        )
        command = [sys.executable, "-c", wrapper, *command[-2:]]
    return subprocess.run(
        command,
        input=data,
        capture_output=True,
        timeout=120,
        cwd=tmp_path,
        env=cli_env(),
        check=False,
    )


def test_bytes_that_are_not_utf8_on_stdin_give_what_the_sdk_path_gives(
    lago: Sandbox, config: dict, metric_code: str, tmp_path: Path
) -> None:
    """Undecodable bytes in a value, a key, a skipped field; a BOM; CR line ends."""
    rows = [_line(event_row(metric_code, i, region="R")).encode() for i in range(8)]
    data = [
        rows[0],
        rows[1].replace(b'"R"', b'"\xff"'),
        rows[2].replace(b'"R"', b'"\xc3"'),
        rows[3].replace(b'"region"', b'"\xfe"'),
        rows[4][:-1] + b', "x": "\xff"}',
        b"\xef\xbb\xbf" + rows[5],
        rows[6] + b"\r",
        rows[7].replace(b'"R"', b'"z\xc3\xbcrich"'),
    ]
    head = _text([]).encode().split(b"\n")[0]
    body = b"\n".join([head, *data, b'{"type": "STATE", "value": {"n": 1}}']) + b"\n"
    settings = _settings(config, allow_rejections=True)
    outcomes = []
    for fast in (True, False):
        lago.reset({"customers": 0, "events": 0})
        letters_path = Path(settings["dead_letter_path"])
        letters_path.unlink(missing_ok=True)
        done = _cli(tmp_path, settings, body, fast=fast)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        events = sorted(
            json.dumps({k: v for k, v in e.items() if k not in {"lago_id", "created_at"}})
            for e in lago.dump()["events"]
        )
        letters = sorted(
            json.dumps({k: v for k, v in letter.items() if k != "time"}, sort_keys=True)
            for letter in dead_letters(letters_path)
        )
        outcomes.append((events, letters, done.stdout))
    assert len(outcomes[1][1]) == 3
    assert outcomes[0] == outcomes[1]
