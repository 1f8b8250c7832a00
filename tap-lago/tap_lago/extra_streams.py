"""Extra streams: any Lago list endpoint, declared in the ``extra_streams`` setting.

Each entry becomes a stream like the declared ones (same paging, retries, 429 gate,
dedupe, one-line errors) with a permissive schema: an object open to any field, declaring
only the key fields. Entries are checked at start-up; each bad one is one line naming
``extra_streams[i].<field>`` and the fix.

With ``parent_stream``, the path's ``{placeholders}`` name fields of the parent's records:
the parent's list is read (its fixed parameters only), then this stream's list once per
parent record. Extra streams read one page at a time: whether an unknown list's
``total_count`` is cached (which page-ahead relies on) is not known.
"""

from __future__ import annotations

import dataclasses
import re
import typing as t

from singer_sdk.exceptions import FatalAPIError

from tap_lago.client import LagoStream, ParentGoneError
from tap_lago.parsing import response_body
from tap_lago.replication import parse_datetime

if t.TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    import requests
    from singer_sdk.helpers.types import Context

SETTING = "extra_streams"
FIELDS = (
    "name",
    "path",
    "records_key",
    "primary_keys",
    "parent_stream",
    "params",
    "replication_key",
)
#: Query parameters the tap sets itself (paging).
PAGING_PARAMS = frozenset({"page", "per_page"})
EXAMPLE = (
    '{"name": "customer_invoices", "path": "/customers/{external_id}/invoices", '
    '"records_key": "invoices", "primary_keys": ["lago_id"], "parent_stream": "customers"}'
)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_SCALAR = (str, int, float, bool)


@dataclasses.dataclass(frozen=True)
class ExtraStreamSpec:
    """One valid entry of ``extra_streams``."""

    index: int
    name: str
    path: str
    records_key: str
    primary_keys: tuple[str, ...]
    parent_stream: str | None = None
    params: dict[str, t.Any] = dataclasses.field(default_factory=dict)
    replication_key: str | None = None

    @property
    def setting(self) -> str:
        """Where this entry is in the config, e.g. ``extra_streams[0]``."""
        return f"{SETTING}[{self.index}]"

    @property
    def placeholders(self) -> tuple[str, ...]:
        """The fields the path's ``{placeholders}`` name, in order."""
        return tuple(_PLACEHOLDER.findall(self.path))

    def schema(self) -> dict[str, t.Any]:
        """Any field allowed; the key fields declared (and required)."""
        properties: dict[str, t.Any] = {
            key: {"type": ["string", "integer"]} for key in self.primary_keys
        }
        required = list(self.primary_keys)
        if self.replication_key:
            properties[self.replication_key] = {"type": "string", "format": "date-time"}
            required.append(self.replication_key)
        return {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": True,
        }


class _Invalid(ValueError):
    """The first problem of one entry, as the line to show."""


def _types(schema: Mapping[str, t.Any]) -> set[str]:
    kind = schema.get("type")
    return set(kind) if isinstance(kind, list) else {kind} if isinstance(kind, str) else set()


def parse_extra_streams(
    value: t.Any, declared: Mapping[str, LagoStream]
) -> tuple[list[ExtraStreamSpec], list[str]]:
    """The valid entries of ``extra_streams``, and one error line per invalid one.

    ``declared`` maps the tap's own stream names to their instances (for name clashes,
    parents and the fields their records have).
    """
    if value in (None, ""):
        return [], []
    if not isinstance(value, list):
        return [], [
            f"{SETTING} must be an array of objects, e.g. [{EXAMPLE}]; got {type(value).__name__}."
        ]
    specs: dict[str, ExtraStreamSpec] = {}
    invalid: dict[str, int] = {}
    errors = []
    for index, entry in enumerate(value):
        try:
            spec = _parse_entry(index, entry, declared, specs, invalid)
        except _Invalid as exc:
            errors.append(str(exc))
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                invalid.setdefault(entry["name"], index)
        else:
            specs[spec.name] = spec
    return list(specs.values()), errors


