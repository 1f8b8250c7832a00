"""Benchmark of tap-lago against the sandbox: the SDK floor, Lago Cloud's limits, scale-out.

Run from the repository root::

    python -m benchmarks.tap_bench            # 1,000,000 events (about 15 minutes)
    python -m benchmarks.tap_bench --quick    # 20,000 events (smoke run, about 3 minutes)
    python -m benchmarks.tap_bench --only cloud-others --only cpu   # some sections alone

Sections run alone (``--only``, repeatable) print their own short table and skip the rest:
``cpu`` is the events stream at 0 ms (events_page_size 1000, the default, and 100) with the
tap's CPU time per record; ``cloud-others`` is every other stream under Lago Cloud's profile (budget
utilisation and 429s). Without ``--only`` everything below runs.

What it runs (every plugin run is a child process; its output goes to a pipe where the
benchmark counts RECORD lines per stream; the sandbox is another process):

1. A sandbox seeded with ``--customers 200 --events N`` (seed 42), no gateway limits (a
   self-hosted Lago): ``max_requests_per_second: 0``.
2. The events stream alone: tap-lago with ``max_concurrency`` C and with 1, at 0 ms; the
   SDK floor (a minimal tap of the same SDK emitting the same records, loaded from
   ``/_sandbox/dump`` before its clock starts, through the SDK's default record path);
   then at 50 ms added per request: tap-lago with C on all N events, and, on a slice of
   the newest events (one at a time over N events would take too long), with C and with 1.
   The 0 ms run with C also gives the tap's CPU time per record (``os.wait4``).
3. The same for every other stream of the organisation.
4. Lago Cloud's profile: the sandbox's gateway limits (50 requests/s, 200 for current
   usage) and 80 ms added per request; tap-lago with its defaults on the newest
   ``--cloud-events`` events, on every other stream, and on invoices alone (its
   issuing_date windows against one page at a time). Budget utilisation = throughput over
   the budget's maximum: records/s over ``events_page_size x 50`` for events; for the other
   streams, the time the fewest possible requests take at the limits over the time taken.
   Every 429 is counted from the sandbox's request log.
5. Scale-out: the same events split by ``start_date``/``end_date`` into 2 and 4 jobs run
   at once as separate processes (each with its own state, ``lookback_window_days: 0``),
   under Lago Cloud's profile (each job paced at 48/N requests/s) and without limits at
   0 ms (unpaced, on all N events): the speed-up over one process shows where the
   organisation's budget, not the machine, is the limit.
6. A second sandbox with N/10 events: the same events sync, to see time grow linearly and
   memory stay flat.

Every record count is checked against what the sandbox holds (list ``total_count``s).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

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

#: Stream name -> list path and fixed query of the tap (for expected counts).
SUBSCRIPTION_STATUSES = ["active", "pending", "terminated", "canceled", "incomplete"]
LISTS: dict[str, tuple[str, dict[str, Any]]] = {
    "customers": ("/customers", {}),
    "subscriptions": ("/subscriptions", {"status[]": SUBSCRIPTION_STATUSES}),
    "invoices": ("/invoices", {}),
    "billable_metrics": ("/billable_metrics", {}),
    "plans": ("/plans", {}),
    "events": ("/events", {}),
    "coupons": ("/coupons", {}),
    "add_ons": ("/add_ons", {}),
    "fees": ("/fees", {}),
    "credit_notes": ("/credit_notes", {}),
    "wallets": ("/wallets", {}),
    "taxes": ("/taxes", {}),
    "applied_coupons": ("/applied_coupons", {}),
}
OTHER_STREAMS = sorted({*LISTS, "wallet_transactions", "customer_usage"} - {"events"})
LATENCY_MS = 50
PAGE_SIZE = 100
#: The tap's ``events_page_size`` default (events per request).
EVENTS_PAGE_SIZE = 1000
#: Lago Cloud's profile: per-organisation requests/s (reads; current usage) and latency.
CLOUD_LATENCY_MS = 80
CLOUD_LIMIT = 50.0
CLOUD_USAGE_LIMIT = 200.0
#: The tap's default pace (max_requests_per_second), split between scale-out jobs.
CLOUD_PACE = 48


# Runs ----------------------------------------------------------------------------------


@dataclass
class Measure:
    """One measured run, as reported.

    ``wall_seconds`` is the child process's whole life (for several processes at once, from
    the first start to the last exit); ``sync_seconds`` leaves out the fixed cost of
    starting the plugin (tap: wall minus the wall time of a run that selects no stream;
    floor: its own clock around ``sync_all``, records already in memory). ``requests`` and
    ``rate_limited`` (429s) come from the sandbox's request log, where recorded.
    """

    label: str
    records: int
    wall_seconds: float
    sync_seconds: float
    peak_rss_mb: float
    cpu_seconds: float
    note: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    rate_limited: int = 0

    @property
    def per_second(self) -> float:
        """Records per second of sync time."""
        return rate(self.records, self.sync_seconds)

    @property
    def wall_per_second(self) -> float:
        """Records per second of the whole process."""
        return rate(self.records, self.wall_seconds)

    @property
    def limited_share(self) -> float:
        """Share of the requests answered 429."""
        return ratio(self.rate_limited, self.requests)

    def row(self) -> list[Any]:
        """A table row."""
        return [
            self.label,
            self.records,
            round(self.wall_seconds, 2),
            round(self.wall_per_second),
            round(self.sync_seconds, 2),
            round(self.per_second),
            round(self.peak_rss_mb, 1),
            round(self.cpu_seconds, 2),
            self.note,
        ]


HEADERS = [
    "run",
    "records",
    "wall s",
    "rec/s wall",
    "sync s",
    "rec/s sync",
    "peak RSS MB",
    "CPU s",
    "what",
]


@dataclass
class Job:
    """One tap run: its streams and what its config changes from the tap's defaults.

    ``pace`` None keeps the tap's default ``max_requests_per_second`` (Lago Cloud's);
    ``max_concurrency`` None keeps its default.
    """

    streams: list[str]
    pace: int | None = 0
    max_concurrency: int | None = None
    start_date: str | None = None
    end_date: str | None = None
    events_page_size: int | None = None


class Bench:
    """Catalogs, configs and runs in one work directory."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._catalog: dict[str, Any] | None = None
        self._files = 0
        self.start_seconds = 0.0
        self.start_cpu_seconds = 0.0

    def _path(self, stem: str) -> Path:
        self._files += 1
        return self.workdir / f"{self._files:03d}-{stem}.json"

    def catalog(self, streams: list[str]) -> Path:
        """A catalog selecting exactly ``streams`` (discovered once)."""
        if self._catalog is None:
            config = write_json(self.workdir, "discover-config.json", {"api_key": "x"})
            result = run_measured(
                [console_script("tap-lago"), "--config", str(config), "--discover"],
                capture_stdout=True,
            ).check()
            self._catalog = json.loads(result.stdout)
        catalog = json.loads(json.dumps(self._catalog))
        for entry in catalog["streams"]:
            for meta in entry["metadata"]:
                if meta["breadcrumb"] == []:
                    meta["metadata"]["selected"] = entry["tap_stream_id"] in streams
        path = self._path("catalog")
        path.write_text(json.dumps(catalog))
        return path

    def command(self, sandbox: SandboxProcess, job: Job) -> list[str]:
        """The ``tap-lago`` console script with a config and catalog for ``job``."""
        config: dict[str, Any] = {"api_key": sandbox.api_key, "api_url": sandbox.url}
        if job.pace is not None:
            config["max_requests_per_second"] = job.pace
        if job.max_concurrency is not None:
            config["max_concurrency"] = job.max_concurrency
        if job.start_date:
            config.update(start_date=job.start_date, lookback_window_days=0)
        if job.end_date:
            config["end_date"] = job.end_date
        if job.events_page_size:
            config["events_page_size"] = job.events_page_size
        config_path = self._path("config")
        config_path.write_text(json.dumps(config))
        catalog = self.catalog(job.streams)
        return [console_script("tap-lago"), "--config", str(config_path), "--catalog", str(catalog)]

    def run_tap(self, sandbox: SandboxProcess, job: Job) -> RunResult:
        """Run the ``tap-lago`` console script for ``job``; counts RECORD lines."""
        return run_measured(self.command(sandbox, job), count_records=True, env=CHILD_ENV).check()

    def run_at_once(
        self, sandbox: SandboxProcess, jobs: list[Job]
    ) -> tuple[list[RunResult], float]:
        """Run every job at the same time, each its own process; (results, wall seconds)."""
        commands = [self.command(sandbox, job) for job in jobs]
        results: list[RunResult | None] = [None] * len(jobs)

        def run(index: int) -> None:
            results[index] = run_measured(commands[index], count_records=True, env=CHILD_ENV)

        started = time.monotonic()
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
        return [t_result(result).check() for result in results], wall

    def measure_start(self, sandbox: SandboxProcess) -> float:
        """The tap's fixed start cost: the best wall time of runs selecting no stream."""
        runs = [self.run_tap(sandbox, Job([])) for _ in range(3)]
        best = min(runs, key=lambda r: r.seconds)
        self.start_seconds, self.start_cpu_seconds = best.seconds, best.cpu_seconds
        return self.start_seconds

    def run_floor(self, sandbox: SandboxProcess, streams: list[str]) -> tuple[RunResult, dict]:
        """Run the SDK floor (``floor`` sub-command) on ``streams``; its own sync timing."""
        cmd = [sys.executable, "-m", "benchmarks.tap_bench", "floor", "--url", sandbox.url]
        cmd += ["--streams", ",".join(streams)]
        result = run_measured(cmd, count_records=True, env=CHILD_ENV).check()
        for line in reversed(result.stderr_tail.splitlines()):
            if line.startswith("FLOOR_RESULT "):
                floor = json.loads(line.removeprefix("FLOOR_RESULT "))
                check_counts("SDK floor", dict(result.records), floor["counts"])
                return result, floor
        msg = f"the floor printed no result:\n{result.stderr_tail}"
        raise RuntimeError(msg)


