"""Command line: ``python -m tests.lago_sandbox --port N --api-key KEY [seed options]``.

Prints one line ``LAGO_SANDBOX_URL=http://127.0.0.1:PORT/api/v1`` when ready and serves
until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from tests.lago_sandbox.server import Sandbox


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The CLI options."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.lago_sandbox", description="Serve a local Lago API double."
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: pick one)")
    parser.add_argument("--api-key", default="test-api-key", help="the accepted Bearer key")
    parser.add_argument(
        "--strict-wallets",
        type=int,
        choices=(400, 422),
        help="refuse GET /wallets without external_customer_id with this status",
    )
    parser.add_argument(
        "--premium",
        action="store_true",
        help="serve as an organisation with a premium licence (premium endpoints answer, "
        "catalog extras and features are applied; else 403 or dropped)",
    )
    parser.add_argument(
        "--no-catalog",
        dest="catalog",
        action="store_false",
        default=None,
        help="no taxes, metrics, plans, coupons or add-ons (with --customers 0: an empty org)",
    )
    parser.add_argument("--seed", type=int, help="random seed of the organisation")
    parser.add_argument("--customers", type=int, help="number of customers")
    parser.add_argument("--events", type=int, help="number of events")
    parser.add_argument("--months", type=int, help="events spread over the last N months")
    parser.add_argument("--anchor", help="the seed's today (ISO date)")
    parser.add_argument("--latency-ms", type=int, default=0, help="delay added to each request")
    parser.add_argument(
        "--rate-limits",
        metavar="cloud|events=N,current_usage=N,default=N",
        help="Lago Cloud's per-organisation limits (cloud: 500/s events, 200/s current usage, "
        "50/s the rest), or other rates per second",
    )
    parser.add_argument(
        "--event-store",
        choices=("postgres", "clickhouse"),
        default="postgres",
        help="events store: postgres (duplicates 422) or clickhouse (duplicates 200, deduplicated)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the sandbox until SIGTERM or Ctrl-C."""
    args = parse_args(argv)
    seed: dict[str, Any] = {
        name: getattr(args, name)
        for name in ("seed", "customers", "events", "months", "anchor", "catalog")
        if getattr(args, name) is not None
    }
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sandbox = Sandbox(
        args.api_key,
        seed=seed,
        latency_ms=args.latency_ms,
        port=args.port,
        event_store=args.event_store,
        rate_limits=args.rate_limits,
    )
    sandbox.start()
    if sandbox.state is not None:
        sandbox.state.configure({"strict_wallets": args.strict_wallets, "premium": args.premium})
    print(f"LAGO_SANDBOX_URL={sandbox.url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