def _parse_entry(
    index: int,
    entry: t.Any,
    declared: Mapping[str, LagoStream],
    earlier: Mapping[str, ExtraStreamSpec],
    invalid: Mapping[str, int],
) -> ExtraStreamSpec:
    """One entry as a spec; raises :class:`_Invalid` with its first problem."""
    at = f"{SETTING}[{index}]"
    if not isinstance(entry, dict):
        msg = f"{at} must be an object with name, path, records_key and primary_keys: {EXAMPLE}."
        raise _Invalid(msg)
    unknown = sorted(set(entry) - set(FIELDS))
    if unknown:
        msg = f"{at}.{unknown[0]} is not a field of an extra stream: use {', '.join(FIELDS)}."
        raise _Invalid(msg)

    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        what = "is missing" if name in (None, "") else f"{name!r} is not a valid stream name"
        msg = (
            f"{at}.name {what}: name the stream with letters, digits and underscores, "
            "e.g. 'customer_invoices'."
        )
        raise _Invalid(msg)
    if name in declared:
        msg = (
            f"{at}.name {name!r} is already a tap-lago stream: choose another name "
            f"(tap-lago streams: {', '.join(declared)})."
        )
        raise _Invalid(msg)
    if name in earlier or name in invalid:
        first = earlier[name].index if name in earlier else invalid[name]
        msg = f"{at}.name {name!r} is already the name of {SETTING}[{first}]: choose another."
        raise _Invalid(msg)

    path = entry.get("path")
    example_path = "e.g. /customers/{external_id}/invoices"
    if not isinstance(path, str) or not path.strip():
        msg = f"{at}.path is missing: give the list's path after api_url, {example_path}."
        raise _Invalid(msg)
    path = path.strip()
    if "://" in path or path.lstrip("/").startswith("api/v1/") or "?" in path:
        fix = "put query parameters in params" if "?" in path else "drop what api_url holds"
        msg = f"{at}.path {path!r} must be the path after api_url ({fix}), {example_path}."
        raise _Invalid(msg)
    path = "/" + path.lstrip("/")

    records_key = entry.get("records_key")
    if not isinstance(records_key, str) or not records_key.strip():
        msg = (
            f"{at}.records_key is missing: give the key of the list in the response body, "
            'e.g. \'invoices\' for {"invoices": [...], "meta": {...}}.'
        )
        raise _Invalid(msg)

    keys = entry.get("primary_keys")
    if (
        not isinstance(keys, list)
        or not keys
        or not all(isinstance(key, str) and key.strip() for key in keys)
    ):
        msg = (
            f"{at}.primary_keys is missing: list the fields that identify a record, "
            "e.g. ['lago_id']."
        )
        raise _Invalid(msg)

    replication_key = entry.get("replication_key")
    if replication_key is not None and (
        not isinstance(replication_key, str) or not replication_key.strip()
    ):
        msg = (
            f"{at}.replication_key must be the name of a date-time field, e.g. 'updated_at', "
            "or left out for a full table."
        )
        raise _Invalid(msg)

    params = entry.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        msg = f'{at}.params must be an object of query parameters, e.g. {{"status": "finalized"}}.'
        raise _Invalid(msg)
    clean: dict[str, t.Any] = {}
    for key, raw in params.items():
        if key in PAGING_PARAMS:
            msg = f"{at}.params.{key} is set by the tap (paging): remove it (see page_size)."
            raise _Invalid(msg)
        values = raw if isinstance(raw, list) else [raw]
        if not values or not all(isinstance(v, _SCALAR) for v in values):
            msg = (
                f"{at}.params.{key} must be a string, a number, a boolean or a list of them, "
                'e.g. "finalized" or ["active", "pending"].'
            )
            raise _Invalid(msg)
        texts = [str(v).lower() if isinstance(v, bool) else v for v in values]
        clean[key] = texts if isinstance(raw, list) else texts[0]

    spec = ExtraStreamSpec(
        index=index,
        name=name,
        path=path,
        records_key=records_key.strip(),
        primary_keys=tuple(key.strip() for key in keys),
        parent_stream=None,
        params=clean,
        replication_key=replication_key.strip() if replication_key else None,
    )
    parent = entry.get("parent_stream")
    if parent in (None, ""):
        if spec.placeholders:
            msg = (
                f"{at}.path {path!r} has {{{spec.placeholders[0]}}} but no parent_stream: set "
                "parent_stream to the stream whose records have that field, e.g. 'customers'."
            )
            raise _Invalid(msg)
        return spec
    _check_parent(at, spec, parent, declared=declared, earlier=earlier, invalid=invalid)
    return dataclasses.replace(spec, parent_stream=parent)


