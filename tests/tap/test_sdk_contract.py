"""The private singer-sdk names tap-lago still relies on, checked against the installed SDK.

tap-lago prefers public SDK hooks (``get_http_request``, ``build_prepared_request``,
``request_records``, ``request_decorator``, ``validate_response``, ``backoff_*``,
``post_process``, ``calculate_sync_cost``, ...). What follows has no public equivalent in
singer-sdk 0.54; each entry says where tap-lago uses it and what to check when an SDK
upgrade makes a test here fail:

- ``Stream._increment_stream_state(latest_record, *, context)``, overridden in
  :mod:`tap_lago.replication`: bookmarks in one canonical format (string order is time
  order), and time windows (events) that move the bookmark per window, not per record.
  Check that ``_sync_records`` still calls it once per emitted record.
- ``Stream._write_record_message(record)``, overridden in :mod:`tap_lago.client`: RECORD
  lines written straight by :class:`~tap_lago.writer.LagoMessageWriter` when conformance,
  maps and selection would change nothing. Check that ``_sync_records`` still calls it and
  that it still marks the state unflushed.
- ``Stream._write_state_message()``, called by :mod:`tap_lago.replication` after each
  completed time window. Check it still writes when ``state_manager.is_flushed`` is False.
- ``Stream._stream_version``: the ACTIVATE_VERSION version the fast RECORD path writes.
  Check ``sync`` still sets it and ``_generate_record_messages`` still writes it.
- ``Stream._tap``: the tap (its shared session, 429 gate, progress, other streams).
- ``Stream._write_activate_version_message(full_table_version)``, overridden in
  :mod:`tap_lago.replication`: held back until the stream's first response is in, so a
  stream skipped for want of a premium licence never tells the loader its rows are gone.
  Check ``sync`` still writes ACTIVATE_VERSION through it, before any record.
- ``Stream._sync_children(child_context)``, overridden by the subscriptions stream
  (:mod:`tap_lago.streams`): each child of subscriptions syncs only the subscriptions it
  reads. Check the stream still calls it once per parent record.
- ``Stream._sync_records(context, *, write_messages)``, overridden in
  :mod:`tap_lago.client`: a plain stream (top-level, no partitions, no children, records
  the fast writer takes) runs ``LagoStream._sync_plain``, the same loop without the
  per-record steps that change nothing there. It calls ``_get_state_partition_context``,
  ``_write_starting_replication_value`` and ``_finalize_state`` as the SDK's loop does,
  and compares ``_process_record`` to the SDK's to know it adds nothing. Check that
  ``_sync_records`` still does only what ``_sync_plain`` does (the attributes it uses
  are listed in ``test_sync_records``).
- ``StreamStateManager.is_flushed`` (class in the private ``singer_sdk.streams._state``,
  reached through the public ``state_manager``): set as the SDK's own writers set it.
- ``singer_sdk.helpers._typing``: :func:`tap_lago.writer.conformance_check` predicts what
  ``conform_record_data_types`` would change; it keeps its own copies of the SDK's
  ``is_object_type`` / ``is_uniform_list``. Check the copies and the prediction agree.
- The text "An unhandled error occurred" that ``Stream.sync`` logs: lowered to DEBUG for
  errors reported in one line (:meth:`tap_lago.transport.TransportStream.log`).

``test_no_other_private_sdk_name_is_used`` keeps this list complete.
"""

from __future__ import annotations

import ast
import decimal
import inspect
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import tap_lago
from singer_sdk import RESTStream, Stream, Tap
from singer_sdk.helpers import _typing as sdk_typing
from singer_sdk.helpers.conform import TypeConformanceLevel
from tap_lago.tap import TapLago
from tap_lago.writer import conformance_check, is_object_type, is_uniform_list

#: A key no log line contains by chance: the tap redacts its key in every later log line of
#: this process, so a one-letter key would mask that letter in other tests' logs.
SDK_KEY = "sdk-contract-test-key-0b7d"

#: Every private SDK name tap-lago code uses (attributes and modules), as listed above.
DOCUMENTED = {
    "_increment_stream_state",
    "_write_record_message",
    "_write_state_message",
    "_stream_version",
    "_tap",
    "_write_activate_version_message",
    "_sync_children",
    "_sync_records",
    "_process_record",
    "_get_state_partition_context",
    "_write_starting_replication_value",
    "_finalize_state",
}

