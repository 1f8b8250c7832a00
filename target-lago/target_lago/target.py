"""target-lago: Singer records into Lago events, customers and subscriptions."""

from __future__ import annotations

import datetime as dt
import decimal
import fnmatch
import gc
import io
import json
import logging
import os
import re
import signal
import stat
import sys
import typing as t
import urllib.parse
from pathlib import Path

import msgspec
from singer_sdk import Target
from singer_sdk import typing as th
from singer_sdk.exceptions import ConfigValidationError, MappingError
from singer_sdk.helpers.capabilities import PluginCapabilities
from singer_sdk.io_base import SingerReader

from target_lago.actions import ACTIONS
from target_lago.actions.events import SeenEvents
from target_lago.client import (
    RECORD_LEVEL_403_CODES,
    LagoClient,
    LagoEndpointError,
    LagoError,
    redact_url,
)
from target_lago.fastpath import FastEvents, read_lines
from target_lago.inflight import InFlight
from target_lago.mapping import RecordRejected, epoch_seconds
from target_lago.report import SHOWN_REJECTIONS, DeadLetterError, RunReport
from target_lago.sinks import Item, LagoSink, StreamSetupError
from target_lago.stream_maps import GuardedMapper, StreamMapError

if t.TYPE_CHECKING:
    from pathlib import PurePath
    from types import FrameType

    from singer_sdk.helpers.capabilities import CapabilitiesEnum
    from singer_sdk.sinks import Sink

# Action -> sink (target_lago.actions). A stream named after an action takes it;
# `stream_actions` maps others.
SINKS: dict[str, type[LagoSink]] = ACTIONS
MAX_BATCH_SIZE = 100  # Lago's limit for POST /events/batch
PROGRESS_INTERVAL = 10  # default seconds between two progress lines of a stream
DEFAULT_API_URL = "https://api.getlago.com/api/v1"
# One cheap request per action at start-up that changes nothing: it proves the URL, the
# key and the endpoint before any record is read (an empty batch is refused with 422).
ENDPOINT_CHECKS: dict[str, tuple[str, str, bytes | None, int]] = {
    "events": ("POST", "/events/batch", b'{"events":[]}', 422),
    "customers": ("GET", "/customers?per_page=1", None, 200),
    "subscriptions": ("GET", "/subscriptions?per_page=1", None, 200),
    "subscription_plans": ("GET", "/subscriptions?per_page=1", None, 200),
    "entitlements": ("GET", "/features?per_page=1", None, 200),
    # No customer: 422 customer_not_found / wallet_not_found, nothing created.
    "wallets": ("POST", "/wallets", b'{"wallet":{"external_customer_id":""}}', 422),
    "wallet_transactions": (
        "POST",
        "/wallet_transactions",
        b'{"wallet_transaction":{"wallet_id":""}}',
        422,
    ),
    "applied_coupons": ("GET", "/applied_coupons?per_page=1", None, 200),
    "one_off_invoices": ("GET", "/invoices?per_page=1", None, 200),
    **{
        action: ("GET", f"/{action}?per_page=1", None, 200)
        for action in ("taxes", "billable_metrics", "features", "add_ons", "plans", "coupons")
    },
}
SWITCH_INTERVAL = 0.001  # seconds a thread may hold the GIL while others wait
#: Settings every SDK target is given that target-lago does not use, with what to do instead
#: (none is advertised; one that is set gets a warning). Faker is no dependency, so map
#: expressions have no `fake` and `faker_config` is not advertised either.
IGNORED_SDK_SETTINGS: dict[str, str] = {
    "add_record_metadata": "Lago stores no _sdc_ metadata columns",
    "load_method": "each stream's action decides how it is written (stream_actions)",
    "batch_size_rows": "set batch_size (at most 100)",
    "faker_config": "",
}
GC_THRESHOLD = 50_000  # allocations between two collections of young objects


SKIPPED = "TARGET_LAGO_SKIPPED"  # a line read and settled by the reader itself
_STREAM_NAME = re.compile(r'"stream"\s*:\s*"((?:[^"\\]|\\.)*)"')


class RunStoppedError(LagoError):
    """The run was stopped by a signal."""


class InputLineError(Exception):
    """An input line that is no Singer message and names no stream (fatal)."""


