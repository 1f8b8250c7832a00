"""target-lago benchmark: events/s, CPU per event and Lago Cloud's budget, into the sandbox.

Run from the repository root::

    .venv/bin/python -m benchmarks.target_bench            # full run
    .venv/bin/python -m benchmarks.target_bench --quick    # smoke run (about a minute)
    .venv/bin/python -m benchmarks.target_bench --only cloud --budget 100   # one section

What it runs (every measured run is a child process reading a pre-generated Singer file
on stdin; the sandbox is another process with a catalog-only organisation, emptied
before each run). Sections (``--only``, default all):

``base``
  1. The floor: a minimal target of the same SDK whose batch sink does nothing, on the
     same 100,000 and 1,000,000 events (no sandbox involved).
  2. target-lago (the console script, 8 requests in flight) on the same files at 0 ms.
  3. target-lago on the 1,000,000 events with 50 ms added to every request.
  4. target-lago at 50 ms with 1, 2, 4 and 8 requests in flight, each on a slice of
     20,000 events per request in flight (one request at a time caps near 2,000 events/s).
``cpu``
  CPU per event at 0 ms: target-lago (default settings) beside the lean reference
  (``benchmarks.lean_target``: orjson, 8 threads, batches of 100, no checks) on the same
  200,000 events, and each on an input without records (its start-up); every run is
  made three times (``--cpu-rounds``), the two alternating, and its least CPU is kept.
``cloud``
  Lago Cloud's budget: the sandbox plays the gateway (``--rate-limits``, 500 POST
  /events/batch a second per organisation, ``--budget`` to scale it) at 80 ms a request;
  target-lago with default settings, then split over 2 and 4 processes (``partition``
  i/N, started together on the same input). Budget utilisation = events/s / (100 x the
  budget); 429s counted by the sandbox.

After each target-lago run the sandbox must hold exactly the input's events (exactly
once: its store refuses a second copy of an event), no record may be dead-lettered, and
the last STATE written (by each process) must be the input's last bookmark; otherwise
the run fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import typing as t
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import requests
from singer_sdk import Target
from singer_sdk.sinks import BatchSink

from benchmarks.common import (
    CHILD_ENV,
    RunResult,
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
CATALOG_ONLY: dict[str, t.Any] = {"customers": 0, "events": 0}
STREAM = "usage"
SUBSCRIPTIONS = [f"sub_bench_{i}" for i in range(6)]
STATE_EVERY = 10_000
BASE_EPOCH = 1_735_689_600  # 2025-01-01T00:00:00Z
#: Lago Cloud's events budget: POST /events/batch requests a second per organisation.
CLOUD_BUDGET = 500
SECTIONS = ("base", "cpu", "cloud")

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
    processes: int = 1
    requests: int | None = None
    limited: int | None = None

    @property
    def events_per_second(self) -> float:
        """Events read (and, for target-lago, acknowledged) per wall-clock second."""
        return rate(self.events, self.seconds)

    @property
    def events_per_cpu_second(self) -> float:
        """Events per CPU-second of the measured process(es)."""
        return rate(self.events, self.cpu_seconds)


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
    result = run_measured(cmd, stdin=input_path, capture_stdout=True, env=CHILD_ENV).check()
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
    in_flight: int | None = 8,
    processes: int = 1,
    settings: dict[str, t.Any] | None = None,
) -> Measure:
    """target-lago (console script) on an input file into an emptied sandbox.

    With `processes` above 1, that many run at once on the same input, each with its
    `partition` share; the measure is their wall time and their CPU together.

    Raises:
        RuntimeError: When a run fails, rejects a record, or the sandbox does not hold
            exactly `events` events afterwards.
    """
    sandbox.reset(CATALOG_ONLY)
    sandbox.requests(clear=True)
    limited_before = sandbox.rate_limited().get("events", 0)
    label = f"target-lago, {in_flight} in flight" if in_flight else "target-lago, default settings"
    if processes > 1:
        label = f"target-lago, {processes} processes (partition i/{processes})"
    commands = []
    letters = []
    for share in range(1, processes + 1):
        dead_letters = workdir / f"dead_letters_{share}.jsonl"
        dead_letters.unlink(missing_ok=True)
        letters.append(dead_letters)
        config: dict[str, t.Any] = {
            "api_key": sandbox.api_key,
            "api_url": sandbox.url,
            "stream_actions": {STREAM: "events"},
            "dead_letter_path": str(dead_letters),
            **(settings or {}),
        }
        if in_flight:
            config["max_in_flight"] = in_flight
        if processes > 1:
            config["partition"] = f"{share}/{processes}"
        path = write_json(workdir, f"target_config_{share}.json", config)
        commands.append([console_script("target-lago"), "--config", str(path)])
    results: list[RunResult | None] = [None] * processes

    def run(index: int) -> None:
        results[index] = run_measured(
            commands[index], stdin=input_path, capture_stdout=True, env=CHILD_ENV
        )

    cpu_before = process_cpu_seconds(sandbox.process.pid)
    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(processes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - started
    cpu_after = process_cpu_seconds(sandbox.process.pid)
    done = [result.check() for result in results if result is not None]
    stored = count_events(sandbox)
    if stored != events:
        msg = f"{label} at {latency_ms} ms: the sandbox holds {stored} events, expected {events}"
        raise RuntimeError(msg)
    for dead_letters in letters:
        if dead_letters.exists() and dead_letters.stat().st_size:
            raise RuntimeError(f"{label}: records were dead-lettered ({dead_letters})")
    for result in done:
        states = [json.loads(line) for line in result.stdout.decode().splitlines() if line]
        if not states or states[-1] != {"bookmark": events}:
            raise RuntimeError(f"{label}: last STATE {states[-1:]}, expected bookmark {events}")
    posted = [
        r
        for r in sandbox.requests()
        if r["method"] == "POST" and r["path"].endswith("/events/batch") and r["body_size"] > 20
    ]
    sandbox_cpu = None
    if cpu_before is not None and cpu_after is not None:
        sandbox_cpu = cpu_after - cpu_before
    return Measure(
        label,
        events,
        seconds if processes > 1 else done[0].seconds,
        sum(result.cpu_seconds for result in done),
        max(result.peak_rss_mb for result in done),
        in_flight,
        latency_ms,
        stored,
        sandbox_cpu,
        processes,
        len(posted),
        sandbox.rate_limited().get("events", 0) - limited_before,
    )


def run_reference(
    sandbox: SandboxProcess, input_path: Path, events: int, in_flight: int = 8
) -> Measure:
    """The lean reference (`benchmarks.lean_target`) on an input into an emptied sandbox.

    Raises:
        RuntimeError: When it fails or the sandbox does not hold exactly `events` events.
    """
    sandbox.reset(CATALOG_ONLY)
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.lean_target",
        sandbox.url,
        sandbox.api_key,
        str(in_flight),
    ]
    result = run_measured(cmd, stdin=input_path, env=CHILD_ENV).check()
    stored = count_events(sandbox)
    if stored != events:
        raise RuntimeError(f"lean reference: the sandbox holds {stored} events, not {events}")
    return Measure(
        f"lean reference, {in_flight} threads",
        events,
        result.seconds,
        result.cpu_seconds,
        result.peak_rss_mb,
        in_flight,
        0,
        stored,
    )


def run_startup(
    sandbox: SandboxProcess, workdir: Path, *, settings: dict[str, t.Any] | None = None
) -> Measure:
    """target-lago on an input without records (start, settings, endpoint check, exit)."""
    empty = workdir / "no_records.jsonl"
    write_input(empty, 0, "unused")
    return run_target(sandbox, empty, 0, workdir, latency_ms=0, settings=settings)


# The benchmark ------------------------------------------------------------------------


@dataclass
class Plan:
    """Sizes of one benchmark run."""

    events: int = 1_000_000
    small: int = 100_000
    slice_events: int = 20_000  # events per request in flight: 8 in flight read 160,000
    in_flight_levels: tuple[int, ...] = (1, 2, 4, 8)
    latency_ms: int = 50
    cpu_events: int = 200_000
    cpu_rounds: int = 3  # section cpu: each run this many times, the least CPU kept
    cloud_events: int = 200_000
    cloud_latency_ms: int = 80
    budget: int = CLOUD_BUDGET  # POST /events/batch a second for the organisation
    processes: tuple[int, ...] = (1, 2, 4)
    sections: tuple[str, ...] = SECTIONS


QUICK = Plan(
    events=20_000,
    small=5_000,
    slice_events=1_000,
    cpu_events=10_000,
    cpu_rounds=1,
    cloud_events=10_000,
)


@dataclass
class Base:
    """Throughput and scaling against the SDK floor (section ``base``)."""

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


@dataclass
class Cpu:
    """CPU per event at 0 ms beside the lean reference (section ``cpu``)."""

    reference: Measure
    target: Measure
    reference_startup: Measure
    target_startup: Measure
    rounds: int = 1  # each run's least CPU of this many

    @staticmethod
    def net(run: Measure, startup: Measure) -> float:
        """Events per CPU-second leaving out the CPU of a run without records."""
        return rate(run.events, run.cpu_seconds - startup.cpu_seconds)


@dataclass
class Cloud:
    """Lago Cloud's budget at its latency, 1 to N processes (section ``cloud``)."""

    budget: int
    startup: Measure
    runs: list[Measure] = field(default_factory=list)

    @property
    def ceiling(self) -> int:
        """Events a second the budget allows (100 per request)."""
        return 100 * self.budget

    def throughput(self, run: Measure) -> float:
        """Events a second, leaving out the start-up (a run without records)."""
        return rate(run.events, run.seconds - self.startup.seconds)

    def utilisation(self, run: Measure) -> float:
        """Throughput as a share of what the budget allows."""
        return ratio(self.throughput(run), self.ceiling)