#: What ``Stream._sync_records`` uses of its stream: ``LagoStream._sync_plain`` folds
#: each of these steps (or leaves out what cannot apply to a plain stream).
SYNC_RECORDS_USES = {
    "STATE_MSG_FREQUENCY",
    "_check_max_record_limit",
    "_finalize_state",
    "_get_state_partition_context",
    "_increment_stream_state",
    "_process_record",
    "_write_record_message",
    "_write_starting_replication_value",
    "_write_state_message",
    "get_context_state",
    "get_record_counter",
    "get_records",
    "get_sync_timer",
    "partitions",
    "post_process",
    "selected",
    "state_manager",
    "stream_state",
}


def _source(function: Any) -> str:
    return inspect.getsource(function)


def _expect(condition: bool, name: str, what: str) -> None:
    """Fail naming the private SDK name and what to check in the new SDK."""
    if not condition:
        pytest.fail(f"singer-sdk changed {name}: {what} (see this module's docstring)")


def test_increment_stream_state() -> None:
    name = "Stream._increment_stream_state"
    signature = inspect.signature(Stream._increment_stream_state)
    _expect(
        list(signature.parameters) == ["self", "latest_record", "context"]
        and signature.parameters["context"].kind is inspect.Parameter.KEYWORD_ONLY,
        name,
        f"signature is now {signature}; tap_lago.replication overrides (latest_record, *, context)",
    )
    _expect(
        "self._increment_stream_state(record, context=" in _source(Stream._sync_records),
        name,
        "_sync_records no longer calls it per record: bookmarks would lose their "
        "canonical format and windowed streams would move them per record",
    )


def test_write_record_message() -> None:
    name = "Stream._write_record_message"
    signature = inspect.signature(Stream._write_record_message)
    _expect(
        list(signature.parameters) == ["self", "record"],
        name,
        f"signature is now {signature}; tap_lago.client overrides (record)",
    )
    _expect(
        "self._write_record_message(record)" in _source(Stream._sync_records),
        name,
        "_sync_records no longer writes records through it: the fast RECORD path is skipped",
    )
    _expect(
        "is_flushed = False" in _source(Stream._write_record_message),
        name,
        "it no longer marks the state unflushed; the fast path copies what it does",
    )


def test_sync_records() -> None:
    name = "Stream._sync_records"
    signature = inspect.signature(Stream._sync_records)
    _expect(
        list(signature.parameters) == ["self", "context", "write_messages"],
        name,
        f"signature is now {signature}; tap_lago.client overrides (context, *, write_messages)",
    )
    source = _source(Stream._sync_records)
    uses = set(re.findall(r"self\.(\w+)", source))
    _expect(
        uses == SYNC_RECORDS_USES,
        name,
        f"it now uses {sorted(uses ^ SYNC_RECORDS_USES)} differently: make "
        "LagoStream._sync_plain do the same per record, then update SYNC_RECORDS_USES",
    )
    _expect(
        "if current_context == state_partition_context:" in source
        and "% self.STATE_MSG_FREQUENCY == 0" in source
        and "record_counter.increment()" in source,
        name,
        "its partition finalizing, STATE frequency or record counting changed: "
        "LagoStream._sync_plain copies them",
    )


def test_write_state_message_and_is_flushed() -> None:
    name = "Stream._write_state_message / StreamStateManager.is_flushed"
    signature = inspect.signature(Stream._write_state_message)
    _expect(
        list(signature.parameters) == ["self"],
        name,
        f"signature is now {signature}; TimeWindows calls it with no argument",
    )
    _expect(
        "self.state_manager.is_flushed" in _source(Stream._write_state_message),
        name,
        "it no longer checks state_manager.is_flushed, which TimeWindows sets to False "
        "to have each completed window's bookmark written",
    )


def test_stream_version_and_tap() -> None:
    name = "Stream._stream_version / Stream._tap"
    tap = TapLago(
        config={"api_key": SDK_KEY, "api_url": "http://127.0.0.1:9/api/v1"}, parse_env_config=False
    )
    stream = tap.streams["customers"]
    _expect(stream._tap is tap, name, "a stream no longer holds its tap in _tap")
    _expect(
        "_stream_version" in vars(stream)
        and "self._stream_version = " in _source(Stream.sync)
        and "version=self._stream_version" in _source(Stream._generate_record_messages),
        name,
        "_stream_version is no longer the version sync sets and RECORD messages carry",
    )
    _expect(
        isinstance(stream.state_manager.is_flushed, bool),
        name,
        "state_manager has no boolean is_flushed any more",
    )


def test_activate_version_and_sync_children() -> None:
    name = "Stream._write_activate_version_message / Stream._sync_children"
    version = inspect.signature(Stream._write_activate_version_message)
    children = inspect.signature(Stream._sync_children)
    ok = (
        list(version.parameters) == ["self", "full_table_version"]
        and "self._write_activate_version_message(" in _source(Stream.sync)
        and list(children.parameters) == ["self", "child_context"]
        and "self._sync_children(" in _source(Stream)
    )
    assert ok, (
        f"{name} changed in this singer-sdk: check that premium-only streams still hold "
        "back ACTIVATE_VERSION (tap_lago.replication) and that the subscriptions stream "
        "still filters its children (tap_lago.streams)"
    )


