"""In-memory state of the sandbox: tables, ordering, scopes, filters and the write logic.

Everything here speaks "API shape": the stored objects are the dicts the list endpoints
return. Each table keeps its rows sorted lazily (append on write, sort once on the next
read) and caches each row's serialized JSON, so list pages are a slice and a join.
"""

from __future__ import annotations

import bisect
import gc
import json
import json.encoder
import math
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Context as DecimalContext
from decimal import Decimal, InvalidOperation
from typing import Any

JsonObj = dict[str, Any]


def _words(text: str) -> list[str]:
    return text.split()


CURRENCIES = frozenset(
    _words(
        """AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BIF BMD BND BOB BRL BSD BWP BYN
    BZD CAD CDF CHF CLF CLP CNY COP CRC CVE CZK DJF DKK DOP DZD EGP ETB EUR FJD FKP GBP GEL
    GHS GIP GMD GNF GTQ GYD HKD HNL HRK HTG HUF IDR ILS INR ISK JMD JPY KES KGS KHR KMF KRW
    KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRO MUR MVR MWK MXN MYR MZN NAD
    NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SEK SGD
    SHP SLL SOS SRD STD SZL THB TJS TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VND VUV WST XAF
    XCD XOF XPF YER ZAR ZMW"""
    )
)
COUNTRIES = frozenset(
    _words(
        """AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM
    DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS
    GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ
    MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV
    SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI
    VN VU WF WS YE YT ZA ZM ZW"""
    )
)

SUBSCRIPTION_STATUSES = ("pending", "active", "terminated", "canceled", "incomplete")
INVOICE_VISIBLE_STATUSES = frozenset({"draft", "finalized", "voided", "failed", "pending"})
EVENTS_BATCH_MAX = 100
QUERY_CACHE_SIZE = 32  # filtered selections kept (oldest dropped first)
FREEZE_ROWS = 100_000  # from this size on, loaded objects are hidden from the cyclic GC
CUSTOMER_METADATA_MAX = 5
INTERVAL_PER_YEAR = {"weekly": 52, "monthly": 12, "quarterly": 4, "semiannual": 2, "yearly": 1}

# ---------------------------------------------------------------------------------------------
# Errors raised by the store; the server turns them into Lago's error bodies.


class ApiError(Exception):
    """An API error with Lago's exact body."""

    def __init__(self, status: int, body: JsonObj) -> None:
        super().__init__(f"{status} {body}")
        self.status = status
        self.body = body


def not_found(resource: str) -> ApiError:
    """404 ``<resource>_not_found``."""
    return ApiError(404, {"status": 404, "error": "Not Found", "code": f"{resource}_not_found"})


def unprocessable(details: JsonObj) -> ApiError:
    """422 ``validation_errors`` with the given ``error_details``."""
    return ApiError(
        422,
        {
            "status": 422,
            "error": "Unprocessable Entity",
            "code": "validation_errors",
            "error_details": details,
        },
    )


def bad_request(key: str) -> ApiError:
    """400 for a missing root key (``ActionController::ParameterMissing``)."""
    return ApiError(
        400,
        {
            "status": 400,
            "error": f"BadRequest: param is missing or the value is empty or invalid: {key}",
        },
    )


def forbidden(code: str) -> ApiError:
    """403 with a code."""
    return ApiError(403, {"status": 403, "error": "Forbidden", "code": code})


def not_allowed(code: str) -> ApiError:
    """405 business-rule failure."""
    return ApiError(405, {"status": 405, "error": "Method Not Allowed", "code": code})


def internal_error() -> ApiError:
    """500 as Rails' public exceptions app renders it for JSON requests."""
    return ApiError(500, {"status": 500, "error": "Internal Server Error"})


# ---------------------------------------------------------------------------------------------
# Time helpers (kept local so the store does not depend on anything but the stdlib).

_DT_RE = re.compile(
    r"^\s*(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"\s*([Zz]|[+-]\d{2}(?::?\d{2})?)?\s*$"
)
_DATE_RE = re.compile(r"^\s*(\d{4})-(\d{2})-(\d{2})(?:[Tt ].*)?$")


def utcnow() -> datetime:
    """The current time, UTC, aware."""
    return datetime.now(timezone.utc)


def parse_datetime(value: Any) -> datetime | None:
    """Parse an ISO 8601 date or date-time as Ruby's ``DateTime.iso8601`` would; None if invalid."""
    if not isinstance(value, str):
        return None
    m = _DT_RE.match(value)
    if not m:
        return None
    y, mo, d, hh, mi, ss, frac, tz = m.groups()
    try:
        micro = int((frac or "0")[:6].ljust(6, "0"))
        dt = datetime(int(y), int(mo), int(d), int(hh or 0), int(mi or 0), int(ss or 0), micro)
    except ValueError:
        return None
    offset = timedelta(0)
    if tz and tz not in "Zz":
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        offset = sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
    return (dt - offset).replace(tzinfo=timezone.utc)


def parse_date(value: Any) -> date | None:
    """Parse an ISO 8601 date as ``Date.iso8601`` would; None if invalid."""
    if not isinstance(value, str):
        return None
    m = _DATE_RE.match(value)
    if not m:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


_EPOCH_NAIVE = datetime(1970, 1, 1)


def epoch(value: Any) -> float | None:
    """Seconds since the epoch of an ISO date-time string (None when absent or invalid)."""
    if not value or not isinstance(value, str):
        return None
    try:
        if len(value) == 24 and value[23] == "Z":  # the usual iso8601(3) shape: fast path
            return (datetime.fromisoformat(value[:23]) - _EPOCH_NAIVE).total_seconds()
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        dt = parse_datetime(value)
        return dt.timestamp() if dt else None


def iso(dt: datetime) -> str:
    """Second-precision ISO 8601 with ``Z`` (Rails ``iso8601``)."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_ms(dt: datetime) -> str:
    """Millisecond-precision ISO 8601 with ``Z`` (Rails ``iso8601(3)``)."""
    dt = dt.astimezone(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def new_id() -> str:
    """A new Lago id (UUID4)."""
    return str(uuid.uuid4())


def ruby_to_i(value: str) -> int:
    """Ruby's ``String#to_i``: leading whitespace, sign and digits; 0 otherwise."""
    m = re.match(r"\s*([+-]?\d+)", value.replace("_", ""))
    return int(m.group(1)) if m else 0


_WIDE = DecimalContext(prec=80)


def decimal_string(value: Any) -> str | None:
    """``precise_total_amount_cents`` as the server stores and renders it (Decimal(40,15))."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "0.0"
    text = str(value).strip()
    # Ruby reads ASCII digits only (full-width digits are 0) and 0 for anything else.
    try:
        d = Decimal(text) if text.isascii() else Decimal(0)
    except InvalidOperation:
        d = Decimal(0)
    if not d.is_finite():
        d = Decimal(0)
    if abs(d) >= Decimal(10) ** 25:
        raise internal_error()  # numeric(40, 15) overflows in PostgreSQL
    d = d.quantize(Decimal("1e-15"), context=_WIDE)
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0")
        if text.endswith("."):
            text += "0"
    else:
        text += ".0"
    return "0.0" if text in ("-0.0",) else text


# ---------------------------------------------------------------------------------------------
# Ordering of each list (LAGO_API_BEHAVIOUR.md section 1).

_INF = math.inf


def _desc_ts(value: Any) -> float:
    t = epoch(value)
    return -t if t is not None else -_INF  # Postgres: DESC puts NULLs first


def _asc_ts_nulls_last(value: Any) -> float:
    t = epoch(value)
    return t if t is not None else _INF


def _date_ordinal(value: Any) -> int:
    d = parse_date(value)
    return d.toordinal() if d else 0


def _created_desc(o: JsonObj) -> tuple:
    return (_desc_ts(o.get("created_at")), str(o.get("lago_id") or ""))


def _subscription_key(o: JsonObj) -> tuple:
    t = epoch(o.get("subscription_at"))
    return (
        0 if t is not None else 1,
        -t if t is not None else 0.0,
        _desc_ts(o.get("created_at")),
        str(o.get("lago_id") or ""),
    )


def _invoice_key(o: JsonObj) -> tuple:
    return (-_date_ordinal(o.get("issuing_date")), *_created_desc(o))


def _event_key(o: JsonObj) -> tuple:
    t = epoch(o.get("timestamp"))
    return (-(t or 0.0), str(o.get("transaction_id") or ""), str(o.get("lago_id") or ""))


_COUPON_STATUS_RANK = {"active": 0, "terminated": 1}
_COUPON_EXPIRATION_RANK = {"no_expiration": 0, "time_limit": 1}


def coupon_status(o: JsonObj) -> str:
    """A coupon's status (the API shape has none: terminated when terminated_at is set)."""
    return str(o.get("status") or ("terminated" if o.get("terminated_at") else "active"))


