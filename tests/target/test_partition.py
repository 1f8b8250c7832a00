"""`partition`: N processes over the same input send each event exactly once between them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from singer_sdk.exceptions import ConfigValidationError
from target_lago.actions.events import in_partition, transaction_id
from target_lago.sinks import StreamSetupError
from target_lago.target import TargetLago

from tests.lago_sandbox import Sandbox
from tests.target.helpers import (
    EVENT_PROPS,
    dead_letters,
    record,
    run_target,
    schema,
    state,
    usage_rows,
)


def test_each_transaction_id_falls_in_exactly_one_share_the_same_in_every_version() -> None:
    ids = [f"tl-{n:040x}" for n in range(3_000)]
    for count in (2, 3, 4, 7):
        shares = [[tid for tid in ids if in_partition(tid, i, count)] for i in range(1, count + 1)]
        assert sorted(tid for share in shares for tid in share) == sorted(ids)
        assert min(len(share) for share in shares) > len(ids) / count * 0.8  # spread evenly
    # Pinned: a process of another version must split a backfill the same way.
    assert [i for i in range(1, 5) if in_partition("event-1", i, 4)] == [1]
    assert [i for i in range(1, 5) if in_partition("tl-0123456789", i, 4)] == [2]
    assert in_partition(None, 1, 4)  # a record without an id: the first share only
    assert not in_partition(None, 2, 4)


def _messages(code: str) -> list[dict[str, Any]]:
    rows = usage_rows(600, ["sub_a", "sub_b", "sub_c"], code)
    rows[10].pop("timestamp")  # refused with its id known: by its own share
    rows[20]["units"] = "lots"  # refused by the schema, before any id: by the first share
    out: list[dict[str, Any]] = [schema("events", EVENT_PROPS, ["id"])]
    for n, row in enumerate(rows, start=1):
        out.append(record("events", row))
        if n % 200 == 0:
            out.append(state({"rows": n}))
    return out


def test_n_partitioned_runs_over_the_same_input_store_every_event_once(
    lago: Sandbox, config: dict, metric_code: str, tmp_path: Path
) -> None:
    messages = _messages(metric_code)
    rows = [m["record"] for m in messages if m["type"] == "RECORD"]
    runs = []
    for share in ("1/3", "2/3", "3/3"):
        path = tmp_path / f"dead_letters_{share[0]}.jsonl"
        runs.append(
            run_target({**config, "partition": share, "dead_letter_path": str(path)}, messages)
        )

    events = lago.dump()["events"]
    valid = [r for i, r in enumerate(rows) if i not in (10, 20)]
    assert sorted(e["transaction_id"] for e in events) == sorted(
        transaction_id(r["code"], r, ["id"]) for r in valid
    )
    counts = [run.counts["events"] for run in runs]
    assert sum(c["delivered"] for c in counts) == 598
    assert all(c["received"] == 600 for c in counts)
    for run, c in zip(runs, counts, strict=True):
        skipped = run.target.report.streams["events"].skipped_by_partition
        assert c["delivered"] + c["rejected"] + skipped == 600
        assert 150 < c["delivered"] < 250  # about a third each
    letters = [
        letter
        for share in "123"
        for letter in dead_letters(tmp_path / f"dead_letters_{share}.jsonl")
    ]
    assert sorted(letter["record"]["id"] for letter in letters) == [10, 20]  # once each
    assert any(
        letter["record"]["id"] == 20 for letter in dead_letters(tmp_path / "dead_letters_1.jsonl")
    )
    # Each run holds its STATE on its own rejections only.
    held = [run for run in runs if run.error is not None]
    assert 1 <= len(held) <= 2
    assert all(run.states[-1:] == [{"rows": 600}] for run in runs if run.error is None)

    # A share run again finds its events already in Lago.
    again = run_target({**config, "partition": "2/3"}, messages)
    assert again.counts["events"]["delivered"] == 0
    assert again.counts["events"]["already_present"] == counts[1]["delivered"]
    assert len(lago.dump()["events"]) == 598


def test_the_summary_counts_the_events_left_to_the_other_shares(
    lago: Sandbox, config: dict, metric_code: str
) -> None:
    messages = [
        schema("events", EVENT_PROPS, ["id"]),
        *(record("events", r) for r in usage_rows(200, ["sub_a"], metric_code)),
    ]
    run = run_target({**config, "partition": "2/2"}, messages)

    stats = run.target.report.streams["events"]
    assert stats.skipped_by_partition + stats.delivered == 200
    assert 0 < stats.skipped_by_partition < 200
    assert f"skipped_by_partition={stats.skipped_by_partition}" in stats.line()
    assert stats.unsent == 0  # the other shares' events are not left unsent
    assert "unsent" not in stats.line()


def test_a_partitioned_run_refuses_streams_it_cannot_split(lago: Sandbox, config: dict) -> None:
    messages = [
        schema("customers", {"external_id": {"type": "string"}}, ["external_id"]),
        record("customers", {"external_id": "cust_1"}),
    ]
    run = run_target({**config, "partition": "1/2"}, messages)

    assert isinstance(run.error, StreamSetupError)
    assert "cannot be split by the partition setting" in str(run.error)
    assert "customers" in str(run.error)
    assert lago.dump()["customers"] == []


@pytest.mark.parametrize("value", ["0/3", "4/3", "3", "a/b", "1/0", 2])
def test_a_malformed_partition_is_refused_with_its_fix(config: dict, value: Any) -> None:
    with pytest.raises(ConfigValidationError) as caught:
        TargetLago(config={**config, "partition": value})
    (error,) = caught.value.errors
    assert 'partition must be "i/N"' in error or "config['partition']" in error


def test_each_share_takes_its_part_of_the_pace(config: dict) -> None:
    target = TargetLago(config={**config, "partition": "2/4", "max_requests_per_second": 400})
    assert target.partition == (2, 4)
    assert target.client.pacer.rate("events") == pytest.approx(100)
    assert target.client.pacer.rate("default") == pytest.approx(10)
    assert TargetLago(config={**config, "partition": " 1 / 1 "}).partition is None