@dataclass
class Results:
    """Every measure of a benchmark run (a section not run is None)."""

    plan: Plan
    base: Base | None = None
    cpu: Cpu | None = None
    cloud: Cloud | None = None

    @property
    def target_runs(self) -> list[Measure]:
        """Every target-lago run with records (each checked for exactly-once delivery)."""
        runs = list(self.base.target_runs) if self.base else []
        if self.cpu:
            runs.append(self.cpu.target)
        if self.cloud:
            runs += self.cloud.runs
        return runs


def inputs(plan: Plan, workdir: Path, code: str) -> dict[int, Path]:
    """The Singer files of every size the plan needs, written once."""
    sizes: set[int] = set()
    if "base" in plan.sections:
        sizes |= {plan.events, plan.small, *(plan.slice_events * n for n in plan.in_flight_levels)}
    if "cpu" in plan.sections:
        sizes.add(plan.cpu_events)
    if "cloud" in plan.sections:
        sizes.add(plan.cloud_events)
    return {size: write_input(workdir / f"usage_{size}.jsonl", size, code) for size in sizes}


def metric_code(sandbox: SandboxProcess) -> str:
    """Code of a billable metric of the catalog."""
    return str(sorted(m["code"] for m in sandbox.dump()["billable_metrics"])[0])


