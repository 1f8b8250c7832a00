"""Benchmark of tap-lago against the sandbox, with the SDK floor and a one-at-a-time baseline.

Run from the repository root::

    python -m benchmarks.tap_bench            # 1,000,000 events (about 8 minutes)
    python -m benchmarks.tap_bench --quick    # 20,000 events (smoke run, about 1 minute)

What it runs (every plugin run is a child process; its output goes to a pipe where the
benchmark counts RECORD lines per stream; the sandbox is another process):

The SDK floor's output goes through the same counting pipe as the tap's.

1. A sandbox seeded with ``--customers 200 --events N`` (seed 42).
2. The events stream alone: tap-lago with ``max_concurrency`` C and with 1, at 0 ms; the
   SDK floor (a minimal tap of the same SDK emitting the same records, loaded from
   ``/_sandbox/dump`` before its clock starts, through the SDK's default record path);
   then at 50 ms added per request: tap-lago with C on all N events, and, on a slice of
   the newest events (one at a time over N events would take too long), with C and with 1.
3. The same for every other stream of the organisation.
4. A second sandbox with N/10 events: the same events sync, to see time grow linearly and
   memory stay flat.

Every record count is checked against what the sandbox holds (list ``total_count``s).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from benchmarks.common import (
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


# Runs ----------------------------------------------------------------------------------


@dataclass
class Measure:
    """One measured run, as reported.

    ``wall_seconds`` is the child process's whole life; ``sync_seconds`` leaves out the
    fixed cost of starting the plugin (tap: wall minus the wall time of a run that selects
    no stream; floor: its own clock around ``sync_all``, records already in memory).
    """

    label: str
    records: int
    wall_seconds: float
    sync_seconds: float
    peak_rss_mb: float
    cpu_seconds: float
    note: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        """Records per second of sync time."""
        return rate(self.records, self.sync_seconds)

    @property
    def wall_per_second(self) -> float:
        """Records per second of the whole process."""
        return rate(self.records, self.wall_seconds)

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


class Bench:
    """Catalogs, configs and runs in one work directory."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._catalog: dict[str, Any] | None = None
        self._files = 0
        self.start_seconds = 0.0

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

    def run_tap(
        self,
        sandbox: SandboxProcess,
        streams: list[str],
        *,
        max_concurrency: int,
        start_date: str | None = None,
    ) -> RunResult:
        """Run the ``tap-lago`` console script on ``streams``; counts RECORD lines."""
        config: dict[str, Any] = {
            "api_key": sandbox.api_key,
            "api_url": sandbox.url,
            "max_concurrency": max_concurrency,
        }
        if start_date:
            config.update(start_date=start_date, lookback_window_days=0)
        config_path = self._path("config")
        config_path.write_text(json.dumps(config))
        cmd = [console_script("tap-lago"), "--config", str(config_path)]
        cmd += ["--catalog", str(self.catalog(streams))]
        return run_measured(cmd, count_records=True).check()

    def measure_start(self, sandbox: SandboxProcess) -> float:
        """The tap's fixed start cost: the best wall time of runs selecting no stream."""
        self.start_seconds = min(
            self.run_tap(sandbox, [], max_concurrency=1).seconds for _ in range(3)
        )
        return self.start_seconds

    def run_floor(self, sandbox: SandboxProcess, streams: list[str]) -> tuple[RunResult, dict]:
        """Run the SDK floor (``floor`` sub-command) on ``streams``; its own sync timing."""
        cmd = [sys.executable, "-m", "benchmarks.tap_bench", "floor", "--url", sandbox.url]
        cmd += ["--streams", ",".join(streams)]
        result = run_measured(cmd, count_records=True).check()
        for line in reversed(result.stderr_tail.splitlines()):
            if line.startswith("FLOOR_RESULT "):
                floor = json.loads(line.removeprefix("FLOOR_RESULT "))
                check_counts("SDK floor", dict(result.records), floor["counts"])
                return result, floor
        msg = f"the floor printed no result:\n{result.stderr_tail}"
        raise RuntimeError(msg)


def measure_tap(
    bench: Bench,
    sandbox: SandboxProcess,
    label: str,
    streams: list[str],
    expected: dict[str, int],
    *,
    max_concurrency: int,
    note: str,
    start_date: str | None = None,
) -> Measure:
    """Run the tap, check its counts against ``expected`` and return the measure."""
    result = bench.run_tap(sandbox, streams, max_concurrency=max_concurrency, start_date=start_date)
    counts = {name: result.records.get(name, 0) for name in streams}
    check_counts(label, counts, expected)
    return Measure(
        label,
        sum(counts.values()),
        result.seconds,
        max(result.seconds - bench.start_seconds, 1e-3),
        result.peak_rss_mb,
        result.cpu_seconds,
        note,
        counts,
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
    sandbox: SandboxProcess, streams: list[str], events_from: str | None = None
) -> dict[str, int]:
    """Records the tap must emit per stream, from the sandbox's own list counts."""
    out: dict[str, int] = {}
    for name in streams:
        if name == "wallet_transactions":
            wallets = _get(sandbox, "/wallets", {"per_page": 10_000})["wallets"]
            out[name] = sum(
                total_count(sandbox, f"/wallets/{w['lago_id']}/wallet_transactions")
                for w in wallets
            )
        elif name == "customer_usage":
            out[name] = total_count(sandbox, "/subscriptions")  # one per active subscription
        elif name == "events" and events_from:
            out[name] = total_count(sandbox, "/events", {"timestamp_from": events_from})
        else:
            path, params = LISTS[name]
            out[name] = total_count(sandbox, path, params)
    return out


