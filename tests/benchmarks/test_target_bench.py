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
    plan = Plan(
        events=900,
        small=300,
        slice_events=100,
        in_flight_levels=(1, 2, 4, 8),
        cpu_events=700,
        cpu_rounds=2,
        cloud_events=1_000,
        processes=(1, 2, 4),
    )

    results = run_benchmark(plan, tmp_path)

    base, cpu, cloud = results.base, results.cpu, results.cloud
    assert base is not None and cpu is not None and cloud is not None
    assert [m.in_flight for m in base.sweep] == [1, 2, 4, 8]
    assert all(m.latency_ms == 50 for m in [base.target_latency, *base.sweep])
    expected = [300, 900, 900, 100, 200, 400, 800]  # slices grow with the requests in flight
    assert [m.events for m in base.target_runs] == expected
    assert [m.stored for m in base.target_runs] == expected  # counted in the sandbox
    assert (base.null_small.events, base.null_full.events) == (300, 900)
    # CPU per event: the reference and target-lago deliver the same input, start-ups nothing.
    assert (cpu.reference.stored, cpu.target.stored) == (700, 700)
    assert (cpu.reference_startup.stored, cpu.target_startup.stored) == (0, 0)
    assert cpu.rounds == 2
    # Lago Cloud's budget: 1, 2 and 4 processes each store every event once, no 429 storm.
    assert [run.processes for run in cloud.runs] == [1, 2, 4]
    assert [run.stored for run in cloud.runs] == [1_000, 1_000, 1_000]
    assert [run.limited for run in cloud.runs] == [0, 0, 0]
    assert cloud.runs[0].requests == 10  # batches of 100, none sent twice
    assert all(10 <= (run.requests or 0) <= 10 + run.processes for run in cloud.runs)
    for measure in [base.null_small, base.null_full, *results.target_runs]:
        assert measure.peak_rss_mb > 0

    goals = {name: met for name, _, _, met in report(results)}
    printed = capsys.readouterr().out
    assert "Throughput, 900 events" in printed
    assert "Requests in flight at 50 ms" in printed
    assert "CPU per event at 0 ms, 700 events" in printed
    assert "Budget of 500 POST /events/batch a second (Lago Cloud" in printed
    exactly_once = [met for name, met in goals.items() if name.startswith("exactly-once")]
    assert exactly_once == [True]
    assert goals["requests answered 429, every run"]