def log(message: str) -> None:
    """Progress on stderr (the tables go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rate_limits(budget: int) -> str:
    """The sandbox's gateway for an events budget: Lago Cloud's, or scaled alike."""
    if budget == CLOUD_BUDGET:
        return "cloud"
    return f"events={budget},current_usage={max(1, budget * 2 // 5)},default={max(1, budget // 10)}"


def cloud_settings(budget: int) -> dict[str, t.Any]:
    """target-lago's settings for a budget: the defaults (95% of Lago Cloud's) or alike."""
    if budget == CLOUD_BUDGET:
        return {}
    return {"max_requests_per_second": int(0.95 * budget)}


def run_base(plan: Plan, workdir: Path, files: dict[int, Path]) -> Base:
    """Section ``base``: the SDK floor, 0 ms, latency and requests in flight."""
    with start_sandbox(api_key=API_KEY, **CATALOG_ONLY) as fast:
        startup = run_startup(fast, workdir).seconds
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
    return Base(null_small, null_full, target_small, target_full, target_latency, sweep, startup)


def run_cpu(plan: Plan, workdir: Path, files: dict[int, Path]) -> Cpu:
    """Section ``cpu``: target-lago and the lean reference on the same input at 0 ms.

    Each run is made `cpu_rounds` times, the two alternating, and the one with the least
    CPU is kept: on a shared machine, a run's CPU time varies with what else runs.
    """
    empty = write_input(workdir / "no_records.jsonl", 0, "unused")
    events = plan.cpu_events
    rounds: dict[str, list[Measure]] = defaultdict(list)
    with start_sandbox(api_key=API_KEY, **CATALOG_ONLY) as sandbox:
        for number in range(1, plan.cpu_rounds + 1):
            log(f"CPU per event, round {number} of {plan.cpu_rounds}: start-ups")
            rounds["target_startup"].append(
                run_target(sandbox, empty, 0, workdir, latency_ms=0, in_flight=None)
            )
            rounds["reference_startup"].append(run_reference(sandbox, empty, 0))
            log(f"CPU per event, round {number}: lean reference and target-lago, {events:,} events")
            rounds["reference"].append(run_reference(sandbox, files[events], events))
            rounds["target"].append(
                run_target(sandbox, files[events], events, workdir, latency_ms=0, in_flight=None)
            )
        sandbox.reset(CATALOG_ONLY)

    def least(name: str) -> Measure:
        return min(rounds[name], key=lambda run: run.cpu_seconds)

    return Cpu(
        least("reference"),
        least("target"),
        least("reference_startup"),
        least("target_startup"),
        plan.cpu_rounds,
    )


def run_cloud(plan: Plan, workdir: Path, files: dict[int, Path]) -> Cloud:
    """Section ``cloud``: Lago Cloud's budget at its latency, 1 process then N."""
    settings = cloud_settings(plan.budget)
    with start_sandbox(
        api_key=API_KEY,
        latency_ms=plan.cloud_latency_ms,
        rate_limits=rate_limits(plan.budget),
        **CATALOG_ONLY,
    ) as sandbox:
        cloud = Cloud(plan.budget, run_startup(sandbox, workdir, settings=settings))
        for processes in plan.processes:
            log(
                f"budget of {plan.budget} requests/s at {plan.cloud_latency_ms} ms: "
                f"{processes} process(es)"
            )
            cloud.runs.append(
                run_target(
                    sandbox,
                    files[plan.cloud_events],
                    plan.cloud_events,
                    workdir,
                    latency_ms=plan.cloud_latency_ms,
                    in_flight=None,
                    processes=processes,
                    settings=settings,
                )
            )
        sandbox.reset(CATALOG_ONLY)
    return cloud


