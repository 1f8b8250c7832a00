"""Lago response bodies: JSON parsed once per response, no number losing digits."""

from __future__ import annotations

import decimal
import json
import typing as t

import orjson
from singer_sdk.exceptions import FatalAPIError

if t.TYPE_CHECKING:
    import requests

#: Maps digits and dots to "0", every other byte to " ": a body holding a run of 17 of them
#: may hold a number a double cannot represent exactly (checked at C speed).
_DIGIT_MASK = bytes(0x30 if chr(i) in "0123456789." else 0x20 for i in range(256))
_LONG_NUMBER = b"0" * 17


def parse_json(content: bytes) -> t.Any:
    """Parse a response body: orjson, unless a number would lose digits as a double.

    Such bodies (and any orjson refuses) are parsed as the SDK does, floats as Decimal.
    """
    if _LONG_NUMBER not in content.translate(_DIGIT_MASK):
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            pass
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
