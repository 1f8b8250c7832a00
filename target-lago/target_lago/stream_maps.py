"""Stream maps whose failures name the stream, the expression and the column, in one line."""

from __future__ import annotations

import fnmatch
import typing as t

import simpleeval
from singer_sdk.exceptions import MappingError
from singer_sdk.mapper import CustomStreamMap, PluginMapper

if t.TYPE_CHECKING:
    from types import TracebackType


class StreamMapError(Exception):
    """A stream map that cannot be applied (fatal): one line naming what to fix."""


class GuardedMapper(PluginMapper):
    """The SDK's stream maps, with each map's errors turned into a `StreamMapError`.

    At a SCHEMA an invalid map (an expression that does not parse, a key property
    removed) names the stream. On a record, any error of a map's expressions (a column
    the record lacks, `'a' + 1`) names the stream, the field, the expression, the
    missing column and the record's key.
    """

    def register_raw_stream_schema(
        self, stream_name: str, schema: dict, key_properties: t.Sequence[str] | None
    ) -> None:
        """Register a stream's maps, then guard each one's transform.

        Raises:
            StreamMapError: When the stream's maps are invalid.
        """
        try:
            super().register_raw_stream_schema(stream_name, schema, key_properties)
        except MappingError as exc:
            hint = ""
            if "key propert" in str(exc):
                hint = (
                    " The stream's key properties must stay in the map: map them too, or "
                    "name mapped fields with __key_properties__ (e.g. [external_id])."
                )
            msg = (
                f"stream_maps for stream '{stream_name}' are invalid: {exc}{hint} Fix the "
                f"stream_maps setting (see the README's reverse-ETL example)."
            )
            raise StreamMapError(msg) from exc
        for stream_map in self.stream_maps[stream_name]:
            if isinstance(stream_map, CustomStreamMap):
                stream_map.transform = self._guarded(stream_map)  # type: ignore[method-assign, assignment]

    def _guarded(self, stream_map: CustomStreamMap) -> t.Callable[[dict], dict | None]:
        transform = stream_map.transform

        def guarded(record: dict) -> dict | None:
            try:
                return transform(record)
            except Exception as exc:  # any error of a user's expression, e.g. a TypeError
                raise StreamMapError(self.explain(stream_map, record, exc)) from exc

        return guarded

    def explain(self, stream_map: CustomStreamMap, record: dict, exc: Exception) -> str:
        """One line saying which expression of which stream failed on which record, and why."""
        stream = stream_map.stream_name or stream_map.stream_alias
        cause = exc.__cause__ if isinstance(exc, MappingError) else exc
        expression = getattr(cause, "expression", None) or _expression_in(exc.__traceback__)
        field = self._field_of(stream, expression)
        where = f"field '{field}' = {expression!r}" if field else f"expression {expression!r}"
        if expression is None:
            where = "an expression"
        if isinstance(cause, simpleeval.NameNotDefined):
            columns = ", ".join(sorted(map(str, record))) or "none"
            problem = (
                f"the record has no column '{cause.name}' (its columns: {columns}); "
                "name one of them"
            )
        elif isinstance(cause, simpleeval.InvalidExpression):
            problem = getattr(cause, "message", None) or str(cause)
        else:
            problem = f"{type(cause).__name__}: {cause}"
        keys = ", ".join(
            f"{key}={record.get(key)!r}" for key in stream_map.raw_key_properties or ()
        )
        row = f" (record {keys})" if keys else ""
        return (
            f"stream map of stream '{stream}' failed{row}: {where}: {problem}. "
            f"Fix stream_maps['{stream}']."
        )

    def _field_of(self, stream: str, expression: str | None) -> str | None:
        """The field of the stream's map definition whose expression this is."""
        if expression is None:
            return None
        for key, definition in self.stream_maps_dict.items():
            if not isinstance(definition, dict):
                continue
            source = str(definition.get("__source__", key))
            if not fnmatch.fnmatchcase(stream, source):
                continue
            for field, value in definition.items():
                if value == expression:
                    return "__filter__ (the filter)" if field == "__filter__" else str(field)
        return None


def _expression_in(trace: TracebackType | None) -> str | None:
    """The expression the SDK's map evaluator was solving when an error was raised."""
    found = None
    while trace is not None:
        frame = trace.tb_frame
        if frame.f_code.co_name == "_eval" and isinstance(frame.f_locals.get("expr"), str):
            found = frame.f_locals["expr"]
        trace = trace.tb_next
    return found