def run_benchmark(plan: Plan, workdir: Path) -> Results:
    """Run every measure of the plan's sections; sandboxes are separate processes."""
    with start_sandbox(api_key=API_KEY, **CATALOG_ONLY) as sandbox:
        code = metric_code(sandbox)
    files = inputs(plan, workdir, code)
    log(f"wrote inputs of {sorted(files)} events")
    results = Results(plan)
    if "base" in plan.sections:
        results.base = run_base(plan, workdir, files)
    if "cpu" in plan.sections:
        results.cpu = run_cpu(plan, workdir, files)
    if "cloud" in plan.sections:
        results.cloud = run_cloud(plan, workdir, files)
    return results


Goal = tuple[str, float, str, bool]


def report_base(plan: Plan, results: Base) -> list[Goal]:
    """Print section ``base``; returns its goals as (name, value, goal, met)."""
    mb = "peak RSS MiB"
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
    ]
    return goals


def report_cpu(cpu: Cpu) -> list[Goal]:
    """Print section ``cpu``; returns its goals."""
    runs = [(cpu.reference, cpu.reference_startup), (cpu.target, cpu.target_startup)]
    print_table(
        f"CPU per event at 0 ms, {cpu.target.events:,} events: the same input, the same "
        "batches of 100 (CPU = user + system of the process and its threads; 'net' leaves "
        "out the CPU of a run without records: interpreter, imports, start-up check; "
        f"each run's least CPU of {cpu.rounds}, the runs alternating)",
        [
            "run",
            "seconds",
            "CPU s",
            "start-up CPU s",
            "events/CPU-s",
            "net events/CPU-s",
            "peak RSS MiB",
            "stored",
        ],
        [
            [
                run.label,
                run.seconds,
                run.cpu_seconds,
                startup.cpu_seconds,
                run.events_per_cpu_second,
                Cpu.net(run, startup),
                run.peak_rss_mb,
                run.stored or 0,
            ]
            for run, startup in runs
        ],
    )
    net = Cpu.net(cpu.target, cpu.target_startup)
    return [
        (
            f"target-lago events per CPU-second at 0 ms ({cpu.target.events:,} events)",
            cpu.target.events_per_cpu_second,
            ">= 100,000",
            cpu.target.events_per_cpu_second >= 100_000,
        ),
        (
            "  the same, leaving out start-up",
            net,
            ">= 100,000",
            net >= 100_000,
        ),
        (
            "  target-lago / lean reference, events per CPU-second",
            ratio(cpu.target.events_per_cpu_second, cpu.reference.events_per_cpu_second),
            "(reference: floor)",
            True,
        ),
    ]


def limited_by(cloud: Cloud, run: Measure) -> str:
    """What held a run back: the budget, or which process of the machine."""
    if cloud.utilisation(run) >= 0.9:
        return "the budget"
    sandbox = ratio(run.sandbox_cpu_seconds or 0.0, run.seconds)
    target = ratio(run.cpu_seconds, run.seconds)
    if sandbox >= 0.85 and sandbox >= target:
        return "sandbox CPU"
    if target >= 0.85 * min(run.processes, os.cpu_count() or 1):
        return "target CPU"
    return "shared cores"


