"""Lago response bodies: JSON parsed once per response, no number losing digits."""

from __future__ import annotations

import decimal
import json
import typing as t

import msgspec
from singer_sdk.exceptions import FatalAPIError

if t.TYPE_CHECKING:
    import requests


def _fraction(text: str) -> float | decimal.Decimal:
    """A JSON number with a fraction or exponent: a float when one holds it exactly.

    Up to 15 significant digits without an exponent, the float's shortest form has the
    text's value; any other number stays a `Decimal` with the text's digits.
    """
    if len(text) <= 16 and "e" not in text and "E" not in text:
        return float(text)
    return decimal.Decimal(text)


_DECODER = msgspec.json.Decoder(float_hook=_fraction)


def parse_json(content: bytes) -> t.Any:
    """Parse a response body without a number losing digits.

    Integers of any size are exact (msgspec); fractions become floats where that is
    exact, else `Decimal`s. A body msgspec refuses (a NaN, ...) is parsed as the SDK
    does, floats as Decimal.
    """
    try:
        return _DECODER.decode(content)
    except msgspec.DecodeError:
        return json.loads(content, parse_float=decimal.Decimal)


def response_body(response: requests.Response) -> t.Any:
    """The parsed JSON body of a response, parsed once and kept on the response."""
    body = getattr(response, "_lago_body", None)
    if body is None:
        try:
            body = parse_json(response.content)
        except ValueError as exc:
            request = response.request
            url = request.url if request is not None else response.url
            msg = f"HTTP {response.status_code} from GET {url} is not JSON: {exc}"
            raise FatalAPIError(msg) from exc
        response._lago_body = body  # type: ignore[attr-defined]
    return body


def response_meta(response: requests.Response) -> dict[str, t.Any]:
    """The ``meta`` object of a list response (empty when absent)."""
    body = response_body(response)
    meta = body.get("meta") if isinstance(body, dict) else None
    return meta if isinstance(meta, dict) else {}


def error_code(response: requests.Response) -> str | None:
    """The ``code`` of a Lago error body, when there is one."""
    try:
        body = response.json()
    except ValueError:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None
