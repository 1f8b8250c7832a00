"""The lean reference target: the least CPU a Python process can spend on the same work.

``python -m benchmarks.lean_target URL KEY [IN_FLIGHT]`` reads the target benchmark's
Singer file on stdin, maps each usage row to an event (transaction id ``ref-<id>``, epoch
timestamp, the other columns as properties), and POSTs batches of 100 from IN_FLIGHT
threads (default 8) over keep-alive ``http.client`` connections. No validation, no
dead letters, no STATE, no retries: any answer but 200 stops it with exit status 1. It
is the floor target-lago's CPU per event is compared against (``target_bench``).
"""

from __future__ import annotations

import datetime as dt
import http.client
import queue
import sys
import threading
import urllib.parse

import orjson

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
KEYS = ("id", "code", "external_subscription_id", "timestamp")


def main(url: str, key: str, in_flight: int = 8) -> int:
    """Send every RECORD of stdin; 0 when Lago acknowledged every batch."""
    parts = urllib.parse.urlsplit(url)
    path = f"{parts.path}/events/batch"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    bodies: queue.Queue[bytes | None] = queue.Queue(maxsize=2 * in_flight)
    failures: list[int] = []

    def worker() -> None:
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port)
        while (body := bodies.get()) is not None:
            connection.request("POST", path, body, headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                failures.append(response.status)

    threads = [threading.Thread(target=worker) for _ in range(in_flight)]
    for thread in threads:
        thread.start()
    events: list[dict] = []
    for line in sys.stdin.buffer:
        message = orjson.loads(line)
        if message["type"] != "RECORD":
            continue
        row = message["record"]
        moment = dt.datetime.fromisoformat(row["timestamp"].replace("Z", "+00:00"))
        properties = {k: v for k, v in row.items() if k not in KEYS and v is not None}
        events.append(
            {
                "transaction_id": f"ref-{row['id']}",
                "code": row["code"],
                "external_subscription_id": row["external_subscription_id"],
                "timestamp": round((moment - EPOCH).total_seconds(), 3),
                "properties": properties,
            }
        )
        if len(events) == 100:
            bodies.put(orjson.dumps({"events": events}))
            events = []
    if events:
        bodies.put(orjson.dumps({"events": events}))
    for _ in threads:
        bodies.put(None)
    for thread in threads:
        thread.join()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], *(int(arg) for arg in sys.argv[3:4])))
