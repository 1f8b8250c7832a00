"""The tap benchmark's machinery at a tiny scale: it counts exactly what the sandbox holds.

No timing is asserted; only that every measured run emitted the right records, that the
runs under Lago Cloud's limits got no 429 storm, and that split jobs add up exactly.
"""

from __future__ import annotations

import io
import sys
from typing import Any

import pytest

from benchmarks import tap_bench
from benchmarks.common import print_table, run_measured, start_sandbox
from tests.lago_sandbox import Sandbox
from tests.tap.test_sync import listed_by_api

CUSTOMERS, EVENTS, CLOUD_EVENTS = 5, 300, 120


@pytest.fixture(scope="module")
def report() -> tuple[dict[str, Any], str]:
    out = io.StringIO()
    options = tap_bench.Options(
        events=EVENTS,
        slice_events=120,
        small_events=EVENTS // 10,
        customers=CUSTOMERS,
        concurrency=4,
        cloud_events=CLOUD_EVENTS,
        processes=(1, 2),
    )
    return tap_bench.run(options, out=out), out.getvalue()


def held_by_sandbox() -> dict[str, int]:
    """What the tap must emit per stream, from a dump of the same seeded organisation."""
    with Sandbox("k", seed={"seed": 42, "customers": CUSTOMERS, "events": EVENTS}) as sb:
        dump = sb.dump()
    counts = {
        name: sum(1 for obj in objects if listed_by_api(name, obj))
        for name, objects in dump.items()
    }
    counts["customer_usage"] = sum(1 for s in dump["subscriptions"] if s["status"] == "active")
    return counts


def test_every_tap_run_emits_exactly_the_sandbox_records(
    report: tuple[dict[str, Any], str],
) -> None:
    measures, _ = report
    held = held_by_sandbox()
    for key in ("tap0", "serial0", "tap0_pages100", "tap50"):
        assert measures[key].counts == {"events": EVENTS}, key
        assert measures[key].records == EVENTS
    for key in ("others0", "others_serial0", "others50", "others_serial50"):
        counts = measures[key].counts
        assert set(counts) == set(tap_bench.OTHER_STREAMS)
        for stream, count in counts.items():
            assert count == held[stream], (key, stream)
    assert measures["small"].counts == {"events": EVENTS // 10}


def test_cloud_runs_are_exact_and_trip_no_limit(report: tuple[dict[str, Any], str]) -> None:
    """Under the sandbox's Lago Cloud gateway, the tap's defaults read everything with no
    429 (each 429 is counted from the sandbox's request log)."""
    measures, _ = report
    held = held_by_sandbox()
    slice_count = measures["cloud_events"].counts["events"]
    assert CLOUD_EVENTS <= slice_count < EVENTS
    assert measures["cloud_others"].counts == {s: held[s] for s in tap_bench.OTHER_STREAMS}
    for key in ("cloud_invoices", "cloud_invoices_serial"):
        assert measures[key].counts == {"invoices": held["invoices"]}
    split = {k: m for k, m in measures.items() if k.startswith("cloud_") and k != "cloud_unsplit"}
    for key, measure in split.items():
        if isinstance(measure, tap_bench.Measure):
            assert measure.requests > 0, key
            assert measure.rate_limited == 0, (key, measure.rate_limited, measure.requests)
    needed = measures["cloud_needed"]["others"]
    assert needed["current_usage"] == held["customer_usage"]
    assert measures["cloud_others"].requests >= needed["default"] + needed["current_usage"]


def test_split_jobs_add_up_to_exactly_the_same_events(report: tuple[dict[str, Any], str]) -> None:
    """Jobs cut by start_date/end_date, run at once, read each event once between them."""
    measures, _ = report
    assert measures["cloud_jobs2"].counts == measures["cloud_events"].counts
    assert measures["jobs2"].counts == {"events": EVENTS}
    assert measures["cloud_jobs2"].rate_limited == 0
    # Each job left at the whole budget's pace: whatever 429s come, nothing is lost.
    assert measures["cloud_unsplit"].counts == measures["cloud_events"].counts


def test_the_slice_is_the_newest_events(report: tuple[dict[str, Any], str]) -> None:
    measures, _ = report
    one, many = measures["slice_serial50"], measures["slice50"]
    assert one.counts == many.counts
    assert 120 <= one.records < EVENTS


def test_the_floor_emits_the_dumped_records(report: tuple[dict[str, Any], str]) -> None:
    measures, _ = report
    held = held_by_sandbox()
    with Sandbox("k", seed={"seed": 42, "customers": CUSTOMERS, "events": EVENTS}) as sb:
        dumped = {name: len(objects) for name, objects in sb.dump().items()}
    assert measures["floor"].counts == {"events": held["events"]}
    for stream, count in measures["others_floor"].counts.items():
        assert count == dumped[stream], stream


def test_the_report_prints_every_table(report: tuple[dict[str, Any], str]) -> None:
    _, text = report
    for title in (
        "Events stream alone",
        "Every other stream",
        "Lago Cloud's profile",
        "Scale-out",
        "Cost as the work grows",
        "Ratios",
    ):
        assert title in text
    assert "tap@0ms / SDK floor" in text
    assert "records per CPU-second" in text
    assert "budget utilisation" in text
    assert "peak RSS" in text


def test_run_measured_counts_records_and_reports_peak_memory() -> None:
    script = (
        "import sys\n"
        'for i in range(5): print(\'{"type":"RECORD","stream":"a","record":{}}\')\n'
        'print(\'{"type": "RECORD", "stream": "b", "record": {}}\')\n'
        'print(\'{"type":"STATE","value":{}}\')\n'
        "blob = bytearray(60 * 1024 * 1024)\n"
    )
    result = run_measured([sys.executable, "-c", script], count_records=True).check()
    assert dict(result.records) == {"a": 5, "b": 1}
    assert result.peak_rss_mb >= 60
    out = io.StringIO()
    print_table("t", ["name", "n"], [["x", 1_234]], file=out)
    assert "1,234" in out.getvalue()


def test_start_sandbox_runs_a_separate_process() -> None:
    with start_sandbox(customers=1, events=10) as sb:
        assert sb.process.poll() is None
        assert sb.counts()["events"] == 10
    assert sb.process.poll() is not None