def test_unhandled_error_line() -> None:
    _expect(
        '"An unhandled error occurred while syncing' in _source(Stream.sync),
        "the text of Stream.sync's error line",
        "TransportStream.log matches its start to lower it to DEBUG for one-line errors",
    )


SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"a": {"type": "string"}}},
    {"type": ["object", "null"]},
    {"anyOf": [{"type": "object"}, {"type": "null"}]},
    {"type": ["array", "null"], "items": {"type": "string"}},
    {"type": "array", "items": {"type": "object", "properties": {}}},
    {"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "string"}},
    {"anyOf": [{"type": "array", "items": {"type": "integer"}}, {"type": "null"}]},
    {"type": ["string", "null"]},
    {"type": "boolean"},
]


def test_typing_copies_agree_with_the_sdk() -> None:
    name = "singer_sdk.helpers._typing.is_object_type / is_uniform_list"
    for schema in SCHEMAS:
        _expect(
            bool(is_object_type(schema)) == bool(sdk_typing.is_object_type(schema))
            and bool(is_uniform_list(schema)) == bool(sdk_typing.is_uniform_list(schema)),
            name,
            f"they now read {schema} differently from tap_lago.writer's copies",
        )


def test_conformance_prediction_agrees_with_the_sdk() -> None:
    """A record the predicate passes comes out of the SDK's conformance unchanged."""
    schema = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "flag": {"type": ["boolean", "null"]},
            "amount": {"type": ["number", "null"]},
            "tags": {"type": ["array", "null"], "items": {"type": "string"}},
            "nested": {
                "type": ["object", "null"],
                "properties": {"on": {"type": "boolean"}},
            },
        },
    }
    records: list[dict[str, Any]] = [
        {"id": "a", "flag": True, "amount": decimal.Decimal("1.50"), "tags": ["x"]},
        {"id": "b", "flag": None, "nested": {"on": False}},
        {"id": "c", "flag": 1},
        {"id": "d", "nested": {"on": "yes"}},
        {"id": "e", "unknown": 1},
    ]
    check = conformance_check(schema)
    logger = logging.getLogger("contract")
    for record in records:
        conformed = sdk_typing.conform_record_data_types(
            "s", dict(record), schema, TypeConformanceLevel.RECURSIVE, logger
        )
        _expect(
            check(record) == (repr(conformed) == repr(record)),
            "singer_sdk.helpers._typing.conform_record_data_types",
            f"it now treats {record} differently from tap_lago.writer.conformance_check",
        )


def _private_names(tree: ast.AST, sdk_names: set[str]) -> set[str]:
    """SDK ``x._name`` attributes, and singer_sdk modules imported by a private path."""
    names: set[str] = set()
    for node in ast.walk(tree):
        defined: list[str] = []  # methods and class attributes that would override
        if isinstance(node, ast.FunctionDef):
            defined = [node.name]
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                targets = item.targets if isinstance(item, ast.Assign) else []
                if isinstance(item, ast.AnnAssign):
                    targets = [item.target]
                defined += [target.id for target in targets if isinstance(target, ast.Name)]
        elif isinstance(node, ast.Attribute):
            defined = [node.attr]
        names.update(
            name
            for name in defined
            if name.startswith("_") and not name.startswith("__") and name in sdk_names
        )
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "singer_sdk" and any(part.startswith("_") for part in parts):
                names.add(module)
    return names


def test_no_other_private_sdk_name_is_used() -> None:
    """Every private SDK name in tap_lago's code is one this module documents."""
    tap = TapLago(
        config={"api_key": SDK_KEY, "api_url": "http://127.0.0.1:9/api/v1"}, parse_env_config=False
    )
    stream = tap.streams["customers"]
    sdk_names = (
        set(dir(RESTStream))
        | set(dir(Tap))
        | set(vars(stream))
        | set(vars(stream.state_manager))
        | set(dir(type(stream.state_manager)))
    )
    package = Path(tap_lago.__file__).parent
    undocumented = sorted(
        f"{name} (in {path.name})"
        for path in sorted(package.glob("*.py"))
        for name in _private_names(ast.parse(path.read_text()), sdk_names)
        if name not in DOCUMENTED
    )
    assert not undocumented, (
        f"private singer-sdk names used but not documented in {__name__}: {undocumented}; "
        "use a public hook, or document the use and check it here"
    )