def _coupon_key(o: JsonObj) -> tuple:
    return (
        _COUPON_STATUS_RANK.get(coupon_status(o), 2),
        _COUPON_EXPIRATION_RANK.get(o.get("expiration") or "", 2),
        _asc_ts_nulls_last(o.get("expiration_at")),
        *_created_desc(o),
    )


def _fee_key(o: JsonObj) -> tuple:
    return (_asc_ts_nulls_last(o.get("created_at")), str(o.get("lago_id") or ""))


def _tax_key(o: JsonObj) -> tuple:
    return (str(o.get("name") or ""), *_created_desc(o))


def _created_asc(o: JsonObj) -> tuple:
    """Billing entities: ``created_at ASC`` and no tie-breaker (ties keep insertion order)."""
    return (_asc_ts_nulls_last(o.get("created_at")),)


def _webhook_key(o: JsonObj) -> tuple:
    return (str(o.get("webhook_url") or ""), *_created_desc(o))


def _feature_key(o: JsonObj) -> tuple:
    # The tie-breaker is the feature's id, which the API does not show: the code stands in.
    return (_desc_ts(o.get("created_at")), str(o.get("code") or ""))


def _entitlement_key(o: JsonObj) -> tuple:
    # The server has no ORDER BY here (database order): by plan, then feature code.
    return (str(o.get("plan_code") or ""), str(o.get("code") or ""))


@dataclass(frozen=True)
class ResourceDef:
    """How one resource is stored, keyed, ordered and wrapped."""

    name: str
    singular: str
    order: Callable[[JsonObj], tuple]
    has_updated_at: bool = False


RESOURCE_DEFS: dict[str, ResourceDef] = {
    d.name: d
    for d in (
        ResourceDef("customers", "customer", _created_desc, has_updated_at=True),
        ResourceDef("subscriptions", "subscription", _subscription_key),
        ResourceDef("invoices", "invoice", _invoice_key, has_updated_at=True),
        ResourceDef("billable_metrics", "billable_metric", _created_desc),
        ResourceDef("plans", "plan", _created_desc),
        ResourceDef("events", "event", _event_key),
        ResourceDef("coupons", "coupon", _coupon_key),
        ResourceDef("add_ons", "add_on", _created_desc),
        ResourceDef("fees", "fee", _fee_key),
        ResourceDef("credit_notes", "credit_note", _created_desc, has_updated_at=True),
        ResourceDef("wallets", "wallet", _created_desc),
        ResourceDef("wallet_transactions", "wallet_transaction", _created_desc),
        ResourceDef("taxes", "tax", _tax_key),
        ResourceDef("applied_coupons", "applied_coupon", _created_desc),
        # Cash collection and organisation settings (served by cash.py, organisation.py).
        ResourceDef("payments", "payment", _created_desc),
        ResourceDef("payment_requests", "payment_request", _created_desc),
        ResourceDef("payment_receipts", "payment_receipt", _created_desc),
        ResourceDef("payment_methods", "payment_method", _created_desc),
        ResourceDef("billing_entities", "billing_entity", _created_asc, has_updated_at=True),
        ResourceDef("features", "feature", _feature_key),
        ResourceDef("entitlements", "entitlement", _entitlement_key),
        ResourceDef("webhook_endpoints", "webhook_endpoint", _webhook_key),
    )
}
RESOURCES = tuple(RESOURCE_DEFS)


_ENCODER = json.JSONEncoder(separators=(",", ":"))
_C_ENCODER = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None,
        _ENCODER.default,
        json.encoder.encode_basestring_ascii,
        None,
        ":",
        ",",
        False,
        False,
        True,
    )
    if getattr(json.encoder, "c_make_encoder", None) is not None
    else None
)


def dumps(obj: Any) -> bytes:
    """Compact ASCII JSON (the C encoder without the per-call setup of ``json.dumps``)."""
    if _C_ENCODER is not None:
        return "".join(_C_ENCODER(obj, 0)).encode("ascii")
    return _ENCODER.encode(obj).encode("ascii")


class Row:
    """One stored object, its sort key and its cached JSON."""

    __slots__ = ("key", "obj", "raw", "sk")

    def __init__(self, obj: JsonObj, key: Any, sk: tuple) -> None:
        self.obj = obj
        self.key = key
        self.sk = sk
        self.raw: bytes | None = None

    def json(self) -> bytes:
        """Serialized object, cached until the row changes."""
        raw = self.raw
        if raw is None:
            raw = self.raw = dumps(self.obj)
        return raw


def row_key(resource: str, obj: JsonObj) -> Any:
    """The identity of a stored object: lago_id; events: (external_subscription_id, txid);
    features: code; plan entitlements: (plan_code, code)."""
    if resource == "events":
        return (obj.get("external_subscription_id"), obj.get("transaction_id"))
    if resource == "features":
        return obj.get("code")
    if resource == "entitlements":
        return (obj.get("plan_code"), obj.get("code"))
    return obj.get("lago_id")


class Table:
    """Rows of one resource, sorted lazily in the list endpoint's order."""

    def __init__(self, rdef: ResourceDef) -> None:
        self.rdef = rdef
        self.rows: list[Row] = []
        self.by_key: dict[Any, Row] = {}
        self.dirty = False
        self.version = 0
        self.neg_ts: list[float] = []  # events only: sk[0] of each sorted row, for bisect

    def __len__(self) -> int:
        return len(self.rows)

    def insert(self, obj: JsonObj) -> Row:
        """Add a new object (the caller made sure its key is new)."""
        row = Row(obj, row_key(self.rdef.name, obj), self.rdef.order(obj))
        self.rows.append(row)
        self.by_key.setdefault(row.key, row)
        self._touch()
        return row

    def load(self, objs: Iterable[JsonObj]) -> None:
        """Bulk insert (seeding)."""
        order, rows, by_key = self.rdef.order, self.rows, self.by_key
        name = self.rdef.name
        events = name == "events"
        for obj in objs:
            key = (
                (obj.get("external_subscription_id"), obj.get("transaction_id"))
                if events
                else row_key(name, obj)
            )
            row = Row(obj, key, order(obj))
            # Serialized now, in creation order (cache-friendly): serving is then a join.
            row.raw = dumps(obj)
            rows.append(row)
            by_key.setdefault(key, row)
        self._touch()

    def changed(self, row: Row) -> None:
        """Call after mutating ``row.obj`` in place."""
        row.raw = None
        row.sk = self.rdef.order(row.obj)
        self._touch()

    def remove(self, row: Row) -> None:
        """Take a row out (a deleted object: no list shows it any more)."""
        self.rows.remove(row)
        if self.by_key.get(row.key) is row:
            del self.by_key[row.key]
        self._touch()

    def _touch(self) -> None:
        self.dirty = True
        self.version += 1

    def sorted_rows(self) -> list[Row]:
        """All rows in list order (sorting only when something changed)."""
        if self.dirty:
            self.rows.sort(key=lambda r: r.sk)
            if self.rdef.name == "events":
                self.neg_ts = [r.sk[0] for r in self.rows]
            self.dirty = False
        return self.rows


# ---------------------------------------------------------------------------------------------
# Pagination (LAGO_API_BEHAVIOUR.md section 1).