def t_result(result: RunResult | None) -> RunResult:
    """A run's result (every thread of :meth:`Bench.run_at_once` sets one)."""
    if result is None:
        msg = "a tap process did not report"
        raise RuntimeError(msg)
    return result


def measure_tap(
    bench: Bench,
    sandbox: SandboxProcess,
    label: str,
    job: Job,
    expected: dict[str, int],
    *,
    note: str,
    log_requests: bool = False,
) -> Measure:
    """Run the tap, check its counts against ``expected`` and return the measure.

    With ``log_requests`` the sandbox's request log is cleared before the run and read
    after it: every request and every 429 is counted.
    """
    if log_requests:
        sandbox.requests(clear=True)
    result = bench.run_tap(sandbox, job)
    counts = {name: result.records.get(name, 0) for name in job.streams}
    check_counts(label, counts, expected)
    measure = Measure(
        label,
        sum(counts.values()),
        result.seconds,
        max(result.seconds - bench.start_seconds, 1e-3),
        result.peak_rss_mb,
        result.cpu_seconds,
        note,
        counts,
    )
    if log_requests:
        log = sandbox.requests(clear=True)
        measure.requests = len(log)
        measure.rate_limited = sum(1 for entry in log if entry["status"] == 429)
    return measure


def measure_jobs(
    bench: Bench,
    sandbox: SandboxProcess,
    label: str,
    jobs: list[Job],
    expected: list[dict[str, int]],
    *,
    note: str,
) -> Measure:
    """Run ``jobs`` at once (one process each), check each one's counts, sum them up."""
    sandbox.requests(clear=True)
    results, wall = bench.run_at_once(sandbox, jobs)
    counts: dict[str, int] = {}
    for number, (job, result, want) in enumerate(zip(jobs, results, expected, strict=True)):
        got = {name: result.records.get(name, 0) for name in job.streams}
        check_counts(f"{label}, job {number + 1}", got, want)
        for name, count in got.items():
            counts[name] = counts.get(name, 0) + count
    log = sandbox.requests(clear=True)
    return Measure(
        label,
        sum(counts.values()),
        wall,
        max(wall - bench.start_seconds, 1e-3),
        max(r.peak_rss_mb for r in results),
        sum(r.cpu_seconds for r in results),
        note,
        counts,
        requests=len(log),
        rate_limited=sum(1 for entry in log if entry["status"] == 429),
    )