def report_cloud(plan: Plan, cloud: Cloud) -> list[Goal]:
    """Print section ``cloud``; returns its goals."""
    one = cloud.runs[0]
    print_table(
        f"Budget of {cloud.budget} POST /events/batch a second "
        f"({'Lago Cloud' if cloud.budget == CLOUD_BUDGET else 'scaled'}: at most "
        f"{cloud.ceiling:,} events/s), {plan.cloud_latency_ms} ms a request, "
        f"{plan.cloud_events:,} events, default settings (N processes: partition i/N, each "
        f"pacing 1/N). events/s leave out the {cloud.startup.seconds:.2f} s of a run without "
        "records; cores = CPU s / seconds",
        [
            "processes",
            "seconds",
            "events/s",
            "utilisation",
            "x 1 process",
            "requests",
            "429s",
            "429 share",
            "target cores",
            "sandbox cores",
            "limited by",
            "stored",
        ],
        [
            [
                run.processes,
                run.seconds,
                cloud.throughput(run),
                cloud.utilisation(run),
                ratio(cloud.throughput(run), cloud.throughput(one)),
                run.requests or 0,
                run.limited or 0,
                ratio(run.limited or 0, run.requests or 0),
                ratio(run.cpu_seconds, run.seconds),
                ratio(run.sandbox_cpu_seconds or 0.0, run.seconds),
                limited_by(cloud, run),
                run.stored or 0,
            ]
            for run in cloud.runs
        ],
    )
    best = max(cloud.runs, key=cloud.utilisation)
    return [
        (
            f"budget utilisation, 1 process ({cloud.budget}/s, {plan.cloud_latency_ms} ms)",
            cloud.utilisation(one),
            ">= 0.9",
            cloud.utilisation(one) >= 0.9,
        ),
        (
            f"  best, {best.processes} process(es)",
            cloud.utilisation(best),
            ">= 0.9",
            cloud.utilisation(best) >= 0.9,
        ),
        (
            "requests answered 429, every run",
            ratio(
                sum(r.limited or 0 for r in cloud.runs), sum(r.requests or 0 for r in cloud.runs)
            ),
            "< 0.01",
            all(ratio(r.limited or 0, r.requests or 0) < 0.01 for r in cloud.runs),
        ),
    ]


def report(results: Results) -> list[Goal]:
    """Print every section's tables and the goals; returns the goals."""
    print(
        f"\ntarget-lago benchmark: {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end, Python "
        f"{sys.version.split()[0]}. Input: a Singer file of usage events (6 subscriptions, "
        f"ISO timestamps, derived transaction ids, a STATE every {STATE_EVERY:,} records) "
        "read from stdin by the console script; sandbox: a separate process, catalog-only "
        "organisation, emptied before each run. Every target run is checked: the sandbox "
        "holds exactly the input's events, no dead letter, last STATE = last bookmark."
    )
    goals: list[Goal] = []
    if results.base:
        goals += report_base(results.plan, results.base)
    if results.cpu:
        goals += report_cpu(results.cpu)
    if results.cloud:
        goals += report_cloud(results.plan, results.cloud)
    runs = results.target_runs
    goals.append(
        (
            "exactly-once: runs whose sandbox holds exactly the input's events",
            float(sum(m.stored == m.events for m in runs)),
            f"= {len(runs)}",
            all(m.stored == m.events for m in runs),
        )
    )
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
    parser.add_argument(
        "--only", choices=SECTIONS, action="append", help="run this section (repeatable)"
    )
    parser.add_argument(
        "--budget",
        type=int,
        default=CLOUD_BUDGET,
        help="the organisation's POST /events/batch a second in section cloud (Lago Cloud: 500)",
    )
    parser.add_argument("--cpu-events", type=int, help="events of section cpu (200,000)")
    parser.add_argument("--cloud-events", type=int, help="events of section cloud (200,000)")
    parser.add_argument(
        "--cpu-rounds", type=int, help="section cpu: times each run is made, least CPU kept (3)"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    plan = Plan(
        events=args.events or plan.events,
        small=args.small or plan.small,
        slice_events=args.slice or plan.slice_events,
        cpu_events=args.cpu_events or plan.cpu_events,
        cpu_rounds=args.cpu_rounds or plan.cpu_rounds,
        cloud_events=args.cloud_events or plan.cloud_events,
        budget=args.budget,
        sections=tuple(args.only or SECTIONS),
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="target_bench_") as tmp:
        results = run_benchmark(plan, Path(tmp))
    report(results)
    print(f"\nwhole benchmark: {time.monotonic() - started:,.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