def page_window(params: dict[str, list[str]], total: int) -> tuple[int, int, JsonObj]:
    """Offset, limit and the ``meta`` object for a list of ``total`` rows.

    Raises:
        ApiError: 500 for ``per_page=0`` when there are rows (division by zero on the server).
    """
    per_page_raw = _first(params, "per_page")
    if per_page_raw is None:
        limit = 100
    elif re.match(r"\d", per_page_raw) and ruby_to_i(per_page_raw) >= 0:
        limit = ruby_to_i(per_page_raw)
    else:
        limit = 25  # Kaminari ignores the value and keeps its default_per_page
    page_raw = _first(params, "page")
    page = max(ruby_to_i(page_raw), 1) if page_raw is not None else 1
    if total == 0:
        meta = {
            "current_page": 0,
            "next_page": None,
            "prev_page": None,
            "total_pages": 0,
            "total_count": 0,
        }
        return 0, 0, meta
    if limit == 0:
        raise internal_error()
    total_pages = -(-total // limit)
    meta = {
        "current_page": page,
        "next_page": page + 1 if page < total_pages else None,
        "prev_page": page - 1 if page > 1 else None,
        "total_pages": total_pages,
        "total_count": total,
    }
    return (page - 1) * limit, limit, meta


def _first(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


# ---------------------------------------------------------------------------------------------
# The store.


def _customer_ext_of(store: Store, resource: str, obj: JsonObj) -> str | None:
    """The external customer id an object belongs to."""
    if "external_customer_id" in obj:
        return obj.get("external_customer_id")
    customer = obj.get("customer")
    if isinstance(customer, dict):
        return customer.get("external_id")
    if resource == "credit_notes":
        inv = store.find_one("invoices", lago_id=obj.get("lago_invoice_id"))  # by key
        if inv is not None:
            return _customer_ext_of(store, "invoices", inv)
    return None


def listed(resource: str, obj: JsonObj) -> bool:
    """Whether the list endpoint shows the object at all (objects.listed: hidden invoices,
    credit notes that are not finalized)."""
    from tests.lago_sandbox.objects import listed as objects_listed

    return bool(objects_listed(resource, obj))


EVENT_STORES = ("postgres", "clickhouse")


class Store:
    """The whole organisation in memory, guarded by one lock.

    ``event_store`` is ``postgres`` (lago-api's default: a duplicate transaction id is a
    422) or ``clickhouse`` (LAGO_API_WRITES.md section 8: duplicates are answered 200 and
    deduplicated on subscription, code, transaction id and timestamp).
    """

    def __init__(self, event_store: str = "postgres") -> None:
        if event_store not in EVENT_STORES:
            raise ValueError(f"event_store must be one of {', '.join(EVENT_STORES)}")
        self.event_store = event_store
        self._ch_rows: dict[tuple, Row] = {}
        self.lock = threading.RLock()
        self.tables: dict[str, Table] = {n: Table(d) for n, d in RESOURCE_DEFS.items()}
        self._events_by_txid: dict[Any, Row] = {}
        self._by_external_id: dict[str, dict[Any, list[Row]]] = {
            "customers": {},
            "subscriptions": {},
        }
        self._max_sequential_id = 0
        self._billing_entities: set[Any] = set()
        self._query_cache: dict[tuple, tuple[int, list[Row]]] = {}
        self._period_events: tuple[tuple[int, float, float], dict[Any, list[JsonObj]]] | None
        self._period_events = None
        self.clock: Callable[[], datetime] = utcnow
        #: A premium licence (the ``premium`` setting): customer timezones are applied.
        self.premium = False

    # -- loading ---------------------------------------------------------------------------

    def load(self, data: dict[str, list[JsonObj]]) -> dict[str, int]:
        """Replace everything with ``data`` (API-shape objects per resource)."""
        with self.lock:
            # A million rows would make the cyclic GC rescan the heap over and over while
            # loading and serving; the data is acyclic (freed by refcounting), so pause the
            # collector during the load and move the loaded objects out of its sight after.
            was_enabled = gc.isenabled()
            gc.disable()
            try:
                self.tables = {n: Table(d) for n, d in RESOURCE_DEFS.items()}
                self._events_by_txid = {}
                self._query_cache = {}
                self._period_events = None
                for name, objs in data.items():
                    if name not in self.tables:
                        raise KeyError(f"unknown resource in seed data: {name}")
                    self.tables[name].load(objs)
                self._ch_rows = {}
                for row in self.tables["events"].rows:
                    self._events_by_txid.setdefault(row.obj.get("transaction_id"), row)
                    self._ch_rows[_ch_key(row.obj)] = row
                for name in self._by_external_id:
                    self._reindex(name)
                self._max_sequential_id = max(
                    [
                        r.obj["sequential_id"]
                        for r in self.tables["customers"].rows
                        if isinstance(r.obj.get("sequential_id"), int)
                    ],
                    default=0,
                )
                self._billing_entities = {
                    r.obj.get("billing_entity_code")
                    for name in ("customers", "subscriptions", "invoices", "wallets")
                    for r in self.tables[name].rows
                } - {None}
                self._billing_entities |= {
                    r.obj.get("code") for r in self.tables["billing_entities"].rows
                }
                for table in self.tables.values():
                    table.sorted_rows()
            finally:
                if was_enabled:
                    gc.enable()
            if sum(len(t) for t in self.tables.values()) >= FREEZE_ROWS:
                gc.freeze()
            return self.counts()

    def counts(self) -> dict[str, int]:
        """Number of stored objects per resource."""
        return {n: len(t) for n, t in self.tables.items()}

    def dump(self) -> dict[str, list[JsonObj]]:
        """Every stored object per resource, in list order."""
        with self.lock:
            return {
                n: [json.loads(r.json()) for r in t.sorted_rows()] for n, t in self.tables.items()
            }

    # -- lookups ---------------------------------------------------------------------------

    def _candidates(self, resource: str, match: dict[str, Any]) -> list[Row]:
        """Rows that may match, in list order (from an index when the match allows it)."""
        table = self.tables[resource]
        if "lago_id" in match and resource != "events":
            row = table.by_key.get(match["lago_id"])
            return [row] if row is not None else []
        if "external_id" in match and resource in self._by_external_id:
            rows = self._by_external_id[resource].get(match["external_id"], [])
            return sorted(rows, key=lambda r: r.sk)
        return table.sorted_rows()

    def find_one(self, resource: str, **match: Any) -> JsonObj | None:
        """First object (in list order) whose fields equal ``match``."""
        with self.lock:
            for row in self._candidates(resource, match):
                obj = row.obj
                if all(obj.get(k) == v for k, v in match.items()):
                    return obj
            return None

    def find_all(self, resource: str, **match: Any) -> list[JsonObj]:
        """Every object (in list order) whose fields equal ``match``."""
        with self.lock:
            return [
                r.obj
                for r in self._candidates(resource, match)
                if all(r.obj.get(k) == v for k, v in match.items())
            ]

    def customer(self, external_id: str) -> JsonObj | None:
        """The customer with this external id."""
        return self.find_one("customers", external_id=external_id)

    def _reindex(self, resource: str) -> None:
        index: dict[Any, list[Row]] = {}
        for row in self.tables[resource].rows:
            index.setdefault(row.obj.get("external_id"), []).append(row)
        self._by_external_id[resource] = index

    def event_by_txid(self, transaction_id: str) -> JsonObj | None:
        """An event with this transaction id (any subscription)."""
        with self.lock:
            row = self._events_by_txid.get(transaction_id)
            return row.obj if row else None

    def get_json(self, resource: str, obj: JsonObj) -> bytes:
        """Serialized form of a stored object (cached)."""
        row = self.tables[resource].by_key.get(row_key(resource, obj))
        if row is not None and row.obj is obj:
            return row.json()
        return dumps(obj)

    # -- lists -----------------------------------------------------------------------------

    def list_rows(
        self,
        resource: str,
        cache_key: tuple,
        predicate: Callable[[JsonObj], bool] | None,
        ts_range: tuple[float | None, float | None] | None = None,
    ) -> tuple[list[Row], int, int]:
        """Rows of a list endpoint as ``(rows, start, stop)``: the selection is
        ``rows[start:stop]``.

        A time window alone is a bisect on the sorted events (nothing copied); any other
        filter materializes the selection, cached until the table changes.
        """
        table = self.tables[resource]
        rows = table.sorted_rows()
        lo, hi = 0, len(rows)
        if ts_range is not None:
            lo_ts, hi_ts = ts_range
            if hi_ts is not None:
                lo = bisect.bisect_left(table.neg_ts, -hi_ts)
            if lo_ts is not None:
                hi = max(lo, bisect.bisect_right(table.neg_ts, -lo_ts))
        if predicate is None:
            return rows, lo, hi
        key = (resource, cache_key)
        hit = self._query_cache.get(key)
        if hit is not None and hit[0] == table.version:
            return hit[1], 0, len(hit[1])
        selected = [r for r in rows[lo:hi] if predicate(r.obj)]
        while len(self._query_cache) >= QUERY_CACHE_SIZE:
            self._query_cache.pop(next(iter(self._query_cache)))
        self._query_cache[key] = (table.version, selected)
        return selected, 0, len(selected)

    def period_events(self, lo: float, hi: float, subscription: Any) -> list[JsonObj]:
        """A subscription's events with ``lo <= timestamp <= hi``, in list order.

        Every subscription's are grouped in one pass over the period, cached until the
        events change: current usage asks once per subscription, and a pass per request
        would make a sync's usage reads cost the period's events times its subscriptions.
        """
        table = self.tables["events"]
        key = (table.version, lo, hi)
        if self._period_events is None or self._period_events[0] != key:
            rows, first, last = self.list_rows("events", (), None, (lo, hi))
            grouped: dict[Any, list[JsonObj]] = {}
            for row in rows[first:last]:
                grouped.setdefault(row.obj.get("external_subscription_id"), []).append(row.obj)
            self._period_events = (key, grouped)
        return list(self._period_events[1].get(subscription, ()))

    # -- writes: admin upsert --------------------------------------------------------------

    def upsert(
        self, resource: str, items: list[JsonObj], complete: Callable[[str, JsonObj], JsonObj]
    ) -> list[JsonObj]:
        """Merge into existing objects (by key) or complete and insert new ones."""
        if resource not in self.tables:
            raise not_found("resource")
        table = self.tables[resource]
        out = []
        with self.lock:
            now = self.clock()
            for fields in items:
                if not isinstance(fields, dict):
                    raise unprocessable({resource: ["value_is_invalid"]})
                key = _upsert_key(resource, fields)
                row = table.by_key.get(key) if key is not None else None
                if row is not None:
                    row.obj.update(fields)
                    if table.rdef.has_updated_at and "updated_at" not in fields:
                        row.obj["updated_at"] = iso(now)
                    table.changed(row)
                    if "external_id" in fields and resource in self._by_external_id:
                        self._reindex(resource)
                    out.append(row.obj)
                    continue
                obj = complete(resource, fields)
                self._insert(resource, obj)
                out.append(obj)
        return out

    def _insert(self, resource: str, obj: JsonObj) -> None:
        row = self.tables[resource].insert(obj)
        if resource == "events":
            self._events_by_txid.setdefault(obj.get("transaction_id"), row)
        if resource in self._by_external_id:
            self._by_external_id[resource].setdefault(obj.get("external_id"), []).append(row)
        if resource == "customers" and isinstance(obj.get("sequential_id"), int):
            self._max_sequential_id = max(self._max_sequential_id, obj["sequential_id"])

    def changed(self, resource: str, obj: JsonObj) -> None:
        """Record an in-place change of a stored object."""
        table = self.tables[resource]
        row = table.by_key.get(row_key(resource, obj))
        if row is not None and row.obj is obj:
            table.changed(row)
        else:  # pragma: no cover - defensive: find by identity
            for r in table.rows:
                if r.obj is obj:
                    table.changed(r)
                    return

    # -- writes: events --------------------------------------------------------------------

    def create_events(self, raw_events: list[Any], *, batch: bool) -> list[JsonObj]:
        """Validate and store events atomically (both phases); raise ApiError on any problem."""
        with self.lock:
            now = self.clock()
            built: list[JsonObj] = []
            errors: dict[str, Any] = {}
            for index, raw in enumerate(raw_events):
                event, details = _build_event(raw if isinstance(raw, dict) else {}, now)
                if details:
                    errors[str(index)] = details
                built.append(event)
            if errors:
                raise unprocessable(errors if batch else errors["0"])
            if self.event_store == "clickhouse":
                return self._create_clickhouse_events(built, now)
            table = self.tables["events"]
            seen: set[str] = set()
            for index, event in enumerate(built):
                txid = event["transaction_id"]
                sub = event["external_subscription_id"]
                dup = txid in seen or (sub is not None and (sub, txid) in table.by_key)
                seen.add(txid)
                if dup:
                    errors[str(index)] = {"transaction_id": ["value_already_exist"]}
            if errors:
                raise unprocessable(errors if batch else errors["0"])
            for event in built:
                self._insert("events", event)
            return built

    def _create_clickhouse_events(self, built: list[JsonObj], now: datetime) -> list[JsonObj]:
        """ClickHouse store: no duplicate check; a repeated (subscription, code,
        transaction id, timestamp) replaces the stored event, as the deduplicating
        billing queries see it; any other difference is a second event."""
        table = self.tables["events"]
        answers = []
        for event in built:
            answers.append({**event, "lago_id": None, "created_at": None, "lago_customer_id": None})
            stored = dict(event)
            stored["lago_id"] = "-".join(
                [
                    "org",
                    str(event["external_subscription_id"] or ""),
                    str(event["transaction_id"]),
                    str(int(now.timestamp())),
                ]
            )
            key = _ch_key(stored)
            row = self._ch_rows.get(key)
            if row is not None:
                row.obj.clear()
                row.obj.update(stored)
                table.changed(row)
                continue
            self._insert("events", stored)
            self._ch_rows[key] = table.rows[-1]
        return answers

    # -- writes: customers -----------------------------------------------------------------

    def upsert_customer(
        self, payload: JsonObj, complete: Callable[[str, JsonObj], JsonObj]
    ) -> JsonObj:
        """``POST /customers``: create or update by external_id."""
        with self.lock:
            external_id = payload.get("external_id")
            if _blank(external_id):
                raise unprocessable({"external_id": ["value_is_mandatory"]})
            external_id = str(external_id)
            existing = self.customer(external_id)
            errors = _validate_customer(payload)
            if (
                existing is not None
                and "currency" in payload
                and "currency" not in errors
                and existing.get("currency")
                and payload.get("currency") != existing.get("currency")
                and not self._customer_editable(existing)
            ):
                errors["currency"] = ["currencies_does_not_match"]
            if errors:
                raise unprocessable(errors)
            now = self.clock()
            fields = self._customer_fields(payload, existing, now)
            if "billing_entity_code" in fields:
                self._check_billing_entity(fields["billing_entity_code"])
            if existing is None:
                fields["external_id"] = external_id
                fields["sequential_id"] = self._next_sequential_id()
                obj = complete("customers", fields)
                self._insert("customers", obj)
                return obj
            before = json.dumps(existing, sort_keys=True)
            existing.update(fields)
            if json.dumps(existing, sort_keys=True) != before:
                existing["updated_at"] = iso(now)
                self.changed("customers", existing)
            return existing

    def _next_sequential_id(self) -> int:
        return self._max_sequential_id + 1

    def _new_customer(
        self, fields: JsonObj, complete: Callable[[str, JsonObj], JsonObj]
    ) -> JsonObj:
        fields = {"sequential_id": self._next_sequential_id(), **fields}
        obj = complete("customers", fields)
        self._insert("customers", obj)
        return obj

    def _check_billing_entity(self, code: Any) -> None:
        if code is None:
            return
        known = self._billing_entities
        if known and code not in known:
            raise not_found("billing_entity")

    def _customer_editable(self, customer: JsonObj) -> bool:
        ext = customer.get("external_id")
        for name in ("subscriptions", "invoices", "wallets", "applied_coupons"):
            for row in self.tables[name].rows:
                if _customer_ext_of(self, name, row.obj) == ext:
                    return False
        return True

    def _customer_fields(
        self, payload: JsonObj, existing: JsonObj | None, now: datetime
    ) -> JsonObj:
        fields: JsonObj = {}
        for key in _CUSTOMER_SCALARS:
            if key in payload:
                value = payload[key]
                if key == "country" and isinstance(value, str):
                    value = value.upper()
                fields[key] = value
        if self.premium and "timezone" in payload:
            fields["timezone"] = payload["timezone"]
            fields["applicable_timezone"] = payload["timezone"] or "UTC"
        if isinstance(payload.get("billing_configuration"), dict):
            merged = dict((existing or {}).get("billing_configuration") or {})
            for k, v in payload["billing_configuration"].items():
                if k in _BILLING_CONFIGURATION_KEYS:
                    merged[k] = v
            fields["billing_configuration"] = merged
        if "shipping_address" in payload:
            ship = payload["shipping_address"]
            merged = dict((existing or {}).get("shipping_address") or {})
            if isinstance(ship, dict):
                for k in _ADDRESS_KEYS:
                    if k in ship:
                        merged[k] = ship[k].upper() if k == "country" and ship[k] else ship[k]
            fields["shipping_address"] = merged
        if "tax_codes" in payload and isinstance(payload["tax_codes"], list):
            taxes = []
            for code in payload["tax_codes"]:
                tax = self.find_one("taxes", code=code)
                if tax is None:
                    raise not_found("tax")
                taxes.append(dict(tax))
            fields["taxes"] = taxes
        if "metadata" in payload and isinstance(payload["metadata"], list):
            fields["metadata"] = _merge_metadata(
                (existing or {}).get("metadata") or [], payload["metadata"], now
            )
        return fields

    # -- writes: subscriptions -------------------------------------------------------------

    def create_subscription(
        self,
        payload: JsonObj,
        complete: Callable[[str, JsonObj], JsonObj],
        override: Callable[[JsonObj], None] | None = None,
    ) -> JsonObj:
        """``POST /subscriptions``: create, re-POST, upgrade or downgrade.

        ``override`` applies ``plan_overrides`` to a subscription this call creates (None:
        no licence, so ``plan_overrides`` is refused with 403).
        """
        with self.lock:
            now = self.clock()
            plan_code = payload.get("plan_code")
            plan = self.find_one("plans", code=plan_code) if not _blank(plan_code) else None
            if plan is None:
                raise not_found("plan")
            ext_customer = payload.get("external_customer_id")
            if _blank(ext_customer):
                raise unprocessable({"external_customer_id": ["value_is_mandatory"]})
            if payload.get("plan_overrides") and override is None:
                raise forbidden("feature_unavailable")
            if not payload.get("plan_overrides"):
                override = None
            ext_customer = str(ext_customer)
            customer = self.customer(ext_customer)
            if customer is None:
                customer = self._new_customer(
                    {"external_id": ext_customer, "currency": plan.get("amount_currency")},
                    complete,
                )
            elif not customer.get("currency"):
                customer["currency"] = plan.get("amount_currency")
                customer["updated_at"] = iso(now)
                self.changed("customers", customer)
            errors: JsonObj = {}
            external_id = payload.get("external_id")
            if _blank(external_id):
                errors["external_id"] = ["value_is_mandatory"]
            billing_time = payload.get("billing_time", "calendar")
            if billing_time not in ("calendar", "anniversary"):
                errors["billing_time"] = ["value_is_invalid"]
            sub_at = now
            if payload.get("subscription_at") is not None:
                parsed = parse_datetime(payload.get("subscription_at"))
                if parsed is None:
                    errors["subscription_at"] = ["invalid_date"]
                else:
                    sub_at = parsed
            ending_raw = payload.get("ending_at")
            ending_at = parse_datetime(ending_raw) if ending_raw is not None else None
            if ending_raw is not None and ending_at is None:
                errors["ending_at"] = ["invalid_date"]
            if errors:
                raise unprocessable(errors)
            external_id = str(external_id)
            if customer.get("currency") and customer.get("currency") != plan.get("amount_currency"):
                raise unprocessable({"currency": ["currencies_does_not_match"]})
            for other in self.find_all("subscriptions", external_id=external_id):
                if (
                    other.get("status") == "active"
                    and other.get("external_customer_id") != ext_customer
                ):
                    raise unprocessable({"external_id": ["value_already_exist"]})
            mine = [
                s
                for s in self.find_all(
                    "subscriptions", external_id=external_id, external_customer_id=ext_customer
                )
                if s.get("status") in ("active", "pending", "incomplete")
            ]
            if any(s.get("status") == "incomplete" for s in mine):
                raise unprocessable({"subscription": ["subscription_incomplete"]})
            current = next((s for s in mine if s.get("status") == "active"), None)
            if current is None:
                current = next((s for s in mine if s.get("status") == "pending"), None)
            if current is not None:
                if current.get("plan_code") == plan["code"]:
                    return current
                return self._change_plan(
                    current=current,
                    plan=plan,
                    customer=customer,
                    payload=payload,
                    now=now,
                    complete=complete,
                    override=override,
                )
            status = "pending" if sub_at.date() > now.date() else "active"
            fields = {
                "external_id": external_id,
                "external_customer_id": ext_customer,
                "lago_customer_id": customer.get("lago_id"),
                "plan_code": plan["code"],
                "plan_amount_cents": plan.get("amount_cents", 0),
                "plan_amount_currency": plan.get("amount_currency"),
                "name": payload.get("name"),
                "billing_time": billing_time,
                "status": status,
                "subscription_at": iso(sub_at),
                "started_at": iso_ms(min(sub_at, now)) if status == "active" else None,
                "ending_at": iso(ending_at) if ending_at else None,
                "created_at": iso(now),
            }
            if "billing_entity_code" in customer:
                fields["billing_entity_code"] = customer["billing_entity_code"]
            obj = complete("subscriptions", fields)
            self._insert("subscriptions", obj)
            if override is not None:
                override(obj)
            return obj

    def _change_plan(
        self,
        *,
        current: JsonObj,
        plan: JsonObj,
        customer: JsonObj,
        payload: JsonObj,
        now: datetime,
        complete: Callable[[str, JsonObj], JsonObj],
        override: Callable[[JsonObj], None] | None,
    ) -> JsonObj:
        old_plan = self.find_one("plans", code=current.get("plan_code")) or {}
        base = {
            "external_id": current["external_id"],
            "external_customer_id": current["external_customer_id"],
            "lago_customer_id": current.get("lago_customer_id") or customer.get("lago_id"),
            "plan_code": plan["code"],
            "plan_amount_cents": plan.get("amount_cents", 0),
            "plan_amount_currency": plan.get("amount_currency"),
            "name": payload.get("name", current.get("name")),
            "billing_time": current.get("billing_time", "calendar"),
            "previous_plan_code": current.get("plan_code"),
            "created_at": iso(now),
        }
        if "billing_entity_code" in current:
            base["billing_entity_code"] = current["billing_entity_code"]
        if current.get("status") == "pending" or _yearly(plan) >= _yearly(old_plan):
            # Upgrade (or plan change of a not-yet-started subscription): immediate.
            was_pending = current.get("status") == "pending"
            current["status"] = "canceled" if was_pending else "terminated"
            current["canceled_at" if was_pending else "terminated_at"] = iso(now)
            current["next_plan_code"] = plan["code"]
            self.changed("subscriptions", current)
            self._cancel_next(current, now)
            fields = {
                **base,
                "status": "active",
                "subscription_at": current.get("subscription_at") or iso(now),
                "started_at": iso_ms(now),
            }
            obj = complete("subscriptions", fields)
            self._insert("subscriptions", obj)
            if override is not None:
                override(obj)
            return obj
        # Downgrade: applied at the end of the current period.
        end = parse_datetime(current.get("current_billing_period_ending_at") or "")
        if end is None:
            end = _end_of_month(now)
        switch = (end + timedelta(seconds=1)).date()
        self._cancel_next(current, now)
        fields = {
            **base,
            "status": "pending",
            "subscription_at": current.get("subscription_at") or iso(now),
            "started_at": None,
        }
        nxt = complete("subscriptions", fields)
        self._insert("subscriptions", nxt)
        if override is not None:
            override(nxt)
        current["next_plan_code"] = plan["code"]
        current["downgrade_plan_date"] = switch.isoformat()
        self.changed("subscriptions", current)
        return current

    def _cancel_next(self, current: JsonObj, now: datetime) -> None:
        for other in self.find_all(
            "subscriptions",
            external_id=current["external_id"],
            external_customer_id=current["external_customer_id"],
            status="pending",
        ):
            if other is not current and other.get("previous_plan_code") == current.get("plan_code"):
                other["status"] = "canceled"
                other["canceled_at"] = iso(now)
                self.changed("subscriptions", other)

    def terminate_subscription(self, external_id: str, status: str) -> JsonObj:
        """``DELETE /subscriptions/{external_id}``: terminate (or cancel a pending one)."""
        with self.lock:
            sub = self.find_one("subscriptions", external_id=external_id, status=status)
            if sub is None or status not in ("active", "pending"):
                raise not_found("subscription")
            self.terminate_subscription_obj(sub, self.clock())
            return sub

    # -- writes: deletions ------------------------------------------------------------------

    def _discard(self, resource: str, obj: JsonObj) -> None:
        """Remove a deleted object from its table (lists, lookups and the dump)."""
        table = self.tables[resource]
        row = next(r for r in table.rows if r.obj is obj)
        table.remove(row)
        if resource in self._by_external_id:
            self._reindex(resource)

    def _terminate_subscriptions(self, now: datetime, **match: Any) -> None:
        """Terminate the active and cancel the pending subscriptions matching ``match``."""
        for sub in self.find_all("subscriptions", **match):
            if sub.get("status") in ("active", "pending"):
                self.terminate_subscription_obj(sub, now)

    def terminate_subscription_obj(self, sub: JsonObj, now: datetime) -> None:
        """Terminate an active subscription, or cancel a pending one."""
        if sub["status"] == "pending":
            sub["status"] = "canceled"
            sub["canceled_at"] = iso(now)
        else:
            sub["status"] = "terminated"
            sub["terminated_at"] = iso(now)
            self._cancel_next(sub, now)
        self.changed("subscriptions", sub)

    def _terminate_applied_coupons(self, now: datetime, **match: Any) -> None:
        for applied in self.find_all("applied_coupons", **match):
            if applied.get("status") == "active":
                applied["status"] = "terminated"
                applied["terminated_at"] = iso(now)
                self.changed("applied_coupons", applied)

    def delete_customer(self, external_id: str) -> JsonObj:
        """``DELETE /customers/{external_id}``: soft delete, then terminate its relations.

        The server terminates relations in a job right after the response; here at once:
        active subscriptions terminated, pending ones canceled, active wallets and applied
        coupons terminated. Invoices and credit notes stay.
        """
        with self.lock:
            customer = self.customer(external_id)
            if customer is None:
                raise not_found("customer")
            now = self.clock()
            self._terminate_subscriptions(now, external_customer_id=external_id)
            for wallet in self.find_all("wallets", external_customer_id=external_id):
                if wallet.get("status") == "active":
                    wallet["status"] = "terminated"
                    wallet["terminated_at"] = iso_ms(now)
                    self.changed("wallets", wallet)
            self._terminate_applied_coupons(now, external_customer_id=external_id)
            self._discard("customers", customer)
            return customer

    def delete_plan(self, code: str) -> JsonObj:
        """``DELETE /plans/{code}``: the plan leaves the list; its subscriptions end.

        The server answers with the plan marked ``pending_deletion`` and deletes it in a
        job (terminating its subscriptions); here the job's work is done at once.
        """
        with self.lock:
            plan = self.find_one("plans", code=code)
            if plan is None:
                raise not_found("plan")
            self._terminate_subscriptions(self.clock(), plan_code=code)
            self._discard("plans", plan)
            return {**plan, "pending_deletion": True}

    def delete_coupon(self, code: str) -> JsonObj:
        """``DELETE /coupons/{code}``: the coupon leaves the list; its applications end."""
        with self.lock:
            coupon = self.find_one("coupons", code=code)
            if coupon is None:
                raise not_found("coupon")
            now = self.clock()
            self._terminate_applied_coupons(now, coupon_code=code)
            for applied in self.find_all("applied_coupons", coupon_code=code):
                applied["coupon_deleted_at"] = iso(now)
                self.changed("applied_coupons", applied)
            self._discard("coupons", coupon)
            return coupon

    def delete_add_on(self, code: str) -> JsonObj:
        """``DELETE /add_ons/{code}``: the add-on leaves the list."""
        with self.lock:
            add_on = self.find_one("add_ons", code=code)
            if add_on is None:
                raise not_found("add_on")
            self._discard("add_ons", add_on)
            return add_on

    # -- writes: subscription update, applied coupons, one-off invoices ----------------------

    def update_subscription(
        self,
        external_id: str,
        status: str | None,
        payload: JsonObj,
        override: Callable[[JsonObj], None] | None = None,
    ) -> JsonObj:
        """``PUT /subscriptions/{external_id}`` (LAGO_API_WRITES.md section 1).

        ``override`` applies ``plan_overrides`` (None: no licence, refused with 403).
        """
        with self.lock:
            rows = self.find_all("subscriptions", external_id=external_id)
            if len(rows) > 1:
                wanted = status if status in ("pending", "incomplete") else "active"
                rows = [s for s in rows if s.get("status") == wanted]
            if not rows:
                raise not_found("subscription")
            sub = max(rows, key=lambda s: epoch(s.get("subscription_at")) or 0.0)
            if sub.get("status") == "incomplete":
                raise not_allowed("subscription_incomplete")
            if payload.get("plan_overrides") and override is None:
                raise forbidden("feature_unavailable")
            now = self.clock()
            errors: JsonObj = {}
            sub_at = None
            if "subscription_at" in payload:
                sub_at = parse_datetime(payload["subscription_at"])
                if sub_at is None:
                    errors["subscription_at"] = ["invalid_date"]
            ending_at = None
            if payload.get("ending_at") is not None:
                ending_at = parse_datetime(payload["ending_at"])
                start = sub_at or parse_datetime(sub.get("subscription_at") or "")
                if (
                    ending_at is None
                    or ending_at.date() <= now.date()
                    or (start is not None and ending_at <= start)
                ):
                    errors["ending_at"] = ["invalid_date"]
            if errors:
                raise unprocessable(errors)
            if "name" in payload:
                sub["name"] = payload["name"]
            if "ending_at" in payload:
                sub["ending_at"] = iso(ending_at) if ending_at else None
            if (
                sub_at is not None
                and sub.get("status") == "pending"
                and not sub.get("previous_plan_code")
            ):
                sub["subscription_at"] = iso(sub_at)
                if sub_at.date() <= now.date():
                    sub["status"] = "active"
                    sub["started_at"] = iso_ms(sub_at)
            if override is not None and payload.get("plan_overrides"):
                override(sub)
            self.changed("subscriptions", sub)
            return sub

    def apply_coupon(
        self, payload: JsonObj, complete: Callable[[str, JsonObj], JsonObj]
    ) -> JsonObj:
        """``POST /applied_coupons`` (LAGO_API_WRITES.md section 6)."""
        with self.lock:
            ext = payload.get("external_customer_id")
            customer = self.customer(str(ext)) if not _blank(ext) else None
            if customer is None:
                raise not_found("customer")
            code = payload.get("coupon_code")
            coupon = self.find_one("coupons", code=code) if not _blank(code) else None
            if coupon is None or coupon_status(coupon) != "active":
                raise not_found("coupon")
            ext = customer["external_id"]
            mine = self.find_all("applied_coupons", external_customer_id=ext)
            if coupon.get("limited_plans") or coupon.get("limited_billable_metrics"):
                limits = set(coupon.get("plan_codes") or []) | set(
                    coupon.get("billable_metric_codes") or []
                )
                for applied in mine:
                    other = self.find_one("coupons", code=applied.get("coupon_code")) or {}
                    taken = set(other.get("plan_codes") or []) | set(
                        other.get("billable_metric_codes") or []
                    )
                    if applied.get("status") == "active" and limits & taken:
                        raise not_allowed("plan_overlapping")
            if not coupon.get("reusable", True) and any(
                a.get("coupon_code") == coupon["code"] for a in mine
            ):
                raise unprocessable({"coupon": ["coupon_is_not_reusable"]})
            frequency = payload.get("frequency") or coupon.get("frequency") or "once"
            duration = payload.get("frequency_duration", coupon.get("frequency_duration"))
            if frequency == "recurring" and not isinstance(duration, int):
                raise unprocessable(
                    {"frequency_duration": ["value_is_mandatory", "is not a number"]}
                )
            fixed = coupon.get("coupon_type") == "fixed_amount"
            currency = payload.get("amount_currency") or coupon.get("amount_currency")
            if fixed and currency:
                if not customer.get("currency") and self._customer_editable(customer):
                    customer["currency"] = currency
                    self.changed("customers", customer)
                elif customer.get("currency") != currency:
                    raise unprocessable({"currency": ["currencies_does_not_match"]})
            amount = payload.get("amount_cents", coupon.get("amount_cents")) if fixed else None
            fields = {
                "lago_coupon_id": coupon["lago_id"],
                "coupon_code": coupon["code"],
                "coupon_name": coupon.get("name"),
                "coupon_status": "active",
                "lago_customer_id": customer["lago_id"],
                "external_customer_id": ext,
                "status": "active",
                "amount_cents": amount,
                "amount_cents_remaining": amount,
                "amount_currency": currency if fixed else None,
                "percentage_rate": None
                if fixed
                else str(payload.get("percentage_rate") or coupon.get("percentage_rate")),
                "frequency": frequency,
                "frequency_duration": duration if frequency == "recurring" else None,
                "frequency_duration_remaining": duration if frequency == "recurring" else None,
                "expiration_at": coupon.get("expiration_at"),
                "created_at": iso(self.clock()),
            }
            obj = complete("applied_coupons", fields)
            self._insert("applied_coupons", obj)
            return obj

    def create_one_off_invoice(
        self, payload: JsonObj, complete: Callable[[str, JsonObj], JsonObj]
    ) -> JsonObj:
        """``POST /invoices`` (LAGO_API_WRITES.md section 7): created finalized, no idempotency."""
        with self.lock:
            ext = payload.get("external_customer_id")
            customer = self.customer(str(ext)) if not _blank(ext) else None
            if customer is None:
                raise not_found("customer")
            fees_in = payload.get("fees")
            if not isinstance(fees_in, list) or not fees_in:
                raise not_found("fees")
            add_ons = []
            for fee in fees_in:
                code = fee.get("add_on_code") if isinstance(fee, dict) else None
                add_on = self.find_one("add_ons", code=code) if not _blank(code) else None
                if add_on is None:
                    raise not_found("add_on")
                add_ons.append(add_on)
                lo, hi = fee.get("from_datetime"), fee.get("to_datetime")
                if lo is not None or hi is not None:
                    lo_dt, hi_dt = parse_datetime(lo), parse_datetime(hi)
                    if lo_dt is None or hi_dt is None or lo_dt > hi_dt:
                        raise unprocessable({"boundaries": ["values_are_invalid"]})
            currency = (
                payload.get("currency")
                or customer.get("currency")
                or add_ons[0].get("amount_currency")
            )
            if customer.get("currency") != currency:
                if not customer.get("currency") and self._customer_editable(customer):
                    customer["currency"] = currency
                    self.changed("customers", customer)
                else:
                    raise unprocessable({"currency": ["currencies_does_not_match"]})
            now = self.clock()
            invoice_id = new_id()
            number = len(self.tables["invoices"]) + 1
            fees = []
            total = 0
            for fee, add_on in zip(fees_in, add_ons, strict=True):
                units = Decimal(str(fee.get("units", 1) or 0))
                unit_cents = fee.get("unit_amount_cents", add_on.get("amount_cents") or 0)
                amount = int(Decimal(str(unit_cents)) * units)
                total += amount
                fees.append(
                    complete(
                        "fees",
                        {
                            "lago_invoice_id": invoice_id,
                            "lago_customer_id": customer["lago_id"],
                            "external_customer_id": customer["external_id"],
                            "amount_cents": amount,
                            "amount_currency": currency,
                            "units": decimal_string(units) or "1.0",
                            "description": fee.get("description", add_on.get("description")),
                            "payment_status": "succeeded" if total == 0 else "pending",
                            "item": {
                                "type": "add_on",
                                "code": add_on["code"],
                                "name": add_on.get("name"),
                                "invoice_display_name": fee.get("invoice_display_name")
                                or add_on.get("invoice_display_name")
                                or add_on.get("name"),
                                "lago_item_id": add_on["lago_id"],
                                "item_type": "AddOn",
                            },
                        },
                    )
                )
            fields: JsonObj = {
                "lago_id": invoice_id,
                "sequential_id": number,
                "number": f"ONE-OFF-{number:05d}",
                "invoice_type": "one_off",
                "status": "finalized",
                "payment_status": "succeeded" if total == 0 else "pending",
                "currency": currency,
                "fees_amount_cents": total,
                "created_at": iso(now),
                "updated_at": iso(now),
                "issuing_date": now.date().isoformat(),
                "payment_due_date": now.date().isoformat(),
                "customer": dict(customer),
                "metadata": [],
            }
            invoice = complete("invoices", fields)
            self._insert("invoices", invoice)
            for fee in fees:
                self._insert("fees", fee)
            return invoice

    def update_invoice(self, lago_id: str, payload: JsonObj) -> JsonObj:
        """``PUT /invoices/{lago_id}``: ``payment_status`` and ``metadata`` (by ``id``)."""
        with self.lock:
            invoice = self.find_one("invoices", lago_id=lago_id)
            if invoice is None or not listed("invoices", invoice):
                raise not_found("invoice")
            now = self.clock()
            status = payload.get("payment_status")
            if status is not None:
                if status not in ("pending", "succeeded", "failed"):
                    raise unprocessable({"payment_status": ["value_is_invalid"]})
                invoice["payment_status"] = status
            given = payload.get("metadata")
            if isinstance(given, list):
                current = {m.get("lago_id"): m for m in invoice.get("metadata") or []}
                kept = []
                for item in given:
                    if not isinstance(item, dict):
                        continue
                    old = current.get(item.get("id"))
                    kept.append(
                        {
                            "lago_id": old["lago_id"] if old else new_id(),
                            "key": str(item.get("key", old["key"] if old else "")),
                            "value": str(item.get("value", old["value"] if old else "")),
                            "created_at": old["created_at"] if old else iso(now),
                        }
                    )
                invoice["metadata"] = kept
            invoice["updated_at"] = iso(now)
            self.changed("invoices", invoice)
            return invoice


# ---------------------------------------------------------------------------------------------
# Write helpers.

_NUMERIC_RE = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value in ([], {})


def _scalar_str(value: Any) -> str | None:
    """A permitted scalar as Rails would store it in a string column; None when not permitted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    return None


def _event_timestamp(value: Any, now: datetime) -> tuple[datetime | None, float | None]:
    """The event time, or (None, None) when the value is invalid."""
    if value is None:
        return now, now.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None, None
    text = str(value)
    if not _NUMERIC_RE.match(text):
        return None, None
    try:
        seconds = Decimal(text.strip())
        dt = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(
            seconds=int(seconds), microseconds=int((seconds % 1) * 1_000_000)
        )
    except (InvalidOperation, OverflowError, ValueError):
        return None, None
    return dt, float(seconds)


def _ch_key(event: JsonObj) -> tuple:
    """The ClickHouse deduplication key of an event."""
    return (
        event.get("external_subscription_id"),
        event.get("code"),
        event.get("transaction_id"),
        event.get("timestamp"),
    )


def _build_event(raw: JsonObj, now: datetime) -> tuple[JsonObj, JsonObj]:
    """The stored event for an input, and its phase-1 validation errors."""
    errors: JsonObj = {}
    txid = _scalar_str(raw.get("transaction_id"))
    code = _scalar_str(raw.get("code"))
    if txid is None or not txid.strip():
        errors["transaction_id"] = ["value_is_mandatory"]
    if code is None or not code.strip():
        errors["code"] = ["value_is_mandatory"]
    ts, _ = _event_timestamp(raw.get("timestamp"), now)
    if ts is None:
        errors["timestamp"] = ["invalid_format"]
    sub = _scalar_str(raw.get("external_subscription_id"))
    props = raw.get("properties")
    event = {
        "lago_id": new_id(),
        "transaction_id": txid,
        "lago_customer_id": None,
        "code": code,
        "timestamp": iso_ms(ts) if ts else None,
        "precise_total_amount_cents": decimal_string(raw.get("precise_total_amount_cents")),
        "properties": props if isinstance(props, dict) else {},
        "lago_subscription_id": None,
        "external_subscription_id": sub,
        "created_at": iso(now),
    }
    return event, errors


_CUSTOMER_SCALARS = _words(
    "name firstname lastname customer_type country address_line1 address_line2 state zipcode "
    "city email url phone logo_url legal_name legal_number tax_identification_number "
    "net_payment_term external_salesforce_id finalize_zero_amount_invoice currency "
    "billing_entity_code"
)
_BILLING_CONFIGURATION_KEYS = {
    "invoice_grace_period",
    "payment_provider",
    "payment_provider_code",
    "provider_customer_id",
    "sync",
    "sync_with_provider",
    "document_locale",
    "provider_payment_methods",
}
_ADDRESS_KEYS = ("address_line1", "address_line2", "city", "zipcode", "state", "country")
_EMAIL_RE = re.compile(
    r"^[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$"
)


def _validate_customer(payload: JsonObj) -> JsonObj:
    errors: JsonObj = {}
    currency = payload.get("currency")
    if currency is not None and currency not in CURRENCIES:
        errors["currency"] = ["value_is_invalid"]
    country = payload.get("country")
    if country is not None and country != "" and str(country).upper() not in COUNTRIES:
        errors["country"] = ["not_a_valid_country_code"]
    email = payload.get("email")
    if email not in (None, "") and not all(
        _EMAIL_RE.match(part.strip()) for part in str(email).split(",")
    ):
        errors["email"] = ["invalid_email_format"]
    name = payload.get("name")
    if isinstance(name, str) and len(name) > 255:
        errors["name"] = ["value_is_too_long"]
    term = payload.get("net_payment_term")
    if term is not None and (
        isinstance(term, bool) or not isinstance(term, (int, float)) or term < 0
    ):
        errors["net_payment_term"] = ["value_is_out_of_range"]
    fzai = payload.get("finalize_zero_amount_invoice")
    if "finalize_zero_amount_invoice" in payload and fzai not in ("inherit", "skip", "finalize"):
        errors["finalize_zero_amount_invoice"] = ["invalid_value"]
    metadata = payload.get("metadata")
    if isinstance(metadata, list) and len(metadata) > CUSTOMER_METADATA_MAX:
        errors["metadata"] = ["invalid_count"]
    return errors


def _merge_metadata(current: list[JsonObj], given: list[Any], now: datetime) -> list[JsonObj]:
    """The metadata set after an update: given entries replace the set (matched by id)."""
    by_id = {m.get("lago_id"): m for m in current}
    out = []
    for item in given:
        if not isinstance(item, dict):
            continue
        old = by_id.get(item.get("id"))
        entry = {
            "lago_id": old["lago_id"] if old else new_id(),
            "key": str(item.get("key", old.get("key") if old else "")),
            "value": str(item.get("value", old.get("value") if old else "")),
            "display_in_invoice": bool(
                item.get("display_in_invoice", old.get("display_in_invoice") if old else False)
            ),
            "created_at": old["created_at"] if old else iso(now),
        }
        out.append(entry)
    return out


def _yearly(plan: JsonObj) -> float:
    amount = plan.get("amount_cents") or 0
    return float(amount) * INTERVAL_PER_YEAR.get(str(plan.get("interval")), 12)


def _end_of_month(now: datetime) -> datetime:
    first_next = (now.replace(day=28) + timedelta(days=4)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    return first_next - timedelta(seconds=1)


def _upsert_key(resource: str, fields: JsonObj) -> Any:
    if resource == "events":
        if "transaction_id" not in fields:
            return None
        return (fields.get("external_subscription_id"), fields.get("transaction_id"))
    if resource in ("features", "entitlements"):
        return row_key(resource, fields)
    return fields.get("lago_id")


# ---------------------------------------------------------------------------------------------
# List filters and default scopes (LAGO_API_BEHAVIOUR.md sections 1-3).

Predicate = Callable[[JsonObj], bool]


@dataclass
class ListQuery:
    """What a list request selects: a cache key, a row predicate and an events time window."""

    cache_key: tuple
    predicate: Predicate | None
    ts_range: tuple[float | None, float | None] | None = None


def _all(preds: list[Predicate]) -> Predicate | None:
    if not preds:
        return None
    if len(preds) == 1:
        return preds[0]
    return lambda o: all(p(o) for p in preds)


def _has_pair(obj: JsonObj, key: str, value: str) -> bool:
    return any(
        isinstance(m, dict) and str(m.get("key")) == key and str(m.get("value")) == value
        for m in obj.get("metadata") or []
    )


def _has_metadata(pair: tuple[str, str | None]) -> Predicate:
    return lambda o: any((m.get("key"), m.get("value")) == pair for m in o.get("metadata") or [])


def _eq(field: str, value: Any) -> Predicate:
    return lambda o: o.get(field) == value


def _time_filters(params: dict[str, list[str]], names: Iterable[str]) -> dict[str, float]:
    """Parsed ``*_from``/``*_to`` date-time filters; 422 ``invalid_date`` for a bad value."""
    out: dict[str, float] = {}
    errors: JsonObj = {}
    for name in names:
        value = _first(params, name)
        if value is None or value == "":
            continue
        dt = parse_datetime(value)
        if dt is None:
            errors[name] = ["invalid_date"]
        else:
            out[name] = dt.timestamp()
    if errors:
        raise unprocessable(errors)
    return out


def _date_filters(params: dict[str, list[str]], field: str) -> list[Predicate]:
    """Inclusive ``issuing_date_from/to``; an invalid value is silently ignored."""
    preds: list[Predicate] = []
    lo = parse_date(_first(params, f"{field}_from"))
    hi = parse_date(_first(params, f"{field}_to"))
    if lo is not None:
        lo_ord = lo.toordinal()
        preds.append(lambda o: _date_ordinal(o.get(field)) >= lo_ord)
    if hi is not None:
        hi_ord = hi.toordinal()
        preds.append(lambda o: 0 < _date_ordinal(o.get(field)) <= hi_ord)
    return preds


def _ts_between(field: str, lo: float | None, hi: float | None) -> Predicate:
    def check(o: JsonObj) -> bool:
        t = epoch(o.get(field))
        if t is None:
            return False
        return (lo is None or t >= lo) and (hi is None or t <= hi)

    return check


def subscription_status_filter(params: dict[str, list[str]]) -> frozenset[str] | None:
    """Statuses selected by ``status[]``: active by default, None (= all) if any is invalid."""
    given = [v for v in params.get("status[]", []) if v != ""]
    if not given:
        return frozenset({"active"})
    if any(v not in SUBSCRIPTION_STATUSES for v in given):
        return None
    return frozenset(given)


# Query parameters that keep the objects whose field equals the value: (parameter, field).
_EXACT_FILTERS: dict[str, tuple[tuple[str, str], ...]] = {
    "subscriptions": (
        ("plan_code", "plan_code"),
        ("external_id", "external_id"),
        ("currency", "plan_amount_currency"),
    ),
    "invoices": tuple((n, n) for n in ("status", "payment_status", "invoice_type", "currency")),
    "credit_notes": tuple((n, n) for n in ("credit_status", "refund_status", "currency", "reason")),
    "events": (("code", "code"), ("external_subscription_id", "external_subscription_id")),
    "fees": (
        ("payment_status", "payment_status"),
        ("external_subscription_id", "external_subscription_id"),
        ("currency", "amount_currency"),
        ("event_transaction_id", "event_transaction_id"),
    ),
    "wallets": (("currency", "currency"),),
    "applied_coupons": (("status", "status"),),
    "wallet_transactions": tuple(
        (n, n) for n in ("status", "transaction_status", "transaction_type")
    ),
}


def list_query(
    store: Store,
    resource: str,
    params: dict[str, list[str]],
    customer_ext: str | None = None,
    scope: dict[str, Any] | None = None,
) -> ListQuery:
    """The selection of a list endpoint for these query parameters.

    Args:
        store: the store (for customer lookups).
        resource: the collection name.
        params: parsed query string (array parameters keep their brackets).
        customer_ext: external customer id from a nested route ``/customers/{ext}/...``.
        scope: extra equality conditions from the route (e.g. the wallet of its transactions).
    """
    preds: list[Predicate] = [_eq(k, v) for k, v in (scope or {}).items()]
    key: list[Any] = [("scope", tuple(sorted((scope or {}).items())))]
    ts_range = None

    def param(name: str) -> str | None:
        value = _first(params, name)
        if value is not None and value != "":
            key.append((name, value))
            return value
        return None

    ext = customer_ext
    if ext is None and resource in (
        "subscriptions",
        "invoices",
        "credit_notes",
        "fees",
        "wallets",
        "applied_coupons",
    ):
        ext = param("external_customer_id")
        if ext is None and resource == "invoices":
            ext = param("customer_external_id")
    else:
        key.append(("customer", ext))
    if ext is not None:
        preds.append(lambda o: _customer_ext_of(store, resource, o) == ext)

    if resource == "subscriptions":
        statuses = subscription_status_filter(params)
        key.append(("status[]", tuple(sorted(statuses)) if statuses else None))
        if statuses is not None:
            preds.append(lambda o: o.get("status") in statuses)
    elif resource == "invoices":
        preds.append(lambda o: listed("invoices", o))
        for name in sorted(params):
            if name.startswith("metadata[") and name.endswith("]"):
                meta = (name[9:-1], _first(params, name))
                key.append(("metadata", meta))
                preds.append(_has_metadata(meta))
        preds += _date_filters(params, "issuing_date")
        key += [(n, _first(params, n)) for n in ("issuing_date_from", "issuing_date_to")]
    elif resource == "credit_notes":
        preds.append(lambda o: listed("credit_notes", o))
        preds += _date_filters(params, "issuing_date")
        key += [(n, _first(params, n)) for n in ("issuing_date_from", "issuing_date_to")]
    elif resource == "events":
        times = _time_filters(params, ("timestamp_from", "timestamp_to"))
        if times:
            ts_range = (times.get("timestamp_from"), times.get("timestamp_to"))
            key.append(("ts", ts_range))
    elif resource == "fees":
        fields = ("created_at", "succeeded_at", "failed_at", "refunded_at")
        times = _time_filters(params, [f"{f}_{e}" for f in fields for e in ("from", "to")])
        for field in fields:
            lo, hi = times.get(f"{field}_from"), times.get(f"{field}_to")
            if lo is not None or hi is not None:
                preds.append(_ts_between(field, lo, hi))
                key.append((field, lo, hi))
        fee_type = param("fee_type")
        if fee_type is not None:
            preds.append(lambda o: (o.get("item") or {}).get("type") == fee_type)
        metric = param("billable_metric_code")
        if metric is not None:
            preds.append(lambda o: (o.get("item") or {}).get("code") == metric)
    elif resource == "wallets":
        if customer_ext is None and ext is not None and store.customer(ext) is None:
            raise not_found("customer")
    elif resource == "wallet_transactions":
        # metadata[<key>]=<value> (v1.51.0): an exact {key, value} pair; keys ANDed.
        pairs = sorted(
            (name[9:-1], values[0])
            for name, values in params.items()
            if name.startswith("metadata[") and name.endswith("]") and values and values[0]
        )
        if pairs:
            key.append(("metadata", tuple(pairs)))
            preds.append(lambda o: all(_has_pair(o, k, v) for k, v in pairs))
    elif resource == "applied_coupons":
        codes = [c for c in params.get("coupon_code[]", []) if c]
        if codes:
            key.append(("coupon_code[]", tuple(codes)))
            preds.append(lambda o: o.get("coupon_code") in codes)
    for name, field in _EXACT_FILTERS.get(resource, ()):
        value = param(name)
        if value is not None:
            preds.append(_eq(field, value))
    return ListQuery(tuple(key), _all(preds), ts_range)