def newest_events_start(sandbox: SandboxProcess, count: int) -> str:
    """Timestamp of the ``count``-th newest event: a window of about ``count`` events."""
    body = _get(sandbox, "/events", {"per_page": 1, "page": count})
    return str(body["events"][0]["timestamp"])


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
                f"tap start cost (best of 3 runs selecting no stream): {start:.2f} s",
                file=out,
                flush=True,
            )
            report.update(_scenarios(bench, sb, options, out))
        with start_sandbox(customers=options.customers, events=options.small_events) as sb:
            expected = expected_counts(sb, ["events"])
            report["small"] = measure_tap(
                bench,
                sb,
                f"events x{options.small_events:,} @0ms, C={c}",
                ["events"],
                expected,
                max_concurrency=c,
                note="same tap, a tenth of the events",
            )
        _print_report(report, options, out)
        print(f"\nbenchmark wall time {time.monotonic() - started:.0f} s", file=out)
    return report


def _scenarios(bench: Bench, sb: SandboxProcess, options: Options, out: Any) -> dict[str, Measure]:
    c = options.concurrency
    report: dict[str, Measure] = {}
    events = ["events"]
    expected = expected_counts(sb, events)
    others_expected = expected_counts(sb, OTHER_STREAMS)

    def done(key: str, measure: Measure) -> None:
        report[key] = measure
        print(
            f"  {measure.label}: {measure.records:,} records, {measure.wall_seconds:.1f} s wall, "
            f"{measure.per_second:,.0f} records/s of sync",
            file=out,
            flush=True,
        )

    sb.set_faults([])
    done(
        "tap0",
        measure_tap(
            bench, sb, f"tap events @0ms C={c}", events, expected, max_concurrency=c, note="all"
        ),
    )
    done(
        "serial0",
        measure_tap(
            bench, sb, "tap events @0ms C=1", events, expected, max_concurrency=1, note="all"
        ),
    )
    done(
        "floor",
        measure_floor(bench, sb, "SDK floor events", events, "no HTTP; wall incl. dump load"),
    )
    done(
        "others0",
        measure_tap(
            bench,
            sb,
            f"tap others @0ms C={c}",
            OTHER_STREAMS,
            others_expected,
            max_concurrency=c,
            note="14 other streams",
        ),
    )
    done(
        "others_serial0",
        measure_tap(
            bench,
            sb,
            "tap others @0ms C=1",
            OTHER_STREAMS,
            others_expected,
            max_concurrency=1,
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
                events,
                expected,
                max_concurrency=c,
                note="all",
            ),
        )
        done(
            "slice50",
            measure_tap(
                bench,
                sb,
                f"tap events @50ms C={c} slice",
                events,
                slice_expected,
                max_concurrency=c,
                start_date=start,
                note=f"newest ~{options.slice_events:,}",
            ),
        )
        done(
            "slice_serial50",
            measure_tap(
                bench,
                sb,
                "tap events @50ms C=1 slice",
                events,
                slice_expected,
                max_concurrency=1,
                start_date=start,
                note=f"newest ~{options.slice_events:,}",
            ),
        )
        done(
            "others50",
            measure_tap(
                bench,
                sb,
                f"tap others @50ms C={c}",
                OTHER_STREAMS,
                others_expected,
                max_concurrency=c,
                note="14 other streams",
            ),
        )
        done(
            "others_serial50",
            measure_tap(
                bench,
                sb,
                "tap others @50ms C=1",
                OTHER_STREAMS,
                others_expected,
                max_concurrency=1,
                note="14 other streams",
            ),
        )
    finally:
        sb.set_faults([])
    return report


def _print_report(report: dict[str, Any], options: Options, out: Any) -> None:
    c = options.concurrency
    keys = ["tap0", "serial0", "floor", "tap50", "slice50", "slice_serial50"]
    print_table(
        f"Events stream alone ({options.events:,} events; 50 ms = every request delayed 50 ms "
        "by a sandbox latency rule; 'slice' = the newest events only, same data)",
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

    def both(a: Measure, b: Measure) -> tuple[float, float]:
        return ratio(a.per_second, b.per_second), ratio(a.wall_per_second, b.per_second)

    floor_sync, floor_wall = both(report["tap0"], report["floor"])
    slice_ratio = ratio(report["slice50"].per_second, report["slice_serial50"].per_second)
    slice_wall = ratio(report["slice50"].wall_per_second, report["slice_serial50"].wall_per_second)
    full_ratio = ratio(report["tap50"].per_second, report["slice_serial50"].per_second)
    peak = max(m.peak_rss_mb for k, m in report.items() if k not in {"floor", "others_floor"})
    rows = [
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
            f"tap@50ms C={c} / C=1, same slice, rec/s of sync",
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
        ["peak RSS of any tap run (MB)", round(peak, 1), "< 300", _ok(peak < 300)],
        [
            "sync time ratio / events ratio (1.0 = linear)",
            round(ratio(time_ratio, count_ratio), 2),
            "about 1",
            "",
        ],
    ]
    print_table("Ratios", ["figure", "value", "goal", ""], rows, file=out)


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
    parser.add_argument("--concurrency", type=int, default=8, help="max_concurrency (8)")
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
    )
    run(options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