def measure_floor(
    bench: Bench, sandbox: SandboxProcess, label: str, streams: list[str], note: str
) -> Measure:
    """Run the SDK floor on ``streams`` (time: its sync only, records loaded before)."""
    result, floor = bench.run_floor(sandbox, streams)
    return Measure(
        label,
        int(floor["records"]),
        result.seconds,
        float(floor["sync_seconds"]),
        result.peak_rss_mb,
        result.cpu_seconds,
        note,
        dict(floor["counts"]),
    )


def check_counts(label: str, counts: dict[str, int], expected: dict[str, int]) -> None:
    """Fail loudly when a run did not emit exactly the records the sandbox holds."""
    wrong = {
        name: (counts.get(name, 0), want)
        for name, want in expected.items()
        if counts.get(name, 0) != want
    }
    if wrong:
        msg = f"{label}: record counts differ from the sandbox (got, expected): {wrong}"
        raise AssertionError(msg)


# What the sandbox holds ----------------------------------------------------------------


def _get(sandbox: SandboxProcess, path: str, params: dict[str, Any]) -> dict[str, Any]:
    response = requests.get(
        sandbox.url + path,
        params=params,
        headers={"Authorization": f"Bearer {sandbox.api_key}"},
        timeout=120,
    )
    response.raise_for_status()
    return dict(response.json())


def total_count(sandbox: SandboxProcess, path: str, params: dict[str, Any] | None = None) -> int:
    """``meta.total_count`` of a list (exact in the sandbox)."""
    body = _get(sandbox, path, {**(params or {}), "per_page": 1})
    return int(body["meta"]["total_count"])


def expected_counts(
    sandbox: SandboxProcess,
    streams: list[str],
    events_from: str | None = None,
    events_to: str | None = None,
) -> dict[str, int]:
    """Records the tap must emit per stream, from the sandbox's own list counts."""
    out: dict[str, int] = {}
    for name in streams:
        if name == "wallet_transactions":
            out[name] = sum(wallet_transactions(sandbox))
        elif name == "customer_usage":
            out[name] = total_count(sandbox, "/subscriptions")  # one per active subscription
        elif name == "events" and (events_from or events_to):
            bounds = {"timestamp_from": events_from, "timestamp_to": events_to}
            out[name] = total_count(sandbox, "/events", {k: v for k, v in bounds.items() if v})
        else:
            path, params = LISTS[name]
            out[name] = total_count(sandbox, path, params)
    return out


def wallet_transactions(sandbox: SandboxProcess) -> list[int]:
    """Transactions of each wallet."""
    wallets = _get(sandbox, "/wallets", {"per_page": 10_000})["wallets"]
    return [total_count(sandbox, f"/wallets/{w['lago_id']}/wallet_transactions") for w in wallets]


def fewest_requests(sandbox: SandboxProcess, counts: dict[str, int]) -> dict[str, int]:
    """The fewest requests a sync of ``counts`` needs, per Lago Cloud bucket.

    One per page of ``PAGE_SIZE`` (``EVENTS_PAGE_SIZE`` for events; at least one per
    list), one per wallet's transactions
    and per active subscription's usage, and the tap's connection check.
    """
    needed = {"default": 1, "current_usage": 0}
    for name, count in counts.items():
        if name == "customer_usage":
            needed["current_usage"] += count
        elif name == "wallet_transactions":
            pages = (max(1, math.ceil(n / PAGE_SIZE)) for n in wallet_transactions(sandbox))
            needed["default"] += sum(pages)
        else:
            size = EVENTS_PAGE_SIZE if name == "events" else PAGE_SIZE
            needed["default"] += max(1, math.ceil(count / size))
    return needed


def budget_seconds(needed: dict[str, int]) -> float:
    """The time the requests take at Lago Cloud's limits, one bucket after the other."""
    return needed["default"] / CLOUD_LIMIT + needed["current_usage"] / CLOUD_USAGE_LIMIT


def newest_events_start(sandbox: SandboxProcess, count: int) -> str:
    """Timestamp of the ``count``-th newest event: a window of about ``count`` events."""
    body = _get(sandbox, "/events", {"per_page": 1, "page": count})
    return str(body["events"][0]["timestamp"])


