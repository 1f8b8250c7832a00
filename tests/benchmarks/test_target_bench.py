"""The target benchmark's machinery at a tiny scale: every run delivers exactly its input.

No timing is asserted: only that each measured run did the work it claims to measure.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.target_bench import Plan, report, run_benchmark, write_input


def test_input_file_holds_the_planned_records_and_states(tmp_path: Path) -> None:
    path = write_input(tmp_path / "usage.jsonl", 25_000, "api_calls")
    lines = path.read_text().splitlines()
    kinds = [line.split('"type": "', 1)[1].split('"', 1)[0] for line in lines]
    assert kinds.count("SCHEMA") == 1
    assert kinds.count("RECORD") == 25_000
    assert kinds[-1] == "STATE"
    assert lines[-1].endswith('{"bookmark": 25000}}')


def test_tiny_benchmark_delivers_every_event_exactly_once_in_every_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = Plan(events=900, small=300, slice_events=100, in_flight_levels=(1, 2, 4, 8))

    results = run_benchmark(plan, tmp_path)

    assert [m.in_flight for m in results.sweep] == [1, 2, 4, 8]
    assert all(m.latency_ms == 50 for m in [results.target_latency, *results.sweep])
    expected = [300, 900, 900, 100, 200, 400, 800]  # slices grow with the requests in flight
    assert [m.events for m in results.target_runs] == expected
    assert [m.stored for m in results.target_runs] == expected  # counted in the sandbox
    assert (results.null_small.events, results.null_full.events) == (300, 900)
    for measure in [results.null_small, results.null_full, *results.target_runs]:
        assert measure.peak_rss_mb > 0

    goals = {name: met for name, _, _, met in report(results)}
    printed = capsys.readouterr().out
    assert "Throughput, 900 events" in printed
    assert "Requests in flight at 50 ms" in printed
    exactly_once = [met for name, met in goals.items() if name.startswith("exactly-once")]
    assert exactly_once == [True]
