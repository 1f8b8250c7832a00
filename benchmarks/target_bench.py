"""target-lago benchmark: events/s and peak memory into the sandbox, beside an SDK floor.

Run from the repository root::

    .venv/bin/python -m benchmarks.target_bench            # full run (about 6 minutes)
    .venv/bin/python -m benchmarks.target_bench --quick    # smoke run (about 30 seconds)

What it runs (every measured run is a child process reading a pre-generated Singer file
on stdin; the sandbox is another process with a catalog-only organisation, emptied
before each run):

1. The floor: a minimal target of the same SDK whose batch sink does nothing, on the
   same 100,000 and 1,000,000 events (no sandbox involved).
2. target-lago (the console script, 8 requests in flight) on the same files at 0 ms.
3. target-lago on the 1,000,000 events with 50 ms added to every request.
4. target-lago at 50 ms with 1, 2, 4 and 8 requests in flight, each on a slice of
   20,000 events per request in flight (one request at a time caps near 2,000 events/s).

After each target-lago run the sandbox must hold exactly the input's events (exactly
once: its store refuses a second copy of an event), no record may be dead-lettered, and
the last STATE written must be the input's last bookmark; otherwise the run fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import typing as t
from dataclasses import dataclass
from pathlib import Path

import requests
from singer_sdk import Target
from singer_sdk.sinks import BatchSink

from benchmarks.common import (
    SandboxProcess,
    console_script,
    print_table,
    rate,
    ratio,
    run_measured,
    start_sandbox,
    write_json,
)

API_KEY = "bench-api-key"
CATALOG_ONLY = {"customers": 0, "events": 0}
STREAM = "usage"
SUBSCRIPTIONS = [f"sub_bench_{i}" for i in range(6)]
STATE_EVERY = 10_000
BASE_EPOCH = 1_735_689_600  # 2025-01-01T00:00:00Z

#: Schema of the warehouse usage table the benchmark reads (keyed by `id`; no
#: transaction id: target-lago derives one from the stream and the key).
SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "code": {"type": "string"},
        "external_subscription_id": {"type": "string"},
        "timestamp": {"type": "string", "format": "date-time"},
        "units": {"type": "number"},
        "region": {"type": ["string", "null"]},
    },
}


# Input -------------------------------------------------------------------------------


def write_input(path: Path, count: int, code: str) -> Path:
    """Write a Singer file: SCHEMA, `count` usage RECORDs, a STATE every 10,000 records.

    Args:
        path: File to write.
        count: Number of RECORD lines.
        code: Billable metric code of every event.

    Returns:
        The path.
    """
    regions = ("eu-west", "us-east", "ap-south", None)
    schema = {
        "type": "SCHEMA",
        "stream": STREAM,
        "schema": SCHEMA,
        "key_properties": ["id"],
    }
    with path.open("w", encoding="utf-8") as out:
        out.write(json.dumps(schema) + "\n")
        lines: list[str] = []
        for i in range(count):
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(BASE_EPOCH + i * 7))
            rec = {
                "id": i,
                "code": code,
                "external_subscription_id": SUBSCRIPTIONS[i % len(SUBSCRIPTIONS)],
                "timestamp": f"{stamp}.{i % 1000:03d}Z",
                "units": (i % 97) / 4,
                "region": regions[i % len(regions)],
            }
            lines.append(json.dumps({"type": "RECORD", "stream": STREAM, "record": rec}))
            if (i + 1) % STATE_EVERY == 0:
                lines.append(json.dumps({"type": "STATE", "value": {"bookmark": i + 1}}))
            if len(lines) >= 10_000:
                out.write("\n".join(lines) + "\n")
                lines = []
        lines.append(json.dumps({"type": "STATE", "value": {"bookmark": count}}))
        out.write("\n".join(lines) + "\n")
    return path


# The floor: the same SDK, a sink that does nothing -----------------------------------


class NullSink(BatchSink):
    """A batch sink whose batches go nowhere (the SDK's own per-record cost)."""

    def process_batch(self, context: dict) -> None:
        """Drop the batch."""


class NullTarget(Target):
    """The SDK's minimal target: every stream into a `NullSink`."""

    name = "target-null"
    config_jsonschema: t.ClassVar[dict] = {"type": "object", "properties": {}}
    default_sink_class = NullSink


# Measured runs ------------------------------------------------------------------------


@dataclass
class Measure:
    """One measured run of a child process on an input of `events` events."""

    label: str
    events: int
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    in_flight: int | None = None
    latency_ms: int | None = None
    stored: int | None = None
    sandbox_cpu_seconds: float | None = None

    @property
    def events_per_second(self) -> float:
        """Events read (and, for target-lago, acknowledged) per wall-clock second."""
        return rate(self.events, self.seconds)


def count_events(sandbox: SandboxProcess) -> int:
    """Events the sandbox holds (the list's `total_count`: one cheap request)."""
    response = requests.get(
        f"{sandbox.url}/events",
        params={"per_page": 1},
        headers={"Authorization": f"Bearer {sandbox.api_key}"},
        timeout=600,
    )
    response.raise_for_status()
    return int(response.json()["meta"]["total_count"])


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running process (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_null(input_path: Path, events: int, workdir: Path) -> Measure:
    """The floor: the SDK's null-sink target on the same input (no sandbox involved).

    Raises:
        RuntimeError: When it fails or does not reach the input's last STATE.
    """
    config = write_json(workdir, "null_config.json", {})
    cmd = [sys.executable, "-m", "benchmarks.target_bench", "null-target", "--config", str(config)]
    result = run_measured(cmd, stdin=input_path, capture_stdout=True).check()
    states = [json.loads(line) for line in result.stdout.decode().splitlines() if line]
    if not states or states[-1] != {"bookmark": events}:
        raise RuntimeError(f"SDK null target: last STATE {states[-1:]}, expected {events}")
    return Measure(
        "SDK null target", events, result.seconds, result.cpu_seconds, result.peak_rss_mb
    )


def run_target(
    sandbox: SandboxProcess,
    input_path: Path,
    events: int,
    workdir: Path,
    *,
    latency_ms: int,
    in_flight: int = 8,
) -> Measure:
    """target-lago (console script) on an input file into an emptied sandbox.

    Raises:
        RuntimeError: When the run fails, rejects a record, or the sandbox does not
            hold exactly `events` events afterwards.
    """
    sandbox.reset(CATALOG_ONLY)
    dead_letters = workdir / "dead_letters.jsonl"
    dead_letters.unlink(missing_ok=True)
    config = write_json(
        workdir,
        "target_config.json",
        {
            "api_key": sandbox.api_key,
            "api_url": sandbox.url,
            "stream_actions": {STREAM: "events"},
            "dead_letter_path": str(dead_letters),
            "max_in_flight": in_flight,
        },
    )
    cmd = [console_script("target-lago"), "--config", str(config)]
    cpu_before = process_cpu_seconds(sandbox.process.pid)
    result = run_measured(cmd, stdin=input_path, capture_stdout=True).check()
    cpu_after = process_cpu_seconds(sandbox.process.pid)
    stored = count_events(sandbox)
    label = f"target-lago, {in_flight} in flight"
    if stored != events:
        msg = f"{label} at {latency_ms} ms: the sandbox holds {stored} events, expected {events}"
        raise RuntimeError(msg)
    if dead_letters.exists() and dead_letters.stat().st_size:
        raise RuntimeError(f"{label}: records were dead-lettered ({dead_letters})")
    states = [json.loads(line) for line in result.stdout.decode().splitlines() if line]
    if not states or states[-1] != {"bookmark": events}:
        raise RuntimeError(f"{label}: last STATE {states[-1:]}, expected bookmark {events}")
    sandbox_cpu = None
    if cpu_before is not None and cpu_after is not None:
        sandbox_cpu = cpu_after - cpu_before
    return Measure(
        label,
        events,
        result.seconds,
        result.cpu_seconds,
        result.peak_rss_mb,
        in_flight,
        latency_ms,
        stored,
        sandbox_cpu,
    )


def run_startup(sandbox: SandboxProcess, workdir: Path) -> float:
    """Wall seconds of target-lago on an input without records (start, config, exit)."""
    empty = workdir / "no_records.jsonl"
    write_input(empty, 0, "unused")
    return run_target(sandbox, empty, 0, workdir, latency_ms=0).seconds


# The benchmark ------------------------------------------------------------------------


@dataclass
class Plan:
    """Sizes of one benchmark run."""

    events: int = 1_000_000
    small: int = 100_000
    slice_events: int = 20_000  # events per request in flight: 8 in flight read 160,000
    in_flight_levels: tuple[int, ...] = (1, 2, 4, 8)
    latency_ms: int = 50


QUICK = Plan(events=20_000, small=5_000, slice_events=1_000)


@dataclass
class Results:
    """Every measure of a benchmark run."""

    plan: Plan
    null_small: Measure
    null_full: Measure
    target_small: Measure
    target_full: Measure
    target_latency: Measure
    sweep: list[Measure]
    startup_seconds: float

    @property
    def target_runs(self) -> list[Measure]:
        """Every target-lago run (each one checked for exactly-once delivery)."""
        return [self.target_small, self.target_full, self.target_latency, *self.sweep]


def inputs(plan: Plan, workdir: Path, code: str) -> dict[int, Path]:
    """The Singer files of every size the plan needs, written once."""
    sizes = {plan.events, plan.small, *(plan.slice_events * n for n in plan.in_flight_levels)}
    return {size: write_input(workdir / f"usage_{size}.jsonl", size, code) for size in sizes}


def metric_code(sandbox: SandboxProcess) -> str:
    """Code of a billable metric of the catalog."""
    return str(sorted(m["code"] for m in sandbox.dump()["billable_metrics"])[0])


def log(message: str) -> None:
    """Progress on stderr (the tables go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_benchmark(plan: Plan, workdir: Path) -> Results:
    """Run every measure of the plan; sandboxes are separate processes, stopped after."""
    with start_sandbox(api_key=API_KEY, **CATALOG_ONLY) as fast:
        code = metric_code(fast)
        startup = run_startup(fast, workdir)
        files = inputs(plan, workdir, code)
        log(f"wrote inputs of {sorted(files)} events")
        log("SDK null target")
        null_small = run_null(files[plan.small], plan.small, workdir)
        null_full = run_null(files[plan.events], plan.events, workdir)
        log("target-lago at 0 ms")
        target_small = run_target(fast, files[plan.small], plan.small, workdir, latency_ms=0)
        target_full = run_target(fast, files[plan.events], plan.events, workdir, latency_ms=0)
        fast.reset(CATALOG_ONLY)  # free the stored events before the next sandbox starts
    with start_sandbox(api_key=API_KEY, latency_ms=plan.latency_ms, **CATALOG_ONLY) as slow:
        log(f"target-lago at {plan.latency_ms} ms")
        target_latency = run_target(
            slow, files[plan.events], plan.events, workdir, latency_ms=plan.latency_ms
        )
        sweep = []
        for level in plan.in_flight_levels:
            log(f"target-lago at {plan.latency_ms} ms, {level} in flight")
            sweep.append(
                run_target(
                    slow,
                    files[plan.slice_events * level],
                    plan.slice_events * level,
                    workdir,
                    latency_ms=plan.latency_ms,
                    in_flight=level,
                )
            )
    return Results(
        plan, null_small, null_full, target_small, target_full, target_latency, sweep, startup
    )


def report(results: Results) -> list[tuple[str, float, str, bool]]:
    """Print the tables; returns the goals as (name, value, goal, met)."""
    plan = results.plan
    mb = "peak RSS MiB"
    print(
        f"\ntarget-lago benchmark: {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end, Python "
        f"{sys.version.split()[0]}. Input: a Singer file of usage events (6 subscriptions, "
        f"ISO timestamps, derived transaction ids, a STATE every {STATE_EVERY:,} records) "
        "read from stdin by the console script; sandbox: a separate process, catalog-only "
        "organisation, emptied before each run. Every target run is checked: the sandbox "
        "holds exactly the input's events, no dead letter, last STATE = last bookmark."
    )
    full = [results.null_full, results.target_full, results.target_latency]
    print_table(
        f"Throughput, {plan.events:,} events (events/s = events / wall seconds of the process)",
        [
            "run",
            "latency ms",
            "in flight",
            "seconds",
            "events/s",
            "CPU s",
            mb,
            "sandbox CPU s",
            "stored",
        ],
        [
            [
                m.label,
                "-" if m.latency_ms is None else m.latency_ms,
                m.in_flight or "-",
                m.seconds,
                m.events_per_second,
                m.cpu_seconds,
                m.peak_rss_mb,
                "-" if m.sandbox_cpu_seconds is None else m.sandbox_cpu_seconds,
                "-" if m.stored is None else m.stored,
            ]
            for m in full
        ],
    )
    rows = []
    for name, small, big in (
        ("SDK null target", results.null_small, results.null_full),
        ("target-lago, 0 ms, 8 in flight", results.target_small, results.target_full),
    ):
        rows.append(
            [
                name,
                small.seconds,
                big.seconds,
                ratio(big.seconds, small.seconds),
                small.peak_rss_mb,
                big.peak_rss_mb,
                ratio(big.peak_rss_mb, small.peak_rss_mb),
            ]
        )
    print_table(
        f"Cost as the work grows: {plan.small:,} vs {plan.events:,} events "
        f"(linear time: ratio {plan.events / plan.small:.0f}; flat memory: ratio 1)",
        [
            "run",
            f"s @{plan.small:,}",
            f"s @{plan.events:,}",
            "time ratio",
            f"{mb} small",
            f"{mb} large",
            "RSS ratio",
        ],
        rows,
    )
    one = results.sweep[0]
    startup = results.startup_seconds

    def net(m: Measure) -> float:
        return rate(m.events, m.seconds - startup)

    print_table(
        f"Requests in flight at {plan.latency_ms} ms per request, each on a slice of "
        f"{plan.slice_events:,} events per request in flight (1 in flight caps at about "
        f"{100 * 1000 / plan.latency_ms:,.0f} events/s: batches of 100). 'net' leaves out "
        f"the {startup:.2f} s a run without records takes (interpreter start, imports)",
        [
            "in flight",
            "events",
            "seconds",
            "events/s",
            "net events/s",
            "net x 1 in flight",
            "efficiency",
            "stored",
        ],
        [
            [
                m.in_flight or 0,
                m.events,
                m.seconds,
                m.events_per_second,
                net(m),
                ratio(net(m), net(one)),
                ratio(ratio(net(m), net(one)), m.in_flight or 1),
                m.stored or 0,
            ]
            for m in results.sweep
        ],
    )
    eight = next((m for m in results.sweep if m.in_flight == 8), results.sweep[-1])
    floor_ratio = ratio(results.target_full.events_per_second, results.null_full.events_per_second)
    goals = [
        (
            f"target@0ms / SDK null floor, events/s ({plan.events:,} events)",
            floor_ratio,
            ">= 0.8",
            floor_ratio >= 0.8,
        ),
        (
            f"events/s at {plan.latency_ms} ms, 8 in flight ({plan.events:,} events)",
            results.target_latency.events_per_second,
            ">= 10,000",
            results.target_latency.events_per_second >= 10_000,
        ),
        (
            f"net events/s at {plan.latency_ms} ms, 8 in flight (slice of {eight.events:,})",
            net(eight),
            ">= 10,000",
            net(eight) >= 10_000,
        ),
        (
            f"net 8 in flight / 1 in flight at {plan.latency_ms} ms (linear: 8)",
            ratio(net(eight), net(one)),
            "close to 8",
            ratio(net(eight), net(one)) >= 6,
        ),
        (
            f"peak RSS of target-lago, {plan.events:,} events (MiB)",
            max(results.target_full.peak_rss_mb, results.target_latency.peak_rss_mb),
            "< 300",
            max(results.target_full.peak_rss_mb, results.target_latency.peak_rss_mb) < 300,
        ),
        (
            "exactly-once: runs whose sandbox holds exactly the input's events",
            float(sum(m.stored == m.events for m in results.target_runs)),
            f"= {len(results.target_runs)}",
            all(m.stored == m.events for m in results.target_runs),
        ),
    ]
    print_table(
        "Goals",
        ["measure", "value", "goal", "met"],
        [[name, value, goal, "yes" if met else "NO"] for name, value, goal, met in goals],
    )
    return goals


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with `null-target`, the floor target itself)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["null-target"]:
        NullTarget.cli.main(args=argv[1:], prog_name="target-null", standalone_mode=True)
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.target_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="smoke run (about a minute)")
    parser.add_argument("--events", type=int, help="events of the main runs (1,000,000)")
    parser.add_argument("--small", type=int, help="events of the small runs (100,000)")
    parser.add_argument(
        "--slice", type=int, help="events per request in flight in the in-flight runs (20,000)"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    plan = Plan(
        events=args.events or plan.events,
        small=args.small or plan.small,
        slice_events=args.slice or plan.slice_events,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="target_bench_") as tmp:
        results = run_benchmark(plan, Path(tmp))
    report(results)
    print(f"\nwhole benchmark: {time.monotonic() - started:,.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