def _check_parent(
    at: str,
    spec: ExtraStreamSpec,
    parent: t.Any,
    *,
    declared: Mapping[str, LagoStream],
    earlier: Mapping[str, ExtraStreamSpec],
    invalid: Mapping[str, int],
) -> None:
    """The parent exists, is listed on its own, and has every placeholder's field."""
    top_level = [name for name, stream in declared.items() if stream.parent_stream_type is None]
    choices = f"a tap-lago stream ({', '.join(top_level)}) or an extra stream defined earlier"
    if not isinstance(parent, str) or (parent not in declared and parent not in earlier):
        if isinstance(parent, str) and parent in invalid:
            msg = (
                f"{at}.parent_stream {parent!r} is {SETTING}[{invalid[parent]}], which is "
                "invalid: fix that entry first."
            )
        else:
            msg = f"{at}.parent_stream {parent!r} is not a stream: use {choices}."
        raise _Invalid(msg)
    if parent in declared:
        stream = declared[parent]
        if stream.parent_stream_type is not None:
            msg = (
                f"{at}.parent_stream {parent!r} is read once per record of another stream: "
                f"use {choices}."
            )
            raise _Invalid(msg)
        properties: Mapping[str, t.Any] = stream.schema.get("properties") or {}
    else:
        properties = earlier[parent].schema()["properties"]
    if not spec.placeholders:
        msg = (
            f"{at}.path {spec.path!r} has no {{placeholder}} for the parent's records: name a "
            f"field of {parent} in it, e.g. /customers/{{external_id}}/invoices, or drop "
            "parent_stream."
        )
        raise _Invalid(msg)
    scalars = [
        name
        for name, prop in properties.items()
        if _types(prop) & {"string", "integer"} and not _types(prop) & {"object", "array"}
    ]
    for field in spec.placeholders:
        if field not in scalars:
            msg = (
                f"{at}.path {{{field}}} is not a field of {parent} records: use one of "
                f"{', '.join(scalars)}."
            )
            raise _Invalid(msg)