class LineReader(SingerReader):
    """Reads input lines with msgspec, as the SDK does (fractions as exact `Decimal`s).

    Lines msgspec refuses (e.g. NaN) go to the standard library's reader. Blank lines and
    a byte-order mark are skipped. A RECORD line that no JSON reader can read (invalid
    JSON, nesting too deep) is handed to `on_unreadable` (a dead letter of its stream)
    instead of stopping the run; any other unreadable line stops it with one line. Bytes
    that are not UTF-8 are read as lone surrogates, so their record is dead-lettered.
    """

    decoder = msgspec.json.Decoder(float_hook=decimal.Decimal)
    on_unreadable: t.Callable[[str, str, str], None] | None = None
    #: Called when reading stops on an error, before the error goes on.
    on_failure: t.Callable[[], None] | None = None
    line_number = 0
    #: RECORD lines of plain events streams skip the SDK's per-record work (`fastpath`).
    fast: FastEvents | None = None

    def process_lines(
        self, file_input: t.IO[str] | None, callbacks: dict[str, t.Callable[[dict], None]]
    ) -> t.Counter[str]:
        """Read every line (RECORD lines the fast path takes are not dispatched).

        On an error, `on_failure` is called before the error goes on.
        """
        try:
            if self.fast is None:
                return super().process_lines(file_input, callbacks)
            return read_lines(self, file_input or self.default_input, callbacks, self.fast)
        except Exception:
            if self.on_failure is not None:
                self.on_failure()
            raise

    @property
    def default_input(self) -> t.IO[str]:  # type: ignore[override]
        """Standard input as UTF-8 text, undecodable bytes kept as lone surrogates.

        The wrapper never closes standard input, so that after a fatal error the rest of
        the input can still be read (see `drain_stdin`).
        """
        raw = open(sys.stdin.fileno(), "rb", closefd=False)  # noqa: SIM115 - closes nothing
        return io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape")

    def deserialize_json(self, line: str) -> dict:
        """Decode one line.

        Args:
            line: One line of input.

        Returns:
            The message.

        Raises:
            InputLineError: For a line that is not JSON and names no stream.
        """
        self.line_number += 1
        if line[:1] == "\ufeff":
            line = line[1:]
        if not line.strip():
            return {"type": SKIPPED}
        try:
            try:
                return t.cast("dict", self.decoder.decode(line))
            except (msgspec.DecodeError, UnicodeEncodeError):
                return t.cast("dict", json.loads(line, parse_float=decimal.Decimal))
        except RecursionError:
            reason = "the record nests objects or arrays too deeply to be read as JSON"
        except ValueError as exc:
            reason = f"the line is not valid JSON ({exc})"
        found = _STREAM_NAME.search(line)
        if found is None or '"RECORD"' not in line or self.on_unreadable is None:
            msg = (
                f"input line {self.line_number} is not a Singer message: "
                f"{reason.removeprefix('the line is ')}; the tap or the file is broken"
            )
            raise InputLineError(msg)
        stream = json.loads(f'"{found.group(1)}"')
        self.on_unreadable(stream, line.rstrip("\n"), reason)
        return {"type": SKIPPED}

    def _process_unknown_message(self, message_dict: dict) -> None:
        if message_dict.get("type") != SKIPPED:
            super()._process_unknown_message(message_dict)


def _redacted(text: str, secrets: set[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def api_url_problem(url: str) -> str | None:
    """What is wrong with an `api_url` value, as one line with the fix (None: nothing)."""
    examples = "US cloud https://api.getlago.com/api/v1, EU https://api.eu.getlago.com/api/v1"
    try:
        parts = urllib.parse.urlsplit(url) if "://" in url else None
    except ValueError:
        return f"api_url {redact_url(url)!r} is not a URL ({examples})"
    if parts is None or parts.scheme not in {"http", "https"}:
        host = url.rsplit("://", maxsplit=1)[-1].split("/", maxsplit=1)[0] or "api.getlago.com"
        return (
            f"api_url must start with https:// (or http:// for a local Lago), got "
            f"{redact_url(url)!r}: e.g. https://{redact_url(host)}/api/v1 ({examples})"
        )
    try:
        parts.port  # noqa: B018 - raises on a port out of range or not a number
        hostname = parts.hostname
    except ValueError:
        hostname = None
    if not hostname:
        return f"api_url {redact_url(url)!r} has no valid host and port ({examples})"
    if parts.path.rstrip("/") != "/api/v1" and not parts.path.rstrip("/").endswith("/api/v1"):
        root = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}/api/v1"
        return (
            f"api_url must be the API root ending in /api/v1, got {redact_url(url)!r}: "
            f"e.g. {root} ({examples})"
        )
    if parts.query or parts.fragment:
        return f"api_url must not carry a query or a fragment: {redact_url(url)!r}"
    return None


def drain_stdin() -> None:
    """Read standard input to its end when a process writes into it (a pipe).

    Under Meltano the tap keeps writing after the target stops; a target that exits at
    once leaves it writing into a closed pipe, and Meltano ends the run with a
    BrokenPipeError traceback. Read and dropped, the rest of the input lets the tap end
    and Meltano report the failed loader in one line.
    """
    try:
        fd = sys.stdin.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):
        return
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return
    try:
        while os.read(fd, 1 << 16):
            pass
    except (OSError, RunStoppedError, KeyboardInterrupt):
        return  # stopped while reading on: nothing more to do