def split_events(sandbox: SandboxProcess, start: str, count: int, jobs: int) -> list[Job]:
    """``jobs`` event jobs of about equal size from ``start`` on, by start_date/end_date.

    Each cut is the timestamp of an event at an evenly spaced position of the newest
    ``count``; a job ends 1 ms before the next one starts (timestamps have ms precision), so
    no event is read twice or missed. The newest job has no end_date.
    """
    cuts = sorted(
        {newest_events_start(sandbox, max(1, round(k * count / jobs))) for k in range(1, jobs)}
    )
    bounds = [start, *cuts]
    out = []
    for number, low in enumerate(bounds):
        high = None
        if number + 1 < len(bounds):
            end = parse_iso(bounds[number + 1]) - dt.timedelta(milliseconds=1)
            high = end.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        out.append(Job(["events"], start_date=low, end_date=high))
    return out


def parse_iso(value: str) -> dt.datetime:
    """An ISO timestamp as an aware datetime."""
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


# The SDK floor -------------------------------------------------------------------------


def floor_main(url: str, streams: list[str]) -> None:
    """A minimal tap of the same SDK: records from memory, the SDK's default record path.

    Each stream mirrors tap-lago's declaration (name, schema, primary key, replication
    key) over records loaded from ``/_sandbox/dump`` before the clock starts. Prints
    ``FLOOR_RESULT {json}`` on stderr with the sync's own duration.
    """
    import orjson
    from singer_sdk import Stream, Tap
    from tap_lago.client import SCHEMAS
    from tap_lago.streams import STREAM_TYPES

    base = url.removesuffix("/api/v1")
    dump = orjson.loads(requests.get(f"{base}/_sandbox/dump", timeout=1800).content)
    declared = {str(getattr(cls, "name")): cls for cls in STREAM_TYPES}  # noqa: B009

    class FloorStream(Stream):
        records: list[dict[str, Any]] = []

        def get_records(self, context: Any) -> Any:
            yield from self.records

    def stream_class(name: str) -> type[FloorStream]:
        source = declared[name]
        return type(
            f"Floor_{name}",
            (FloorStream,),
            {
                "name": name,
                "primary_keys": source.primary_keys,
                "replication_key": source.replication_key,
                "is_sorted": source.is_sorted,
                "records": list(dump.get(name, [])),
            },
        )

    classes = {name: stream_class(name) for name in streams}

    class FloorTap(Tap):
        name = "tap-lago-floor"
        config_jsonschema = {"type": "object", "properties": {}}

        def discover_streams(self) -> list[Stream]:
            return [cls(self, schema=SCHEMAS.fetch_schema(name)) for name, cls in classes.items()]

    dump.clear()  # the records are now held by the stream classes only
    tap = FloorTap(config={}, parse_env_config=False, validate_config=False)
    started = time.perf_counter()
    tap.sync_all()
    seconds = time.perf_counter() - started
    counts = {name: len(cls.records) for name, cls in classes.items()}
    result = {"sync_seconds": seconds, "records": sum(counts.values()), "counts": counts}
    sys.stdout.flush()
    print(f"FLOOR_RESULT {json.dumps(result)}", file=sys.stderr, flush=True)


# The benchmark -------------------------------------------------------------------------


@dataclass
class Options:
    """Sizes of one benchmark run."""

    events: int
    slice_events: int
    small_events: int
    customers: int
    concurrency: int
    cloud_events: int = 200_000
    processes: tuple[int, ...] = (1, 2, 4)


def run(options: Options, out: Any = None) -> dict[str, Any]:
    """Run every scenario, print the tables and return the measures (for tests)."""
    out = out or sys.stdout
    c = options.concurrency
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tap-bench-") as tmp:
        bench = Bench(Path(tmp))
        print(
            f"tap-lago benchmark: sandbox seed 42, {options.customers} customers, "
            f"{options.events:,} events; max_concurrency={c}; plugin runs are child "
            "processes writing to a pipe that counts RECORD lines.",
            file=out,
            flush=True,
        )
        started = time.monotonic()
        with start_sandbox(customers=options.customers, events=options.events) as sb:
            print(f"sandbox ready in {sb.ready_seconds:.1f} s", file=out, flush=True)
            start = bench.measure_start(sb)
            print(
                f"tap start cost (best of 3 runs selecting no stream): {start:.2f} s, "
                f"{bench.start_cpu_seconds:.2f} CPU s",
                file=out,
                flush=True,
            )
            report.update(_scenarios(bench, sb, options, out))
            report.update(_cloud(bench, sb, options, out))
            report.update(_scale_out_unlimited(bench, sb, options, report, out))
        with start_sandbox(customers=options.customers, events=options.small_events) as sb:
            expected = expected_counts(sb, ["events"])
            report["small"] = measure_tap(
                bench,
                sb,
                f"events x{options.small_events:,} @0ms, C={c}",
                Job(["events"], max_concurrency=c),
                expected,
                note="same tap, a tenth of the events",
            )
        report["start_cpu"] = bench.start_cpu_seconds
        _print_report(report, options, out)
        print(f"\nbenchmark wall time {time.monotonic() - started:.0f} s", file=out)
    return report


def _done(report: dict[str, Any], out: Any) -> Any:
    def done(key: str, measure: Measure) -> None:
        report[key] = measure
        extra = ""
        if measure.requests:
            extra = f", {measure.requests:,} requests, {measure.rate_limited:,} answered 429"
        print(
            f"  {measure.label}: {measure.records:,} records, {measure.wall_seconds:.1f} s wall, "
            f"{measure.per_second:,.0f} records/s of sync{extra}",
            file=out,
            flush=True,
        )

    return done


