"""Records as the tap emits them: exact decimals, no field dropped, never a null key.

One :class:`RecordShaper` per stream, built from the stream's schema, applies three rules
to each record the API returns (through the SDK's ``post_process`` hook):

- **Decimals.** A top-level field typed ``number`` that Lago sends as a string
  (``"12.3400"``) becomes a :class:`~decimal.Decimal`, written as a JSON number with the
  same digits. A string that is not a finite decimal number becomes ``null`` and is kept,
  as sent, under its name in ``_unknown_fields``; the field is logged once per run.
- **Unknown fields.** Top-level fields the schema does not declare (a newer Lago) move to
  the ``_unknown_fields`` object, unless the schema is open (``additionalProperties:
  true``, an extra stream's): then they stay in place. Nested objects keep theirs in place
  (their schemas allow additional properties). Each new field is logged once per run
  (nested ones by path, e.g. ``billing_configuration.new_flag``).
- **Keys.** A key field (primary or replication key) must not be null. Where the stream
  names a stand-in (events: ``external_subscription_id`` -> ``""``), a null becomes it;
  otherwise the record is skipped, logged once and counted (e.g. a fee without
  ``lago_id``: the spec allows it, but only persisted fees are listed).
"""

from __future__ import annotations

import decimal
import re
import typing as t

if t.TYPE_CHECKING:
    import logging

#: The column holding the top-level fields a stream's schema does not declare.
UNKNOWN_FIELDS = "_unknown_fields"

#: What Lago writes for a decimal (``BigDecimal#to_s``: ``"12.5"``, ``"-3.0"``, ``"1e-7"``).
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def to_decimal(text: str) -> decimal.Decimal | None:
    """The exact value of a decimal string, or None when it is not a finite number."""
    if not _DECIMAL.fullmatch(text):
        return None
    return decimal.Decimal(text)


#: Exact types of the values a ``number`` field may hold as they are (bool excluded).
_NUMBERS = frozenset({int, float, decimal.Decimal})


class RecordShaper:
    """Applies the module's rules to the records of one stream."""

    def __init__(
        self,
        stream: str,
        schema: dict[str, t.Any],
        logger: logging.Logger,
        key_stand_ins: t.Mapping[str, t.Any] | None = None,
    ) -> None:
        """Read the declared fields, decimal fields and keys from ``schema``."""
        properties: dict[str, t.Any] = schema.get("properties") or {}
        self.stream = stream
        self.logger = logger
        self.declared = frozenset(properties)
        #: An open schema (``additionalProperties: true``) keeps undeclared fields in place.
        self.open = schema.get("additionalProperties") is True
        self.decimals = tuple(
            name
            for name, prop in properties.items()
            if _types(prop) & {"number"} and not _types(prop) & {"integer", "string"}
        )
        self.nested = tuple(
            (name, finder)
            for name, prop in properties.items()
            if (finder := _undeclared_finder(prop, name)) is not None
        )
        self.keys = tuple(schema.get("required") or ())
        self.stand_ins = dict(key_stand_ins or {})
        self.skipped = 0
        self._reported: set[str] = set()

    def shape(self, record: dict[str, t.Any]) -> dict[str, t.Any] | None:
        """The record to emit (changed in place), or None to skip it."""
        unknown: dict[str, t.Any] | None = None
        if not self.open and not self.declared.issuperset(record):
            extra = record.keys() - self.declared
            unknown = {name: record.pop(name) for name in sorted(extra)}
            self._report_new(extra, f"in {UNKNOWN_FIELDS}")
        for name, finder in self.nested:
            value = record.get(name)
            if value:
                found: list[str] = []
                finder(value, found)
                if found:
                    self._report_new(found, "in place")
        for name in self.decimals:
            value = record.get(name)
            if value is None or value.__class__ in _NUMBERS:
                continue
            exact = to_decimal(value) if isinstance(value, str) else None
            if exact is None:
                if unknown is None:
                    unknown = {}
                unknown[name] = value
                record[name] = None
                self._report_not_decimal(name)
            else:
                record[name] = exact
        if None in map(record.get, self.keys):
            for key in self.keys:
                if record.get(key) is None:
                    if key not in self.stand_ins:
                        self._report_null_key(key)
                        return None
                    record[key] = self.stand_ins[key]
        if unknown:
            record[UNKNOWN_FIELDS] = unknown
        return record

    def _report_new(self, names: t.Iterable[str], where: str) -> None:
        new = sorted(set(names) - self._reported)
        if new:
            self._reported.update(new)
            self.logger.warning(
                "%s: fields not in the schema, kept %s: %s", self.stream, where, ", ".join(new)
            )

    def _report_not_decimal(self, name: str) -> None:
        marker = f"decimal:{name}"
        if marker not in self._reported:
            self._reported.add(marker)
            self.logger.warning(
                "%s: %s is not a decimal number in some records; emitted as null, the "
                "value kept in %s.%s",
                self.stream,
                name,
                UNKNOWN_FIELDS,
                name,
            )

    def _report_null_key(self, key: str) -> None:
        self.skipped += 1
        marker = f"key:{key}"
        if marker not in self._reported:
            self._reported.add(marker)
            self.logger.warning(
                "%s: skipping records without %s (a key field cannot be null)", self.stream, key
            )


#: Appends to a list the paths of the keys a value holds that its schema does not declare.
Finder = t.Callable[[object, list[str]], None]


def _undeclared_finder(schema: dict[str, t.Any], path: str) -> Finder | None:
    """The finder of undeclared keys under ``path`` (e.g. ``fees[].item``), compiled once.

    Only objects with declared properties, and lists of them, are looked into; None when
    the schema has nothing to look into. Each level first checks all its keys at once.
    """
    items = schema.get("items")
    item_finder = (
        _undeclared_finder(items, f"{path}[]")
        if isinstance(items, dict) and _is_record(items)
        else None
    )
    if not _is_record(schema):
        if item_finder is None:
            return None

        def find_in_list(value: object, found: list[str]) -> None:
            if isinstance(value, list):
                for item in value:
                    item_finder(item, found)

        return find_in_list
    properties: dict[str, t.Any] = schema["properties"]
    declared = frozenset(properties)
    subs = tuple(
        (name, finder)
        for name, sub in properties.items()
        if (finder := _undeclared_finder(sub, f"{path}.{name}")) is not None
    )

    def find(value: object, found: list[str]) -> None:
        if isinstance(value, dict):
            if not declared.issuperset(value):
                found.extend(f"{path}.{name}" for name in value if name not in declared)
            for name, finder in subs:
                item = value.get(name)
                if item:
                    finder(item, found)
        elif isinstance(value, list) and item_finder is not None:
            for item in value:
                item_finder(item, found)

    return find


def _is_record(schema: dict[str, t.Any]) -> bool:
    """An object with declared properties, not a map of data keys.

    Event ``properties`` is such a map: its ``additionalProperties`` is a schema.
    """
    return bool(schema.get("properties")) and not isinstance(
        schema.get("additionalProperties"), dict
    )


def _types(schema: dict[str, t.Any]) -> set[str]:
    kind = schema.get("type")
    return set(kind) if isinstance(kind, list) else {kind} if isinstance(kind, str) else set()