class DrainLinesAtDebug(logging.Filter):
    """Keeps the SDK's "Target sink ... is full" lines for DEBUG level.

    There is one per `batch_size x max_in_flight` records; progress lines say how a
    stream goes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether to log the record (a drain line only when DEBUG is on)."""
        if isinstance(record.msg, str) and record.msg.startswith("Target sink for '"):
            if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
                return False
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_PARTITION = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def _partition_problem(value: t.Any) -> str | None:
    """What is wrong with a `partition` value, as one line with the fix (None: nothing)."""
    if value is None or value == "":
        return None
    found = _PARTITION.fullmatch(value) if isinstance(value, str) else None
    if found is None or not 1 <= int(found.group(1)) <= int(found.group(2)):
        return (
            f'partition must be "i/N" with i from 1 to N (e.g. "2/4" for the second of '
            f"4 processes), got {value!r}"
        )
    return None


def _partition(value: t.Any) -> tuple[int, int] | None:
    """(i, N) of a valid `partition` value; None when unset or 1/1."""
    if not value:
        return None
    found = _PARTITION.fullmatch(str(value))
    if found is None:
        return None
    share = (int(found.group(1)), int(found.group(2)))
    return None if share[1] == 1 else share


class StreamRoutingError(Exception):
    """A stream that maps to no Lago action."""


# Words of a stream name that suggest its action, most specific first.
_ACTION_HINTS = (
    ("usage", "events"),
    ("event", "events"),
    ("wallet_transaction", "wallet_transactions"),
    ("topup", "wallet_transactions"),
    ("top_up", "wallet_transactions"),
    ("wallet", "wallets"),
    ("coupon", "applied_coupons"),
    ("invoice", "one_off_invoices"),
    ("subscription", "subscriptions"),
    ("customer", "customers"),
)


def likely_action(stream_name: str) -> str:
    """The action a stream's name suggests, for the example of an error (default events)."""
    name = stream_name.lower().replace("-", "_")
    return next((action for word, action in _ACTION_HINTS if word in name), "events")


class RecordsRejectedError(Exception):
    """The run rejected records and `allow_rejections` is off."""


