"""Turn a dead-letter file back into target-lago input: `python -m target_lago.resend FILE`.

Each dead letter keeps the record as the target received it (after stream maps), its
stream, the stream's key properties and, for events, the transaction id it was given. The
output is one SCHEMA per stream followed by its RECORDs, on stdout; pipe it into
target-lago with the same settings less `stream_maps` (the records are already mapped).
An event keeps its transaction id even when the columns it was derived from were edited,
so a re-sent record lands exactly once however often it is re-sent.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO


def letters(lines: Iterable[str], source: str, errors: Any) -> Iterator[dict[str, Any]]:
    """The dead letters that can be re-sent, in file order; the others are reported."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            letter = json.loads(line)
        except ValueError as exc:
            errors.write(f"{where}: left out: not JSON ({exc})\n")
            continue
        if not isinstance(letter, dict) or not isinstance(letter.get("stream"), str):
            errors.write(f"{where}: left out: not a target-lago dead letter\n")
            continue
        stream = letter["stream"]
        if "record" not in letter:
            errors.write(f"{where}: left out: stream '{stream}': the line has no record\n")
            continue
        if not isinstance(letter["record"], dict):
            errors.write(
                f"{where}: left out: stream '{stream}': the record could not be read as an "
                "object (it is kept as text): fix it by hand\n"
            )
            continue
        tid = letter.get("transaction_id")
        if letter.get("error_code") == "conflicting_duplicate" and (
            letter["record"].get("transaction_id") in (None, "", tid)
        ):
            errors.write(
                f"{where}: left out: stream '{stream}': a conflicting duplicate of event "
                f"{tid!r}, which Lago already holds: re-sent with that id it would be "
                "counted as already present (or billed twice on a ClickHouse store). Give "
                "the record its own transaction_id in the file to send it as a new event\n"
            )
            continue
        yield letter


def messages(found: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """SCHEMA and RECORD messages re-sending every dead letter, grouped by stream."""
    streams: dict[str, list[dict[str, Any]]] = {}
    for letter in found:
        streams.setdefault(letter["stream"], []).append(letter)
    for stream, group in streams.items():
        records = []
        for letter in group:
            record = dict(letter["record"])
            tid = letter.get("transaction_id")
            if letter.get("action") == "events" and tid and not record.get("transaction_id"):
                record["transaction_id"] = tid
            records.append(record)
        columns = dict.fromkeys(key for record in records for key in record)
        yield {
            "type": "SCHEMA",
            "stream": stream,
            "schema": {"type": "object", "properties": {name: {} for name in columns}},
            "key_properties": list(group[0].get("key_properties") or []),
        }
        for record in records:
            yield {"type": "RECORD", "stream": stream, "record": record}


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Write target-lago input re-sending the dead letters of the given files."""
    parser = argparse.ArgumentParser(
        prog="python -m target_lago.resend",
        description="Turn target-lago dead-letter files back into Singer input on stdout.",
    )
    parser.add_argument("files", nargs="+", type=Path, help="dead-letter JSONL files")
    parser.add_argument(
        "--stream", action="append", help="only this stream (may be given more than once)"
    )
    args = parser.parse_args(argv)
    found: list[dict[str, Any]] = []
    counting = _Counting(err)
    for path in args.files:
        try:
            with path.open(encoding="utf-8", errors="surrogateescape") as handle:
                found.extend(letters(handle, str(path), counting))
        except OSError as exc:
            err.write(f"cannot read {path}: {exc.strerror or exc}\n")
            return 2
    if args.stream:
        found = [letter for letter in found if letter["stream"] in args.stream]
    count = 0
    for message in messages(found):
        out.write(json.dumps(message) + "\n")  # \\u escapes: an unfixed surrogate survives
        count += message["type"] == "RECORD"
    left = counting.lines
    err.write(f"{count} record(s) to re-send, {left} line(s) left out\n")
    return 1 if left else 0


class _Counting:
    """A writer that counts the lines it is given."""

    def __init__(self, target: TextIO) -> None:
        self.target = target
        self.lines = 0

    def write(self, text: str) -> int:
        self.lines += text.count("\n")
        return self.target.write(text)


if __name__ == "__main__":
    sys.exit(main())