def _scenarios(bench: Bench, sb: SandboxProcess, options: Options, out: Any) -> dict[str, Measure]:
    c = options.concurrency
    report: dict[str, Measure] = {}
    done = _done(report, out)
    events = ["events"]
    expected = expected_counts(sb, events)
    others_expected = expected_counts(sb, OTHER_STREAMS)

    sb.set_faults([])
    done(
        "tap0",
        measure_tap(
            bench,
            sb,
            f"tap events @0ms C={c}",
            Job(events, max_concurrency=c),
            expected,
            note="all",
        ),
    )
    done(
        "serial0",
        measure_tap(
            bench, sb, "tap events @0ms C=1", Job(events, max_concurrency=1), expected, note="all"
        ),
    )
    done(
        "floor",
        measure_floor(bench, sb, "SDK floor events", events, "no HTTP; wall incl. dump load"),
    )
    done(
        "tap0_pages100",
        measure_tap(
            bench,
            sb,
            f"tap events @0ms C={c}, events_page_size 100",
            Job(events, max_concurrency=c, events_page_size=PAGE_SIZE),
            expected,
            note="all; ten times the requests",
        ),
    )
    done(
        "others0",
        measure_tap(
            bench,
            sb,
            f"tap others @0ms C={c}",
            Job(OTHER_STREAMS, max_concurrency=c),
            others_expected,
            note="14 other streams",
        ),
    )
    done(
        "others_serial0",
        measure_tap(
            bench,
            sb,
            "tap others @0ms C=1",
            Job(OTHER_STREAMS, max_concurrency=1),
            others_expected,
            note="14 other streams",
        ),
    )
    done(
        "others_floor",
        measure_floor(
            bench,
            sb,
            "SDK floor others",
            [s for s in OTHER_STREAMS if s != "customer_usage"],
            "dump: every status; no customer_usage",
        ),
    )

    start = newest_events_start(sb, options.slice_events)
    slice_expected = expected_counts(sb, events, events_from=start)
    sb.set_faults([{"fault": "latency", "delay_ms": LATENCY_MS, "path": "/api/v1/"}])
    try:
        done(
            "tap50",
            measure_tap(
                bench,
                sb,
                f"tap events @50ms C={c}",
                Job(events, max_concurrency=c, events_page_size=PAGE_SIZE),
                expected,
                note="all",
            ),
        )
        done(
            "slice50",
            measure_tap(
                bench,
                sb,
                f"tap events @50ms C={c} slice",
                Job(events, max_concurrency=c, start_date=start, events_page_size=PAGE_SIZE),
                slice_expected,
                note=f"newest ~{options.slice_events:,}",
            ),
        )
        done(
            "slice_serial50",
            measure_tap(
                bench,
                sb,
                "tap events @50ms C=1 slice",
                Job(events, max_concurrency=1, start_date=start, events_page_size=PAGE_SIZE),
                slice_expected,
                note=f"newest ~{options.slice_events:,}",
            ),
        )
        done(
            "others50",
            measure_tap(
                bench,
                sb,
                f"tap others @50ms C={c}",
                Job(OTHER_STREAMS, max_concurrency=c),
                others_expected,
                note="14 other streams",
            ),
        )
        done(
            "others_serial50",
            measure_tap(
                bench,
                sb,
                "tap others @50ms C=1",
                Job(OTHER_STREAMS, max_concurrency=1),
                others_expected,
                note="14 other streams",
            ),
        )
    finally:
        sb.set_faults([])
    return report


def _cloud(bench: Bench, sb: SandboxProcess, options: Options, out: Any) -> dict[str, Any]:
    """Lago Cloud's profile: the gateway's limits and 80 ms per request, tap defaults."""
    report: dict[str, Any] = {}
    done = _done(report, out)
    count = min(options.cloud_events, options.events)
    start = newest_events_start(sb, count)
    expected = expected_counts(sb, ["events"], events_from=start)
    others_expected = expected_counts(sb, OTHER_STREAMS)
    invoices_expected = {"invoices": others_expected["invoices"]}
    events_needed = fewest_requests(sb, expected)
    report["cloud_needed"] = {
        "events": events_needed,
        "events100": {
            **events_needed,
            "default": math.ceil(expected["events"] / PAGE_SIZE) + 1,
        },
        "others": fewest_requests(sb, others_expected),
        "invoices": fewest_requests(sb, invoices_expected),
    }
    splits = {n: split_events(sb, start, count, n) for n in options.processes if n > 1}
    split_expected = {
        n: [expected_counts(sb, ["events"], j.start_date, j.end_date) for j in jobs]
        for n, jobs in splits.items()
    }
    for n, wanted in split_expected.items():
        check_counts(f"{n} jobs", {"events": sum(w["events"] for w in wanted)}, expected)
    print(
        f"Lago Cloud profile: gateway limits {CLOUD_LIMIT:.0f}/s (current usage "
        f"{CLOUD_USAGE_LIMIT:.0f}/s), {CLOUD_LATENCY_MS} ms per request; tap defaults",
        file=out,
        flush=True,
    )
    sb.configure(rate_limits="cloud")
    sb.set_faults([{"fault": "latency", "delay_ms": CLOUD_LATENCY_MS, "path": "/api/v1/"}])
    try:
        label = f"newest {count:,}"
        done(
            "cloud_events",
            measure_tap(
                bench,
                sb,
                "tap events, Cloud",
                Job(["events"], pace=None, start_date=start),
                expected,
                note=label,
                log_requests=True,
            ),
        )
        done(
            "cloud_events100",
            measure_tap(
                bench,
                sb,
                "tap events, Cloud, events_page_size 100",
                Job(["events"], pace=None, start_date=start, events_page_size=PAGE_SIZE),
                expected,
                note=label,
                log_requests=True,
            ),
        )
        done(
            "cloud_others",
            measure_tap(
                bench,
                sb,
                "tap others, Cloud",
                Job(OTHER_STREAMS, pace=None),
                others_expected,
                note="14 other streams",
                log_requests=True,
            ),
        )
        done(
            "cloud_invoices",
            measure_tap(
                bench,
                sb,
                "tap invoices, Cloud",
                Job(["invoices"], pace=None),
                invoices_expected,
                note="issuing_date windows",
                log_requests=True,
            ),
        )
        done(
            "cloud_invoices_serial",
            measure_tap(
                bench,
                sb,
                "tap invoices, Cloud, C=1",
                Job(["invoices"], pace=None, max_concurrency=1),
                invoices_expected,
                note="one page at a time",
                log_requests=True,
            ),
        )
        for n, jobs in splits.items():
            for job in jobs:
                job.pace = CLOUD_PACE // n
            done(
                f"cloud_jobs{n}",
                measure_jobs(
                    bench,
                    sb,
                    f"tap events, Cloud, {n} jobs at once",
                    jobs,
                    split_expected[n],
                    note=f"{label}; {CLOUD_PACE // n}/s each",
                ),
            )
        if splits:
            # The same jobs, each left at the default pace: the budget oversubscribed.
            n = max(splits)
            for job in splits[n]:
                job.pace = None
            report["cloud_unsplit"] = measure_jobs(
                bench,
                sb,
                f"tap events, Cloud, {n} jobs at once, each at the default pace",
                splits[n],
                split_expected[n],
                note=f"{label}; {CLOUD_PACE:g}/s each",
            )
            done("cloud_unsplit", report["cloud_unsplit"])
    finally:
        sb.set_faults([])
        sb.configure(rate_limits=None)
    return report