class TargetLago(Target):
    """Writes Singer records into Lago: usage events, customers, subscriptions and more."""

    name = "target-lago"
    message_reader_class = LineReader
    #: No schema flattening: Lago reads nested fields nested (properties.units). No
    #: `validate-records` either, which Meltano does not know: `validate_records` is
    #: declared below instead.
    capabilities: t.ClassVar[list[CapabilitiesEnum]] = [
        PluginCapabilities.ABOUT,
        PluginCapabilities.STREAM_MAPS,
        PluginCapabilities.STRUCTURED_LOGGING,
    ]

    config_jsonschema = th.PropertiesList(
        th.Property(
            "api_key",
            th.StringType,
            title="API key",
            required=True,
            secret=True,
            description="Lago API key (Developers > API keys), sent as a Bearer token.",
        ),
        th.Property(
            "api_url",
            th.StringType,
            title="API URL",
            default=DEFAULT_API_URL,
            description=(
                "Root of the Lago API, ending in /api/v1. US cloud: "
                "https://api.getlago.com/api/v1 (default); EU cloud: "
                "https://api.eu.getlago.com/api/v1; self-hosted: <your host>/api/v1."
            ),
        ),
        th.Property(
            "stream_actions",
            th.ObjectType(additional_properties=th.StringType(allowed_values=list(SINKS))),
            title="Stream actions",
            default={},
            description=(
                f"Stream name or glob -> Lago action ({', '.join(SINKS)}). "
                "A stream named after an action needs no entry."
            ),
        ),
        th.Property(
            "transaction_id_columns",
            th.ObjectType(additional_properties=th.ArrayType(th.StringType)),
            title="Transaction ID columns",
            default={},
            description=(
                "Stream name or glob -> the columns that identify a row, for events streams "
                "whose records have no transaction_id (the id is derived from the event's "
                "code and these columns only) and wallet_transactions streams. Default: the "
                "stream's key properties."
            ),
        ),
        th.Property(
            "customer_deleted_column",
            th.StringType,
            title="Customer deleted column",
            default="_sdc_deleted_at",
            description=(
                "Column of a customers stream that marks a deleted row: a timestamp (as the "
                "_sdc_deleted_at SDK taps emit) or a boolean true deletes the customer in "
                "Lago (DELETE /customers/{external_id}), after every other write of the run."
            ),
        ),
        th.Property(
            "catalog_deleted_column",
            th.StringType,
            title="Catalog deleted column",
            default="_sdc_deleted_at",
            description=(
                "Column of a taxes, billable_metrics, features, add_ons, plans or coupons "
                "stream that marks a deleted row (a timestamp or true): DELETE "
                "/{resource}/{code}, after every other write of the run. A row missing from "
                "the stream never deletes anything."
            ),
        ),
        th.Property(
            "verify_duplicates",
            th.BooleanType,
            title="Verify duplicates",
            default=False,
            description=(
                "Read back every event Lago reports as already stored (one GET each) and "
                "dead-letter it as conflicting_duplicate when its content differs."
            ),
        ),
        th.Property(
            "allow_non_idempotent_one_off_invoices",
            th.BooleanType,
            title="Allow non-idempotent one-off invoices",
            default=False,
            description=(
                "Accept one_off_invoices streams, which Lago cannot make idempotent: a POST "
                "/invoices whose response is lost may bill twice. Off: such a stream stops "
                "the run at its SCHEMA. On: each invoice is tagged with its record's key and "
                "looked up before it is created (see the README)."
            ),
        ),
        th.Property(
            "dead_letter_path",
            th.StringType,
            title="Dead-letter file",
            default="lago_dead_letters.jsonl",
            description=(
                "JSONL file receiving one line per rejected record. A relative path is "
                "taken from the working directory (under Meltano, the project's root)."
            ),
        ),
        th.Property(
            "dry_run",
            th.BooleanType,
            title="Dry run",
            default=False,
            description=(
                "Validate and map every record, report, and send nothing: no request, no "
                "dead-letter file and no STATE message (a later real run starts where this "
                "one did)."
            ),
        ),
        th.Property(
            "batch_size",
            th.IntegerType(minimum=1, maximum=MAX_BATCH_SIZE),
            title="Batch size",
            default=100,
            description="Records per batch (events per POST /events/batch, at most 100).",
        ),
        th.Property(
            "max_in_flight",
            th.IntegerType(minimum=1),
            title="Maximum requests in flight",
            default=64,
            description=(
                "Most requests to Lago in flight at once. The pace "
                "(max_requests_per_second) keeps as many in flight as latency needs, up to "
                "this: 64 sustains 475 requests/s up to about 130 ms of latency."
            ),
        ),
        th.Property(
            "max_requests_per_second",
            th.IntegerType(minimum=0),
            title="Maximum requests per second",
            default=475,
            description=(
                "Pace of event ingestion (POST /events/batch). Lago Cloud allows 500 a second "
                "per organisation and 50 for other endpoints, which are paced at the same "
                "share (a tenth of this). A 429 halves the pace for a while. 0: no pacing "
                "(self-hosted Lago without a gateway limit)."
            ),
        ),
        th.Property(
            "partition",
            th.StringType,
            title="Partition",
            description=(
                'Share "i/N" of the events this process sends (i from 1 to N), to split a '
                "large backfill over N processes run side by side (e.g. N Meltano jobs) over "
                "the same input: each sends the events whose transaction id falls in its "
                "share and counts the others as skipped_by_partition. Each takes 1/N of "
                "max_requests_per_second. Events streams only. Unset: every event."
            ),
        ),
        th.Property(
            "request_timeout",
            th.IntegerType(minimum=1),
            title="Request timeout (seconds)",
            default=60,
            description="Seconds to wait for a Lago response before retrying.",
        ),
        th.Property(
            "max_retries",
            th.IntegerType(minimum=0),
            title="Maximum retries",
            default=8,
            description="Retries of one request on 429, 5xx, timeouts and lost connections.",
        ),
        th.Property(
            "progress_interval",
            th.IntegerType(minimum=0),
            title="Progress interval (seconds)",
            default=PROGRESS_INTERVAL,
            description=(
                "Seconds between two progress lines of a stream (records received, "
                "delivered, already present and rejected, and the rate); 0: none."
            ),
        ),
        th.Property(
            "allow_rejections",
            th.BooleanType,
            title="Allow rejections",
            default=False,
            description=(
                "Treat dead-lettered records as settled: exit 0 and keep emitting STATE past "
                "them (the dead-letter file is then their only copy). Off: a rejected record "
                "holds back every later STATE of the run and the exit status is 1."
            ),
        ),
        th.Property(
            "validate_records",
            th.BooleanType,
            title="Validate records",
            default=True,
            description=(
                "Check each record against its stream's SCHEMA message; a record that does "
                "not match is dead-lettered (schema_validation). Off: only the checks of "
                "each action's mapping apply."
            ),
        ),
    ).to_dict()

    @classmethod
    def append_builtin_config(cls, config_jsonschema: dict) -> None:
        """The SDK's settings for the capabilities above, less those target-lago ignores."""
        super().append_builtin_config(config_jsonschema)
        for name in IGNORED_SDK_SETTINGS:
            config_jsonschema["properties"].pop(name, None)

    def __init__(
        self,
        *,
        config: dict | PurePath | str | list[PurePath | str] | None = None,
        parse_env_config: bool = False,
        validate_config: bool = True,
        setup_mapper: bool = True,
        **kwargs: t.Any,
    ) -> None:
        """Create the target, its Lago client and its report.

        Args:
            config: Target configuration (dict or file paths).
            parse_env_config: Read settings from TARGET_LAGO_* variables.
            validate_config: Validate the settings.
            setup_mapper: Set up stream maps.
            **kwargs: Passed to `singer_sdk.Target`.
        """
        try:
            super().__init__(
                config=config,
                parse_env_config=parse_env_config,
                validate_config=validate_config,
                setup_mapper=setup_mapper,
                **kwargs,
            )
        except ConfigValidationError as exc:
            # The SDK's messages quote wrong values: never the key's.
            key = getattr(self, "_config", {}).get("api_key")
            secrets = {text for text in (str(key), repr(key)) if key not in (None, "")}
            errors = [_redacted(error, secrets) for error in exc.errors]
            raise ConfigValidationError(
                _redacted(str(exc), secrets), errors=errors, schema=exc.schema
            ) from None
        self._check_config()
        for name, instead in IGNORED_SDK_SETTINGS.items():
            if instead and self.config.get(name) is not None:
                self.logger.warning("%s is ignored: %s", name, instead)
        #: (i, N) of the `partition` setting; None: this process sends every event.
        self.partition = _partition(self.config.get("partition"))
        self._checked: set[str] = set()
        self._deferred: list[tuple[LagoSink, Item]] = []
        self._subscriptions_of: dict[str, list[tuple[str, str]]] = {}
        # (customer, wallet code) -> wallet lago_id, for wallet transactions of the run.
        self.wallet_ids: dict[tuple[str, str], str] = {}
        self.seen_events = SeenEvents()
        self.state_held = 0
        if not any(isinstance(f, DrainLinesAtDebug) for f in self.logger.filters):
            self.logger.addFilter(DrainLinesAtDebug())
        reader = t.cast("LineReader", self.message_reader)
        reader.on_unreadable = self.reject_line
        reader.on_failure = self.stop_reading
        reader.fast = FastEvents(self)
        # Sinks drain one at a time so that customers precede subscriptions precede
        # events; requests still run in parallel inside a drain (max_in_flight).
        self.max_parallelism = 1
        self.dry_run = bool(self.config.get("dry_run", False))
        self.report = RunReport(
            None if self.dry_run else self.config.get("dead_letter_path"),
            self.logger,
            dry_run=self.dry_run,
            progress_interval=float(self.config.get("progress_interval", PROGRESS_INTERVAL)),
        )
        self.inflight = InFlight(int(self.config.get("max_in_flight", 64)), self._stop_client)
        if self.inflight.limit > 1 and not self.dry_run:
            # Workers waiting on Lago get the interpreter back within 1 ms, not 5, while
            # the reader parses records: about 10 ms less per request with 8 in flight.
            sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        # Collect young objects every 50,000 allocations, not 700, and older ones 20 times
        # less often than that: a run keeps thousands of records in flight, and frequent
        # collections walking them cost about a sixth of its CPU.
        gc.set_threshold(max(gc.get_threshold()[0], GC_THRESHOLD), 20, 20)
        self._client: LagoClient | None = None

    def setup_mapper(self) -> None:
        """The SDK's stream maps, whose errors name the stream, expression and column.

        Raises:
            StreamMapError: When the stream_maps setting is invalid.
        """
        try:
            self.mapper = GuardedMapper(plugin_config=dict(self.config), logger=self.logger)
        except MappingError as exc:
            msg = f"stream_maps is invalid: {exc} Fix the stream_maps setting."
            raise StreamMapError(msg) from exc

    def _check_config(self) -> None:
        errors = []
        key = self.config.get("api_key")
        if not isinstance(key, str):
            # Never echo the value: it is the secret, whatever its type.
            errors.append("api_key must be text: the key from Lago (Developers > API keys)")
        else:
            key = key.strip()
            self._config["api_key"] = key
            if not key:
                errors.append("api_key is empty: give the key from Lago (Developers > API keys)")
            elif any(ord(char) < 32 or ord(char) == 127 or ord(char) > 255 for char in key):
                errors.append(
                    "api_key contains a line break or another character that cannot be sent "
                    "in an HTTP header: copy the key again from Lago (Developers > API keys)"
                )
        url = str(self.config.get("api_url") or DEFAULT_API_URL).strip()
        self._config["api_url"] = url
        problem = api_url_problem(url)
        if problem is not None:
            errors.append(problem)
        dead_letters = self.config.get("dead_letter_path")
        if not isinstance(dead_letters, str) or not dead_letters.strip():
            errors.append(
                "dead_letter_path must name a file (rejected records are kept nowhere else "
                "when allow_rejections is on), e.g. lago_dead_letters.jsonl"
            )
        elif Path(dead_letters).is_dir():
            errors.append(f"dead_letter_path {dead_letters!r} is a folder: name a file in it")
        if self.config.get("flattening_enabled"):
            errors.append(
                "flattening_enabled would rename nested fields (properties.units becomes "
                "properties__units) and Lago reads them nested: turn it off"
            )
        size = self.config.get("batch_size", 100)
        if not isinstance(size, int) or not 1 <= size <= MAX_BATCH_SIZE:
            errors.append(f"batch_size must be an integer from 1 to 100, got {size!r}")
        actions = self.config.get("stream_actions") or {}
        if not isinstance(actions, dict):
            errors.append("stream_actions must be an object: stream name or glob -> action")
        else:
            errors.extend(
                f"stream_actions[{name!r}] is {action!r}; valid actions: {', '.join(SINKS)}"
                for name, action in actions.items()
                if action not in SINKS
            )
        share_problem = _partition_problem(self.config.get("partition"))
        if share_problem is not None:
            errors.append(share_problem)
        if int(self.config.get("max_in_flight", 64)) < 1:
            errors.append("max_in_flight must be at least 1")
        columns = self.config.get("transaction_id_columns") or {}
        if not isinstance(columns, dict) or not all(
            isinstance(names, list) and names and all(isinstance(n, str) for n in names)
            for names in columns.values()
        ):
            errors.append(
                "transaction_id_columns must map stream names or globs to non-empty lists of "
                'column names, e.g. {"usage": ["id"]}'
            )
        if errors:
            raise ConfigValidationError("; ".join(errors), errors=errors)

    @property
    def client(self) -> LagoClient:
        """The Lago client (never created in a dry run, so nothing can be sent)."""
        if self.dry_run:
            msg = "dry_run is on: target-lago must not call Lago"
            raise RuntimeError(msg)
        if self._client is None:
            self._client = LagoClient(
                str(self.config.get("api_url", DEFAULT_API_URL)),
                str(self.config["api_key"]),
                timeout=float(self.config.get("request_timeout", 60)),
                max_retries=int(self.config.get("max_retries", 8)),
                pool_size=self.inflight.limit,
                max_requests_per_second=float(self.config.get("max_requests_per_second", 475))
                / (self.partition[1] if self.partition else 1),
            )
        return self._client

    def _stop_client(self) -> None:
        if self._client is not None:
            self._client.stop()

    # Routing

    def transaction_id_columns(self, stream_name: str) -> list[str] | None:
        """The `transaction_id_columns` entry of a stream: exact name, else longest glob."""
        columns: dict[str, list[str]] = self.config.get("transaction_id_columns") or {}
        if stream_name in columns:
            return list(columns[stream_name])
        for pattern, names in sorted(columns.items(), key=lambda item: (-len(item[0]), item[0])):
            if fnmatch.fnmatchcase(stream_name, pattern):
                return list(names)
        return None

    def action_for(self, stream_name: str) -> str | None:
        """The Lago action of a stream: exact setting, default name, longest matching glob.

        Args:
            stream_name: Stream name (after stream maps).

        Returns:
            An action name, or None.
        """
        actions: dict[str, str] = self.config.get("stream_actions") or {}
        if stream_name in actions:
            return actions[stream_name]
        if stream_name in SINKS:
            return stream_name
        for pattern, action in sorted(actions.items(), key=lambda item: (-len(item[0]), item[0])):
            if fnmatch.fnmatchcase(stream_name, pattern):
                return action
        return None

    def get_sink_class(self, stream_name: str) -> type[Sink]:
        """Route a stream to its sink, or fail at its SCHEMA message.

        Args:
            stream_name: Stream name.

        Returns:
            The sink class of the stream's action.

        Raises:
            StreamRoutingError: When no action applies.
        """
        action = self.action_for(stream_name)
        if action is None:
            example = json.dumps({stream_name: likely_action(stream_name)})
            msg = (
                f"Stream '{stream_name}' has no Lago action: map it (exact name or glob) in "
                f"the stream_actions setting to one of {', '.join(SINKS)}, e.g. "
                f"stream_actions: {example} (Meltano: meltano config target-lago set "
                f"stream_actions '{example}'), or name the stream after an action."
            )
            raise StreamRoutingError(msg)
        self.check_endpoint(action)
        return SINKS[action]

    def check_endpoint(self, action: str) -> None:
        """Prove the URL, the key and the action's endpoint once, before its first record.

        Raises:
            LagoEndpointError: When the answer is not Lago's.
        """
        if self.dry_run or action in self._checked:
            return
        method, path, body, expected = ENDPOINT_CHECKS[action]
        client = self.client
        response = client.request(method, path, body)
        # Lago's 403 for a premium feature proves the endpoint too (each record then says it).
        licence = response.status == 403 and response.error_code in RECORD_LEVEL_403_CODES
        if (response.status != expected and not licence) or not isinstance(response.body, dict):
            msg = (
                f"{method} {client.api_url}{path.split('?')[0]} answered HTTP "
                f"{response.status}, not Lago's answer: check that the api_url setting is "
                "the Lago API root ending in /api/v1 (US cloud: https://api.getlago.com/api/v1"
                ", EU: https://api.eu.getlago.com/api/v1)."
            )
            raise LagoEndpointError(msg)
        self._checked.add(action)

    def reject_line(self, stream_name: str, line: str, reason: str) -> None:
        """Dead-letter an input line that cannot be read as a record."""
        action = self.action_for(stream_name) or "unknown"
        stats = self.report.stream(stream_name, action)
        stats.add("received")
        if self.partition is not None and self.partition[0] != 1:
            stats.add("skipped_by_partition")  # the first share dead-letters it
            return
        self.report.reject(
            stats,
            line,
            http_status=None,
            error_code="invalid_record",
            details={"record": ["unreadable"]},
            message=f"a record of stream '{stream_name}' was not read: {reason}",
        )

    # Ordering and acknowledgement

    def flush_before(self, rank: int) -> None:
        """Drain every sink whose writes must precede writes of `rank`.

        Those are sinks of a lower rank, and sinks of the same rank replaced after a
        schema change (their records were received first).

        Args:
            rank: Rank of the sink about to write.
        """
        retired = [t.cast("LagoSink", s) for s in self._sinks_to_clear]
        active = [t.cast("LagoSink", s) for s in self._sinks_active.values()]
        for sink in sorted(retired, key=lambda s: s.rank):
            if sink.rank <= rank and sink.current_size and not sink.draining:
                self.drain_one(sink)
        for sink in sorted(active, key=lambda s: s.rank):
            if sink.rank < rank and sink.current_size and not sink.draining:
                self.drain_one(sink)

    def flush_after(self, rank: int) -> None:
        """Deliver every record of a higher rank received so far, and wait for Lago.

        A write that must follow them (a subscription's termination follows its events)
        calls this before its record is queued.

        Args:
            rank: Rank of the sink whose next record must come after them.
        """
        sinks = [t.cast("LagoSink", s) for s in self._sinks_to_clear]
        sinks += [t.cast("LagoSink", s) for s in self._sinks_active.values()]
        for sink in sorted(sinks, key=lambda s: s.rank):
            if sink.rank > rank and sink.current_size and not sink.draining:
                self.drain_one(sink)
        self.inflight.wait_all()

    def existed_before(self, created_at: t.Any, server_time: float | None) -> bool:
        """Whether an object Lago returned was created before this run wrote it.

        Args:
            created_at: The object's `created_at` (ISO string).
            server_time: The response's Date header, when present.

        Returns:
            True when created more than 2 seconds before the response (by the
            server's clock when it sends a Date header).
        """
        created = epoch_seconds(created_at)
        if created is None:
            return False
        now = (
            server_time if server_time is not None else dt.datetime.now(dt.timezone.utc).timestamp()
        )
        return created < now - 2

    def _write_state_message(self, state: dict) -> None:
        # A STATE goes out only once every record received before it is settled: stored
        # in Lago, or dead-lettered while allow_rejections is on. A dry run settles nothing.
        if self.dry_run:
            self.state_held += 1
            return
        self.inflight.wait_all()
        self.run_deferred()
        if self.report.rejected and not self.config.get("allow_rejections", False):
            self.state_held += 1
            return
        super()._write_state_message(state)

    def subscription_of(self, customer: str) -> str:
        """The external_id of a customer's one active subscription (cached for the run).

        Raises:
            RecordRejected: When the customer has none, or several (naming them).
        """
        if customer not in self._subscriptions_of:
            self._subscriptions_of[customer] = self._active_subscriptions(customer)
        found = self._subscriptions_of[customer]
        if len(found) == 1:
            return found[0][0]
        if not found:
            problem = f"customer {customer!r} has no active subscription in Lago"
        else:
            names = ", ".join(f"{sub} (plan {plan})" for sub, plan in found)
            problem = f"customer {customer!r} has {len(found)} active subscriptions: {names}"
        msg = f"no external_subscription_id, and {problem}: name the subscription in the row"
        raise RecordRejected({"external_subscription_id": ["value_is_mandatory"]}, msg)

    def _active_subscriptions(self, customer: str) -> list[tuple[str, str]]:
        if self.dry_run:  # nothing may reach Lago: shown as what would be looked up
            return [(f"(the active subscription of customer {customer!r})", "?")]
        params = {"external_customer_id": customer, "status[]": "active", "per_page": "100"}
        response = self.client.get("/subscriptions", params)
        body = response.body if response.ok and isinstance(response.body, dict) else {}
        return [
            (str(sub.get("external_id")), str(sub.get("plan_code")))
            for sub in body.get("subscriptions") or []
            if isinstance(sub, dict) and sub.get("status", "active") == "active"
        ]

    def defer(self, sink: LagoSink, item: Item) -> None:
        """Hold a record (a deletion) until every other write before the next STATE."""
        self._deferred.append((sink, item))

    def run_deferred(self) -> None:
        """Write the held records, each key's in order, different keys in parallel.

        The records of a sink with `deferred_last` go once every other one is written.
        """
        if not self._deferred:
            return
        held, self._deferred = self._deferred, []
        for last in (False, True):
            groups: dict[tuple[int, str], tuple[LagoSink, list[Item]]] = {}
            for sink, item in held:
                if sink.deferred_last is last:
                    groups.setdefault((id(sink), item.key), (sink, []))[1].append(item)
            self.inflight.run_all(
                lambda group: group[0].deliver_deferred(group[1]), groups.values()
            )

    def _handle_termination(self, signum: int, frame: FrameType | None) -> None:
        # The SDK's handler drains and writes STATE, which can wait minutes (a 429 pause)
        # and exits 0. Stop instead: requests and waits give up, no further STATE.
        self._stop_client()
        msg = (
            f"stopped by {signal.Signals(signum).name}: nothing after the last STATE "
            "message is acknowledged; rerun the same input (deliveries are idempotent)"
        )
        raise RunStoppedError(msg)

    def stop_reading(self) -> None:
        """The input stopped the run: finish the requests under way, then log the summary.

        Records not sent yet stay unsent (no STATE passed them: a rerun reads them again).
        """
        self.inflight.stop()
        self._stop_client()
        self.report.log_summary()

    def process_endofpipe(self) -> None:
        """Drain everything, wait for Lago, log the summary, then judge rejections.

        Raises:
            RecordsRejectedError: When records were rejected and that is not allowed.
        """
        try:
            super().process_endofpipe()
            self.inflight.wait_all()
            self.run_deferred()  # when no STATE came: deletions still go last
        finally:
            self.inflight.close()
            self._stop_client()
            self.report.log_summary()
        report = self.report
        rejected = report.rejected
        allowed = self.config.get("allow_rejections", False)
        shown = f"the first {SHOWN_REJECTIONS} of each stream are shown above"
        if self.dry_run:
            if rejected and not report.written:
                outcome = (
                    f"all {rejected} record(s) would be rejected ({shown}): fix the rows or "
                    "the stream maps, then dry-run again."
                )
            else:
                outcome = (
                    f"{report.written} record(s) would be written, {rejected} record(s) would "
                    f"be rejected{f' ({shown})' if rejected else ''}; a real run starts where "
                    "this one started."
                )
            msg = f"dry run: nothing was sent to Lago and no STATE was emitted: {outcome}"
            if rejected and not allowed:
                raise RecordsRejectedError(msg)
            self.logger.info(msg)
            return
        if rejected and not allowed:
            where = f"each one is in {report.dead_letter_path}, {shown}"
            if not report.written:
                msg = (
                    f"all {rejected} record(s) were rejected ({where}): nothing was written "
                    "to Lago and no STATE was emitted; fix the rows upstream or the stream "
                    "maps and rerun."
                )
            else:
                msg = (
                    f"{rejected} record(s) rejected ({where}); {report.written} record(s) "
                    "were written to Lago or found there already, but no STATE was emitted "
                    "after the first rejected record, so a rerun re-reads it: fix the rows "
                    "upstream and rerun (events already in Lago are recognised, not counted "
                    "twice), or set allow_rejections to treat dead letters as settled."
                )
            raise RecordsRejectedError(msg)

    @classmethod
    def invoke(cls, *args: t.Any, **kwargs: t.Any) -> None:
        """Run the target; known failures exit 1 with one clear line, no traceback.

        Args:
            *args: Passed to `singer_sdk.Target.invoke`.
            **kwargs: Passed to `singer_sdk.Target.invoke`.
        """
        # Every object made at import is frozen: collections of old objects, rare now
        # (`__init__`), never walk them again.
        gc.freeze()
        try:
            super().invoke(*args, **kwargs)
        except ConfigValidationError as exc:
            cls.logger.error("Invalid settings: %s", "; ".join(exc.errors) or exc)
        except RunStoppedError as exc:
            cls.logger.error("%s", exc)
            sys.exit(1)  # stopped on purpose: no reading on
        except (
            LagoError,
            StreamRoutingError,
            StreamSetupError,
            StreamMapError,
            RecordsRejectedError,
            DeadLetterError,
            InputLineError,
        ) as exc:
            cls.logger.error("%s", exc)
            cls.logger.debug("Traceback of the error above", exc_info=exc)
        except Exception as exc:
            cls.logger.error(
                "target-lago stopped on an unexpected error: %s: %s (the traceback is logged "
                "at DEBUG level: rerun with LOGLEVEL=debug, or meltano --log-level=debug)",
                type(exc).__name__,
                exc,
            )
            cls.logger.debug("Traceback of the error above", exc_info=exc)
        else:
            return
        if kwargs.get("file_input") is None:
            drain_stdin()
        sys.exit(1)



if __name__ == "__main__":
    TargetLago.cli()