class ExtraStream(LagoStream):
    """A stream read from an ``extra_streams`` entry (subclassed per entry)."""

    spec: t.ClassVar[ExtraStreamSpec]
    page_ahead = False
    #: False for the reader of a parent list: its pages are not this stream's pages.
    counts_pages = True

    _lister: ExtraStream | None = None
    _skipped_parents = 0

    def not_found_hint(self) -> str:
        """A 404 with no Lago object named: the path is the likely mistake."""
        return (
            f"Check {self.spec.setting}.path, the path after api_url "
            f"(e.g. /customers/{{external_id}}/invoices), and api_url"
        )

    def request_ahead(self, page: int | None) -> requests.PreparedRequest | None:
        """None with a parent: the path's placeholders come from the parent's records."""
        if self.spec.parent_stream is not None:
            return None
        return super().request_ahead(page)

    def parse_response(self, response: requests.Response) -> Iterable[dict[str, t.Any]]:
        """Records under ``records_key``; a body without it is a setting to fix."""
        body = response_body(response)
        if not isinstance(body, dict) or self.spec.records_key not in body:
            keys = ", ".join(body) if isinstance(body, dict) else type(body).__name__
            msg = (
                f"{self.name}: the response of GET {self._safe_url(response)} has no "
                f"{self.spec.records_key!r} (it has: {keys}): set {self.spec.setting}"
                ".records_key to the key holding the list."
            )
            raise FatalAPIError(msg)
        return super().parse_response(response)

    def calculate_sync_cost(
        self,
        request: requests.PreparedRequest,
        response: requests.Response,
        context: Context | None,
    ) -> dict[str, int]:
        """Pages of a parent's list are requests of this stream, not its pages."""
        if self.counts_pages:
            return super().calculate_sync_cost(request, response, context)
        return {}

    def request_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        """The list, or with a parent, the list of each parent record in turn."""
        if self.spec.parent_stream is None or context is not None:
            yield from super().request_records(context)
            return
        for parent in self.parent_list().request_records(None):
            values = {field: parent.get(field) for field in self.spec.placeholders}
            if any(value in (None, "") for value in values.values()):
                self._skip_parent(values)
                continue
            try:
                yield from super().request_records(values)
            except ParentGoneError as exc:
                self.logger.warning("Skipping %s for %s: %s", self.name, values, exc)

    def _skip_parent(self, values: dict[str, t.Any]) -> None:
        self._skipped_parents += 1
        if self._skipped_parents == 1:
            empty = [field for field, value in values.items() if value in (None, "")]
            self.logger.warning(
                "%s: skipping %s records without %s (nothing to put in %s)",
                self.name,
                self.spec.parent_stream,
                ", ".join(empty),
                self.spec.path,
            )

    def parent_list(self) -> ExtraStream:
        """A reader of the parent's list whose requests count as this stream's."""
        if self._lister is None:
            parent = self._tap.streams[t.cast("str", self.spec.parent_stream)]
            if isinstance(parent, ExtraStream):
                spec = parent.spec
            else:
                lago = t.cast("LagoStream", parent)
                spec = ExtraStreamSpec(
                    index=self.spec.index,
                    name=lago.name,
                    path=str(lago.path),
                    records_key=lago.records_key or lago.name,
                    primary_keys=tuple(lago.primary_keys),
                    params=dict(lago.extra_params),
                )
            lister_class = extra_stream_class(dataclasses.replace(spec, name=self.name))
            lister_class.counts_pages = False
            self._lister = lister_class(tap=self._tap)
        return self._lister

    def prepare_record(self, record: dict[str, t.Any], context: Context | None) -> dict[str, t.Any]:
        """Check the record has the key fields the setting names (a typo fails loudly)."""
        missing = [key for key in self.spec.primary_keys if key not in record]
        if missing:
            msg = (
                f"{self.name}: records of {self.spec.path} have no {missing[0]!r} (they have: "
                f"{', '.join(record)}): set {self.spec.setting}.primary_keys to fields that "
                "identify a record."
            )
            raise FatalAPIError(msg)
        key = self.spec.replication_key
        if key is not None:
            value = record.get(key)
            try:
                if value is not None:
                    parse_datetime(value)
            except (TypeError, ValueError):
                msg = (
                    f"{self.name}: {key}={value!r} in a record of {self.spec.path} is not an "
                    f"ISO 8601 date-time: set {self.spec.setting}.replication_key to a "
                    "date-time field (e.g. updated_at), or leave it out for a full table."
                )
                raise FatalAPIError(msg) from None
        return record


def extra_stream_class(spec: ExtraStreamSpec) -> type[ExtraStream]:
    """The stream class of one ``extra_streams`` entry."""
    attributes: dict[str, t.Any] = {
        "__doc__": f"Extra stream {spec.name}: GET {spec.path} ({spec.setting}).",
        "spec": spec,
        "name": spec.name,
        "path": spec.path,
        "records_key": spec.records_key,
        "primary_keys": spec.primary_keys,
        "replication_key": spec.replication_key,
        "client_side_filter": spec.replication_key is not None,
        "extra_params": dict(spec.params),
        "schema": spec.schema(),
    }
    return t.cast("type[ExtraStream]", type(f"Extra_{spec.name}", (ExtraStream,), attributes))