def _scale_out_unlimited(
    bench: Bench, sb: SandboxProcess, options: Options, report: dict[str, Any], out: Any
) -> dict[str, Any]:
    """All events split into jobs run at once, no gateway limits, 0 ms: the machine's limit."""
    results: dict[str, Any] = {}
    done = _done(results, out)
    oldest = newest_events_start(sb, options.events)
    for n in options.processes:
        if n == 1:
            continue  # the 0 ms run of all events (tap0)
        jobs = split_events(sb, oldest, options.events, n)
        for job in jobs:
            job.max_concurrency = options.concurrency
        wanted = [expected_counts(sb, ["events"], j.start_date, j.end_date) for j in jobs]
        check_counts(
            f"{n} jobs", {"events": sum(w["events"] for w in wanted)}, report["tap0"].counts
        )
        done(
            f"jobs{n}",
            measure_jobs(
                bench, sb, f"tap events @0ms, {n} jobs at once", jobs, wanted, note="all; unpaced"
            ),
        )
    return results


def _print_report(report: dict[str, Any], options: Options, out: Any) -> None:
    c = options.concurrency
    keys = ["tap0", "serial0", "tap0_pages100", "floor", "tap50", "slice50", "slice_serial50"]
    print_table(
        f"Events stream alone ({options.events:,} events, no gateway limits; 50 ms = every "
        "request delayed 50 ms by a sandbox latency rule; 'slice' = the newest events only)",
        HEADERS,
        [report[k].row() for k in keys],
        file=out,
    )
    others = ["others0", "others_serial0", "others_floor", "others50", "others_serial50"]
    print_table(
        "Every other stream of the same organisation (counts per stream checked)",
        HEADERS,
        [report[k].row() for k in others],
        file=out,
    )
    counts = report["others0"].counts
    print("  records per stream: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()), file=out)

    cloud = _cloud_rows(report, options)
    print_table(
        f"Lago Cloud's profile ({CLOUD_LIMIT:.0f} requests/s, {CLOUD_USAGE_LIMIT:.0f} for "
        f"current usage; {CLOUD_LATENCY_MS} ms per request; tap defaults: 48 requests/s, "
        "max_concurrency 16, events_page_size 1000). Utilisation: records/s over "
        "events_page_size x 50 (events), or the "
        "time the fewest requests take at the limits over the sync time (others)",
        ["run", "records", "wall s", "sync s", "rec/s sync", "requests", "429s", "fewest", "use"],
        [row for row, _ in cloud.values()],
        file=out,
    )

    scale = _scale_rows(report, options)
    print_table(
        "Scale-out: events split by start_date/end_date into jobs run at once (one process "
        "each). Cloud: the organisation's budget shared (48/N requests/s per job); no "
        "limits: unpaced, 0 ms, all events",
        [
            "processes",
            "Cloud rec/s",
            "speed-up",
            "no limits rec/s",
            "speed-up",
            "machine = budget at",
        ],
        scale,
        file=out,
    )

    big, small = report["tap0"], report["small"]
    count_ratio = ratio(big.records, small.records)
    time_ratio = ratio(big.sync_seconds, small.sync_seconds)
    print_table(
        f"Cost as the work grows (tap events @0ms, C={c}, separate sandboxes seeded alike)",
        ["events", "wall s", "sync s", "rec/s sync", "peak RSS MB"],
        [
            [
                m.records,
                round(m.wall_seconds, 2),
                round(m.sync_seconds, 2),
                round(m.per_second),
                round(m.peak_rss_mb, 1),
            ]
            for m in (small, big)
        ],
        file=out,
    )
    print(
        f"  events x{count_ratio:.1f} -> sync time x{time_ratio:.2f} (linear: x{count_ratio:.1f}),"
        f" wall time x{ratio(big.wall_seconds, small.wall_seconds):.2f};"
        f" peak RSS x{ratio(big.peak_rss_mb, small.peak_rss_mb):.2f}"
        f" (+{big.peak_rss_mb - small.peak_rss_mb:.0f} MB)",
        file=out,
    )
    print_table(
        "Ratios", ["figure", "value", "goal", ""], _ratio_rows(report, options, cloud), file=out
    )


def _cloud_rows(report: dict[str, Any], options: Options) -> dict[str, tuple[list[Any], float]]:
    """Per Cloud run: its table row and its budget utilisation."""
    needed = report["cloud_needed"]
    rows: dict[str, tuple[list[Any], float]] = {}
    plan = [
        ("cloud_events", "events"),
        ("cloud_events100", "events100"),
        ("cloud_others", "others"),
        ("cloud_invoices", "invoices"),
        ("cloud_invoices_serial", "invoices"),
        *((f"cloud_jobs{n}", "events") for n in options.processes if n > 1),
        *((("cloud_unsplit", "events"),) if "cloud_unsplit" in report else ()),
    ]
    for key, kind in plan:
        m: Measure = report[key]
        fewest = needed[kind]
        if kind == "events100":
            use = m.per_second / (PAGE_SIZE * CLOUD_LIMIT)
        elif kind == "events":
            use = m.per_second / (EVENTS_PAGE_SIZE * CLOUD_LIMIT)
        else:
            use = ratio(budget_seconds(fewest), m.sync_seconds)
        row = [
            m.label,
            m.records,
            round(m.wall_seconds, 2),
            round(m.sync_seconds, 2),
            round(m.per_second),
            m.requests,
            m.rate_limited,
            fewest["default"] + fewest["current_usage"],
            round(use, 2),
        ]
        rows[key] = (row, use)
    return rows


def _scale_rows(report: dict[str, Any], options: Options) -> list[list[Any]]:
    """Per process count: Cloud and no-limits throughput and speed-ups."""
    rows = []
    cloud_one, free_one = report["cloud_events"], report["tap0"]
    for n in options.processes:
        cloud = cloud_one if n == 1 else report[f"cloud_jobs{n}"]
        free = free_one if n == 1 else report[f"jobs{n}"]
        rows.append(
            [
                n,
                round(cloud.per_second),
                round(ratio(cloud.per_second, cloud_one.per_second), 2),
                round(free.per_second),
                round(ratio(free.per_second, free_one.per_second), 2),
                f"{free.per_second / EVENTS_PAGE_SIZE:,.0f} requests/s",
            ]
        )
    return rows


def _ratio_rows(
    report: dict[str, Any], options: Options, cloud: dict[str, tuple[list[Any], float]]
) -> list[list[Any]]:
    c = options.concurrency

    def both(a: Measure, b: Measure) -> tuple[float, float]:
        return ratio(a.per_second, b.per_second), ratio(a.wall_per_second, b.per_second)

    floor_sync, floor_wall = both(report["tap0"], report["floor"])
    slice_ratio = ratio(report["slice50"].per_second, report["slice_serial50"].per_second)
    slice_wall = ratio(report["slice50"].wall_per_second, report["slice_serial50"].wall_per_second)
    full_ratio = ratio(report["tap50"].per_second, report["slice_serial50"].per_second)
    tap0 = report["tap0"]
    per_cpu = ratio(tap0.records, tap0.cpu_seconds)
    per_cpu_net = ratio(tap0.records, max(tap0.cpu_seconds - report["start_cpu"], 1e-3))
    small_pages = report["tap0_pages100"]
    per_cpu_small = ratio(small_pages.records, small_pages.cpu_seconds)
    events_use = cloud["cloud_events"][1]
    others_use = cloud["cloud_others"][1]
    cloud_runs = [
        m
        for k, m in report.items()
        if k.startswith("cloud_") and k != "cloud_unsplit" and isinstance(m, Measure)
    ]
    limited = ratio(sum(m.rate_limited for m in cloud_runs), sum(m.requests for m in cloud_runs))
    windows = ratio(
        report["cloud_invoices_serial"].sync_seconds, report["cloud_invoices"].sync_seconds
    )
    peak = max(
        m.peak_rss_mb
        for k, m in report.items()
        if isinstance(m, Measure) and k not in {"floor", "others_floor"}
    )
    big, small = report["tap0"], report["small"]
    linear = ratio(ratio(big.sync_seconds, small.sync_seconds), ratio(big.records, small.records))
    rows: list[list[Any]] = [
        [
            "tap@0ms / SDK floor, events, rec/s of sync",
            round(floor_sync, 2),
            ">= 1.5",
            _ok(floor_sync >= 1.5),
        ],
        [
            "  same, tap's wall time incl. its start",
            round(floor_wall, 2),
            ">= 1.5",
            _ok(floor_wall >= 1.5),
        ],
        [
            "events at 0 ms: records per CPU-second of the tap process",
            round(per_cpu),
            ">= 50,000",
            _ok(per_cpu >= 50_000),
        ],
        ["  same, less the CPU of a run selecting no stream", round(per_cpu_net), "", ""],
        [
            "  same, events_page_size 100 (ten times the requests)",
            round(per_cpu_small),
            "",
            "",
        ],
        [
            f"tap@50ms C={c} / C=1, same slice at 100 a page, rec/s of sync",
            round(slice_ratio, 2),
            ">= 6",
            _ok(slice_ratio >= 6),
        ],
        ["  same, wall times incl. start", round(slice_wall, 2), ">= 6", _ok(slice_wall >= 6)],
        [
            f"tap@50ms C={c} all events / C=1 slice, rec/s of sync",
            round(full_ratio, 2),
            ">= 6",
            _ok(full_ratio >= 6),
        ],
        [
            f"tap@0ms C={c} / C=1, events",
            round(ratio(report["tap0"].per_second, report["serial0"].per_second), 2),
            "-",
            "",
        ],
        [
            f"others@50ms C={c} / C=1",
            round(ratio(report["others50"].per_second, report["others_serial50"].per_second), 2),
            "-",
            "",
        ],
        [
            "Cloud @80ms: events at 100 a page, budget utilisation (request-bound)",
            round(cloud["cloud_events100"][1], 2),
            ">= 0.9",
            _ok(cloud["cloud_events100"][1] >= 0.9),
        ],
        [
            "  same at 1000 a page, the default (bound by the tap's CPU here)",
            round(events_use, 2),
            ">= 0.9",
            _ok(events_use >= 0.9),
        ],
        [
            "Cloud @80ms: other streams, budget utilisation",
            round(others_use, 2),
            ">= 0.9",
            _ok(others_use >= 0.9),
        ],
        [
            "Cloud @80ms: requests answered 429, every Cloud run with the budget split",
            f"{limited:.2%}",
            "< 1%",
            _ok(limited < 0.01),
        ],
        *(
            [
                [
                    "  jobs each at the default pace (budget oversubscribed): 429s",
                    f"{report['cloud_unsplit'].limited_share:.2%}",
                    "-",
                    "",
                ]
            ]
            if "cloud_unsplit" in report
            else []
        ),
        [
            "Cloud @80ms: invoices, windows / one page at a time (speed-up)",
            round(windows, 2),
            "-",
            "",
        ],
        ["peak RSS of any tap run (MB)", round(peak, 1), "< 300", _ok(peak < 300)],
        ["sync time ratio / events ratio (1.0 = linear)", round(linear, 2), "about 1", ""],
    ]
    return rows


#: Sections that can be run alone (``--only``).
SECTIONS = ("cpu", "cloud-others")


def run_sections(options: Options, sections: tuple[str, ...], out: Any = None) -> dict[str, Any]:
    """Run only ``sections`` (see :data:`SECTIONS`) and print their figures."""
    out = out or sys.stdout
    report: dict[str, Any] = {}
    done = _done(report, out)
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory(prefix="tap-bench-") as tmp:
        bench = Bench(Path(tmp))
        events = options.events if "cpu" in sections else 1
        with start_sandbox(customers=options.customers, events=events) as sb:
            bench.measure_start(sb)
            rows.append(
                [
                    "start (no stream selected)",
                    round(bench.start_seconds, 2),
                    "",
                    round(bench.start_cpu_seconds, 2),
                    "",
                    "",
                ]
            )
            if "cpu" in sections:
                expected = expected_counts(sb, ["events"])
                for key, size in (("tap0", None), ("tap0_pages100", PAGE_SIZE)):
                    job = Job(
                        ["events"], max_concurrency=options.concurrency, events_page_size=size
                    )
                    label = f"tap events @0ms, events_page_size {size or EVENTS_PAGE_SIZE}"
                    done(key, measure_tap(bench, sb, label, job, expected, note="all"))
                    m = report[key]
                    rows.append(
                        [m.label, round(m.sync_seconds, 2), "", round(m.cpu_seconds, 2),
                         round(ratio(m.records, m.cpu_seconds)), "records per CPU-second"]
                    )  # fmt: skip
            if "cloud-others" in sections:
                others = expected_counts(sb, OTHER_STREAMS)
                fewest = fewest_requests(sb, others)
                sb.configure(rate_limits="cloud")
                sb.set_faults(
                    [{"fault": "latency", "delay_ms": CLOUD_LATENCY_MS, "path": "/api/v1/"}]
                )
                try:
                    job = Job(OTHER_STREAMS, pace=None)
                    done(
                        "cloud_others",
                        measure_tap(
                            bench, sb, "tap others, Cloud", job, others, note="", log_requests=True
                        ),
                    )
                finally:
                    sb.set_faults([])
                    sb.configure(rate_limits=None)
                m = report["cloud_others"]
                use = ratio(budget_seconds(fewest), m.sync_seconds)
                rows.append(
                    [m.label, round(m.sync_seconds, 2), f"{m.requests} ({m.rate_limited} 429s)",
                     round(m.cpu_seconds, 2), round(use, 2),
                     f"budget utilisation (fewest: {budget_seconds(fewest):.2f} s)"]
                )  # fmt: skip
    print_table(
        "Sections run alone",
        ["run", "sync s", "requests", "CPU s", "figure", "what"],
        rows,
        file=out,
    )
    return report


def _ok(flag: bool) -> str:
    return "met" if flag else "NOT met"


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tap_bench", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    floor = sub.add_parser("floor", help="(internal) run the SDK floor tap")
    floor.add_argument("--url", required=True)
    floor.add_argument("--streams", required=True)
    parser.add_argument("--quick", action="store_true", help="20,000 events (smoke run)")
    parser.add_argument("--events", type=int, help="events to seed (default 1,000,000)")
    parser.add_argument("--slice", type=int, help="events of the one-at-a-time 50 ms slice")
    parser.add_argument("--cloud-events", type=int, help="events of the Cloud runs (200,000)")
    parser.add_argument("--concurrency", type=int, default=16, help="max_concurrency (16)")
    parser.add_argument(
        "--only", choices=SECTIONS, action="append", help="run this section alone (repeatable)"
    )
    args = parser.parse_args(argv)
    if args.command == "floor":
        floor_main(args.url, args.streams.split(","))
        return 0
    events = args.events or (20_000 if args.quick else 1_000_000)
    options = Options(
        events=events,
        slice_events=args.slice or min(50_000, max(1, events // 10)),
        small_events=max(1, events // 10),
        customers=200,
        concurrency=args.concurrency,
        cloud_events=args.cloud_events or min(200_000, events),
    )
    if args.only:
        run_sections(options, tuple(args.only))
    else:
        run(options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
