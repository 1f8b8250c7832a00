"""HTTP side of the sandbox: routing, auth, pagination bodies, faults, admin endpoints.

The server is a stdlib ``ThreadingHTTPServer`` on 127.0.0.1 speaking HTTP/1.1 with
keep-alive. Each response is written in one piece with a ``Content-Length``.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import json
import re
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote

from tests.lago_sandbox import cash, catalog, organisation, ratelimits
from tests.lago_sandbox import faults as faults_mod
from tests.lago_sandbox.store import (
    RESOURCE_DEFS,
    RESOURCES,
    SUBSCRIPTION_STATUSES,
    ApiError,
    JsonObj,
    Store,
    bad_request,
    list_query,
    not_allowed,
    not_found,
    page_window,
    unprocessable,
)
from tests.lago_sandbox.store import dumps as _dumps

API_PREFIX = "/api/v1"
ADMIN_PREFIX = "/_sandbox/"
REQUEST_LOG_MAX = 200_000
JSON_TYPE = "application/json; charset=utf-8"
_STATUS_TEXT = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
UNAUTHORIZED = {"status": 401, "error": "Unauthorized"}
#: Statuses ``strict_wallets`` may answer with (a validating gateway: 422; Rails: 400).
STRICT_STATUSES = (400, 422)
#: Lago Cloud's gateway 429 (its body is not documented; the headers are what clients use).
RATE_LIMITED = {"status": 429, "error": "Too Many Requests"}
ROUTE_NOT_FOUND = {"status": 404, "error": "Not Found", "code": "resource_not_found"}


# ---------------------------------------------------------------------------------------------
# Seed and object construction come from the sibling modules (imported lazily).


def _seed_module() -> Any:
    from tests.lago_sandbox import seed

    return seed


def _objects_module() -> Any:
    from tests.lago_sandbox import objects

    return objects


def seed_options(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The full seed options: the defaults with ``overrides`` applied (unknown keys refused)."""
    defaults = dict(_seed_module().DEFAULTS)
    for key, value in (overrides or {}).items():
        if key not in defaults:
            raise ValueError(f"unknown seed option {key!r} (known: {', '.join(sorted(defaults))})")
        defaults[key] = value
    return defaults


# ---------------------------------------------------------------------------------------------
# Shared state of one sandbox.


class SandboxState:
    """Everything one running sandbox holds: data, key, faults, request log."""

    def __init__(
        self,
        api_key: str,
        options: dict[str, Any],
        latency_ms: int,
        event_store: str = "postgres",
        rate_limits: Any = None,
    ) -> None:
        self.api_key = api_key
        self.options = options
        self.latency_ms = latency_ms
        self.store = Store(event_store)
        self.faults = faults_mod.FaultSet()
        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=REQUEST_LOG_MAX)
        self.requests_lock = threading.Lock()
        self.stopping = threading.Event()
        #: Behaviour settings (README "Strict wallets", "Premium licence", "Cloud limits"),
        #: see configure().
        self.settings: dict[str, Any] = {
            "strict_wallets": None,
            "premium": False,
            "read_denied": [],
            "rate_limits": None,
        }
        #: Lago Cloud's gateway limits (README "Cloud limits"), off unless asked for.
        self.rate_limits = ratelimits.RateLimits()
        self.configure({"rate_limits": rate_limits})
        self.reset(None)

    def reset(self, overrides: dict[str, Any] | None) -> dict[str, int]:
        """Regenerate the organisation (no overrides: the options the sandbox started with)."""
        options = self.options if overrides is None else seed_options(overrides)
        data = _seed_module().generate(options)
        return self.store.load(data)

    def configure(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Change behaviour settings (README "Admin endpoints"); returns them all.

        ``strict_wallets``: null, 400 or 422; ``premium``: a licence, true or false;
        ``read_denied``: permission resources the key may not read; ``rate_limits``: see
        README "Cloud limits".
        """
        settings = dict(settings)
        for name, value in settings.items():
            if name not in self.settings:
                raise ValueError(f"unknown setting {name!r} (known: {', '.join(self.settings)})")
            if name == "strict_wallets" and value not in (None, *STRICT_STATUSES):
                raise ValueError(f"strict_wallets must be null, 400 or 422 (got {value!r})")
            if name == "premium" and not isinstance(value, bool):
                raise ValueError(f"premium must be true or false (got {value!r})")
            if name == "read_denied" and not (
                isinstance(value, list) and all(isinstance(v, str) for v in value)
            ):
                raise ValueError(f"read_denied must be a list of resource names (got {value!r})")
        if "rate_limits" in settings:
            settings["rate_limits"] = ratelimits.parse(settings["rate_limits"])
            self.rate_limits.set(settings["rate_limits"])
        if "premium" in settings:
            self.store.premium = bool(settings["premium"])
        self.settings.update(settings)
        return dict(self.settings)

    def complete(self, resource: str, fields: JsonObj) -> JsonObj:
        """A full spec-valid object from partial fields (objects.complete)."""
        return _objects_module().complete(resource, fields, now=self.store.clock())


# ---------------------------------------------------------------------------------------------
# Routes.

Handler = Callable[["RequestContext"], Any]
_ROUTES: list[tuple[str, re.Pattern[str], str]] = []


def _route(method: str, pattern: str) -> Callable[[Handler], Handler]:
    regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")

    def register(fn: Handler) -> Handler:
        _ROUTES.append((method, regex, fn.__name__))
        return fn

    return register


class RequestContext:
    """One API request as the route handlers see it."""

    def __init__(
        self,
        state: SandboxState,
        method: str,
        path_params: dict[str, str],
        query: dict[str, list[str]],
        body: bytes,
    ) -> None:
        self.state = state
        self.store = state.store
        self.method = method
        self.path_params = path_params
        self.query = query
        self.body = body

    def json_body(self) -> Any:
        """The parsed request body ({} when empty); 400 when it is not JSON."""
        if not self.body.strip():
            return {}
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, {"status": 400, "error": "Bad Request"}) from exc

    def root(self, key: str) -> Any:
        """``params.require(key)``: 400 when missing or empty."""
        body = self.json_body()
        value = body.get(key) if isinstance(body, dict) else None
        if value is None or value in ({}, [], "") or not isinstance(value, dict):
            raise bad_request(key)
        return value


def _list_body(
    ctx: RequestContext,
    resource: str,
    *,
    wrapper: str | None = None,
    customer_ext: str | None = None,
    scope: dict[str, Any] | None = None,
) -> bytes:
    store = ctx.store
    with store.lock:
        query = list_query(store, resource, ctx.query, customer_ext, scope)
        rows, start, stop = store.list_rows(
            resource, query.cache_key, query.predicate, query.ts_range
        )
        offset, limit, meta = page_window(ctx.query, stop - start)
        page = rows[start + offset : min(start + offset + limit, stop)]
        items = b",".join([r.json() for r in page])
    name = (wrapper or resource).encode()
    return b'{"' + name + b'":[' + items + b'],"meta":' + _dumps(meta) + b"}"


def _single(ctx: RequestContext, resource: str, obj: JsonObj | None, what: str) -> bytes:
    if obj is None:
        raise not_found(what)
    singular = RESOURCE_DEFS[resource].singular.encode()
    with ctx.store.lock:
        raw = ctx.store.get_json(resource, obj)
    return b'{"' + singular + b'":' + raw + b"}"


def _customer_or_404(ctx: RequestContext) -> str:
    ext = ctx.path_params["external_customer_id"]
    if ctx.store.customer(ext) is None:
        raise not_found("customer")
    return ext


# Every resource has a top-level list, except wallet transactions (listed per wallet) and
# the resources of cash.py and organisation.py (their own routes, registered below).
_SIMPLE_LISTS = tuple(
    r
    for r in RESOURCES
    if r != "wallet_transactions" and r not in (*cash.RESOURCES, *organisation.RESOURCES)
)


def _make_list(resource: str) -> Handler:
    def handler(ctx: RequestContext) -> bytes:
        return _list_body(ctx, resource)

    handler.__name__ = f"list_{resource}"
    return handler


_LIST_HANDLERS: dict[str, Handler] = {}
for _res in _SIMPLE_LISTS:
    _LIST_HANDLERS[f"list_{_res}"] = _make_list(_res)
    _ROUTES.append(("GET", re.compile(f"^/{_res}$"), f"list_{_res}"))


def _make_nested(resource: str) -> Handler:
    def handler(ctx: RequestContext) -> bytes:
        return _list_body(ctx, resource, customer_ext=_customer_or_404(ctx))

    handler.__name__ = f"customer_{resource}"
    return handler


for _res in ("subscriptions", "invoices", "credit_notes", "wallets", "applied_coupons"):
    _LIST_HANDLERS[f"customer_{_res}"] = _make_nested(_res)
    _ROUTES.append(
        (
            "GET",
            re.compile(f"^/customers/(?P<external_customer_id>[^/]+)/{_res}$"),
            f"customer_{_res}",
        )
    )


def list_wallets(ctx: RequestContext) -> bytes:
    """``GET /wallets``; in strict mode, refused without ``external_customer_id``.

    The spec marks the parameter required: a gateway validating requests against it answers
    422 with a problem document, and Rails (servers before v1.47) a 400 ``ParameterMissing``.
    """
    status = ctx.state.settings["strict_wallets"]
    if status is not None and not (ctx.query.get("external_customer_id") or [""])[0]:
        if status == 400:
            raise bad_request("external_customer_id")
        raise ApiError(
            422,
            {
                "type": "about:blank#request-validation",
                "title": "Invalid request",
                "status": 422,
                "detail": "The query does not match the operation's parameters.",
                "validation": [
                    {
                        "location": ["query"],
                        "code": "required",
                        "message": "external_customer_id is required",
                    }
                ],
            },
        )
    return _list_body(ctx, "wallets")


_LIST_HANDLERS["list_wallets"] = list_wallets


@_route("GET", "/wallets/{lago_id}/wallet_transactions")
def wallet_transactions(ctx: RequestContext) -> bytes:
    """Transactions of one wallet (404 wallet_not_found)."""
    wallet_id = ctx.path_params["lago_id"]
    if ctx.store.find_one("wallets", lago_id=wallet_id) is None:
        raise not_found("wallet")
    return _list_body(ctx, "wallet_transactions", scope={"lago_wallet_id": wallet_id})


@_route("GET", "/customers/{external_customer_id}/current_usage")
def current_usage(ctx: RequestContext) -> bytes:
    """Usage of the customer's active subscription in its current period."""
    store = ctx.store
    with store.lock:
        ext = ctx.path_params["external_customer_id"]
        customer = store.customer(ext)
        if customer is None:
            raise not_found("customer")
        sub_id = (ctx.query.get("external_subscription_id") or [""])[0]
        sub = None
        if sub_id:
            sub = store.find_one(
                "subscriptions", external_id=sub_id, external_customer_id=ext, status="active"
            )
        if sub is None:
            raise not_allowed("no_active_subscription")
        plan = store.find_one("plans", code=sub.get("plan_code")) or {}
        metrics = {m.get("code"): m for m in store.find_all("billable_metrics")}
        now = store.clock()
        start, end = _objects_module().period_bounds(now)
        lo, hi = start.timestamp(), end.timestamp() + 1
        events = store.period_events(lo, hi, sub_id)
        usage = _objects_module().customer_usage(customer, sub, plan, metrics, events, now=now)
    return _dumps({"customer_usage": usage})


@_route("GET", "/events/{transaction_id}")
def get_event(ctx: RequestContext) -> bytes:
    """One event by transaction id (any subscription)."""
    return _single(
        ctx, "events", ctx.store.event_by_txid(ctx.path_params["transaction_id"]), "event"
    )


@_route("GET", "/customers/{external_customer_id}")
def get_customer(ctx: RequestContext) -> bytes:
    """One customer by external id."""
    return _single(
        ctx, "customers", ctx.store.customer(ctx.path_params["external_customer_id"]), "customer"
    )


def _with_plan(store: Store, sub: JsonObj) -> bytes:
    plan = catalog.plan_of(store, sub)
    extended = dict(sub)
    if plan is not None:
        extended["plan"] = plan
    return _dumps({"subscription": extended})


@_route("GET", "/subscriptions/{external_id}")
def get_subscription(ctx: RequestContext) -> bytes:
    """One subscription by external id and ``status`` (default active)."""
    status = (ctx.query.get("status") or ["active"])[0] or "active"
    with ctx.store.lock:
        sub = None
        if status in SUBSCRIPTION_STATUSES:
            sub = ctx.store.find_one(
                "subscriptions", external_id=ctx.path_params["external_id"], status=status
            )
        if sub is None:
            raise not_found("subscription")
        return _with_plan(ctx.store, sub)


@_route("GET", "/invoices/{lago_id}")
def get_invoice(ctx: RequestContext) -> bytes:
    """One invoice with its fees."""
    with ctx.store.lock:
        inv = ctx.store.find_one("invoices", lago_id=ctx.path_params["lago_id"])
        if inv is None:
            raise not_found("invoice")
        extended = dict(inv)
        extended["fees"] = ctx.store.find_all("fees", lago_invoice_id=inv["lago_id"])
        return _dumps({"invoice": extended})


def _make_get(resource: str, field: str, what: str) -> Handler:
    def handler(ctx: RequestContext) -> bytes:
        value = ctx.path_params["key"]
        with ctx.store.lock:
            return _single(ctx, resource, ctx.store.find_one(resource, **{field: value}), what)

    handler.__name__ = f"get_{resource}"
    return handler


for _res, _field, _what in (
    ("plans", "code", "plan"),
    ("billable_metrics", "code", "billable_metric"),
    ("coupons", "code", "coupon"),
    ("add_ons", "code", "add_on"),
    ("taxes", "code", "tax"),
    ("wallets", "lago_id", "wallet"),
    ("fees", "lago_id", "fee"),
    ("credit_notes", "lago_id", "credit_note"),
):
    _LIST_HANDLERS[f"get_{_res}"] = _make_get(_res, _field, _what)
    _ROUTES.append(("GET", re.compile(f"^/{_res}/(?P<key>[^/]+)$"), f"get_{_res}"))


@_route("POST", "/events")
def post_event(ctx: RequestContext) -> bytes:
    """``POST /events``."""
    event = ctx.root("event")
    created = ctx.store.create_events([event], batch=False)
    return _dumps({"event": created[0]})


@_route("POST", "/events/batch")
def post_events_batch(ctx: RequestContext) -> bytes:
    """``POST /events/batch`` (atomic, at most 100)."""
    from tests.lago_sandbox.store import EVENTS_BATCH_MAX

    body = ctx.json_body()
    events = body.get("events") if isinstance(body, dict) else None
    if not isinstance(events, list) or not events:
        raise unprocessable({"events": ["no_events"]})
    if len(events) > EVENTS_BATCH_MAX:
        raise unprocessable({"events": ["too_many_events"]})
    created = ctx.store.create_events(events, batch=True)
    return _dumps({"events": created})


@_route("POST", "/customers")
def post_customer(ctx: RequestContext) -> bytes:
    """``POST /customers`` (upsert by external_id)."""
    payload = ctx.root("customer")
    with ctx.store.lock:
        obj = ctx.store.upsert_customer(payload, ctx.state.complete)
        return _single(ctx, "customers", obj, "customer")


@_route("POST", "/subscriptions")
def post_subscription(ctx: RequestContext) -> bytes:
    """``POST /subscriptions`` (create, idempotent re-POST, upgrade, downgrade)."""
    payload = ctx.root("subscription")
    with ctx.store.lock:
        sub = ctx.store.create_subscription(payload, ctx.state.complete, _overrider(ctx, payload))
        return _with_plan(ctx.store, sub)


@_route("POST", "/wallets")
def post_wallet(ctx: RequestContext) -> bytes:
    """``POST /wallets`` (code unique among the customer's active wallets)."""
    from tests.lago_sandbox import wallets

    payload = ctx.root("wallet")
    with ctx.store.lock:
        wallet = wallets.create_wallet(ctx.store, payload, ctx.state.complete)
        return _dumps({"wallet": wallet})


@_route("PUT", "/wallets/{lago_id}")
def put_wallet(ctx: RequestContext) -> bytes:
    """``PUT /wallets/{lago_id}`` (404 wallet_not_found)."""
    from tests.lago_sandbox import wallets

    payload = ctx.root("wallet")
    with ctx.store.lock:
        wallet = wallets.update_wallet(ctx.store, ctx.path_params["lago_id"], payload)
        return _single(ctx, "wallets", wallet, "wallet")


@_route("POST", "/wallet_transactions")
def post_wallet_transactions(ctx: RequestContext) -> bytes:
    """``POST /wallet_transactions`` (no idempotency: every call adds transactions)."""
    from tests.lago_sandbox import wallets

    payload = ctx.root("wallet_transaction")
    with ctx.store.lock:
        created = wallets.create_wallet_transactions(ctx.store, payload, ctx.state.complete)
        return _dumps({"wallet_transactions": created})


@_route("DELETE", "/subscriptions/{external_id}")
def delete_subscription(ctx: RequestContext) -> bytes:
    """``DELETE /subscriptions/{external_id}`` (terminate; ``status=pending`` cancels)."""
    status = (ctx.query.get("status") or ["active"])[0] or "active"
    sub = ctx.store.terminate_subscription(ctx.path_params["external_id"], status)
    with ctx.store.lock:
        return _single(ctx, "subscriptions", sub, "subscription")


@_route("PUT", "/subscriptions/{external_id}")
def put_subscription(ctx: RequestContext) -> bytes:
    """``PUT /subscriptions/{external_id}`` (``status`` in the query or the body)."""
    payload = ctx.root("subscription")
    body = ctx.json_body()
    status = (ctx.query.get("status") or [body.get("status") or ""])[0] or None
    with ctx.store.lock:
        sub = ctx.store.update_subscription(
            ctx.path_params["external_id"], status, payload, _overrider(ctx, payload)
        )
        return _with_plan(ctx.store, sub)


def _overrider(ctx: RequestContext, payload: JsonObj) -> Callable[[JsonObj], None] | None:
    """How ``plan_overrides`` apply: only with a premium licence (None: 403)."""
    if not ctx.state.settings.get("premium"):
        return None
    given = payload.get("plan_overrides")
    if given:
        if "usage_thresholds" in payload and "usage_thresholds" in given:
            raise unprocessable({"plan_overrides.usage_thresholds": ["incompatible_params"],
                                 "usage_thresholds": ["incompatible_params"]})  # fmt: skip
        catalog.check_overrides(ctx.store, payload.get("plan_code"), given)
    return lambda sub: catalog.override_plan(ctx.store, sub, payload.get("plan_overrides"))


@_route("POST", "/applied_coupons")
def post_applied_coupon(ctx: RequestContext) -> bytes:
    """``POST /applied_coupons`` (a reusable coupon applied again is a new application)."""
    payload = ctx.root("applied_coupon")
    with ctx.store.lock:
        obj = ctx.store.apply_coupon(payload, ctx.state.complete)
        return _single(ctx, "applied_coupons", obj, "applied_coupon")


def _invoice_body(store: Store, invoice: JsonObj) -> bytes:
    extended = dict(invoice)
    extended["fees"] = store.find_all("fees", lago_invoice_id=invoice["lago_id"])
    return _dumps({"invoice": extended})


@_route("POST", "/invoices")
def post_invoice(ctx: RequestContext) -> bytes:
    """``POST /invoices``: a one-off invoice of add-ons (every call a new invoice)."""
    payload = ctx.root("invoice")
    with ctx.store.lock:
        return _invoice_body(
            ctx.store, ctx.store.create_one_off_invoice(payload, ctx.state.complete)
        )


@_route("PUT", "/invoices/{lago_id}")
def put_invoice(ctx: RequestContext) -> bytes:
    """``PUT /invoices/{lago_id}``: payment status and metadata."""
    payload = ctx.root("invoice")
    with ctx.store.lock:
        return _invoice_body(
            ctx.store, ctx.store.update_invoice(ctx.path_params["lago_id"], payload)
        )


def _make_delete(resource: str, delete: str) -> Handler:
    def handler(ctx: RequestContext) -> bytes:
        obj = getattr(ctx.store, delete)(ctx.path_params["key"])
        singular = RESOURCE_DEFS[resource].singular
        return _dumps({singular: obj})

    handler.__name__ = f"delete_{resource}"
    return handler


for _res, _delete in (
    ("customers", "delete_customer"),
    ("plans", "delete_plan"),
    ("coupons", "delete_coupon"),
    ("add_ons", "delete_add_on"),
):
    _LIST_HANDLERS[f"delete_{_res}"] = _make_delete(_res, _delete)
    _ROUTES.append(("DELETE", re.compile(f"^/{_res}/(?P<key>[^/]+)$"), f"delete_{_res}"))


_HANDLERS: dict[str, Handler] = {
    **_LIST_HANDLERS,
    **{
        fn.__name__: fn
        for fn in (
            wallet_transactions,
            current_usage,
            get_event,
            get_customer,
            get_subscription,
            get_invoice,
            post_event,
            post_events_batch,
            post_customer,
            post_subscription,
            delete_subscription,
            post_wallet,
            put_wallet,
            post_wallet_transactions,
            put_subscription,
            post_applied_coupon,
            post_invoice,
            put_invoice,
        )
    },
}


# Payments, payment requests and receipts, payment methods; billing entities, features,
# plan entitlements, webhook endpoints.
for _method, _pattern, _handler in (*cash.ROUTES, *organisation.ROUTES):
    _route(_method, _pattern)(_handler)
    _HANDLERS[_handler.__name__] = _handler
# Read endpoints of issue 13, one module per family (usage history and alerts, analytics,
# activity and API logs).
for _family in ("usage", "analytics", "logs"):
    for _method, _pattern, _fn in importlib.import_module(f"tests.lago_sandbox.{_family}").ROUTES:
        _route(_method, _pattern)(_fn)
        _HANDLERS[_fn.__name__] = _fn
def _register_catalog() -> None:
    """Catalog writes, features and entitlements (``catalog.py``) join the route table."""
    for method, pattern, fn in catalog.ROUTES:
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")
        _ROUTES.append((method, regex, fn.__name__))
        _HANDLERS[fn.__name__] = fn


_register_catalog()


def resolve(method: str, path: str) -> tuple[Handler, dict[str, str]] | None:
    """The handler and URL-decoded path parameters of an API path (after /api/v1)."""
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    for route_method, regex, name in _ROUTES:
        if route_method != method:
            continue
        m = regex.match(path)
        if m:
            return _HANDLERS[name], {k: unquote(v) for k, v in m.groupdict().items()}
    return None


# ---------------------------------------------------------------------------------------------
# The HTTP handler.


class _NoResponse(Exception):
    """Close the connection without sending anything."""


def _is_loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1")


class SandboxHandler(BaseHTTPRequestHandler):
    """Serves one connection (keep-alive)."""

    protocol_version = "HTTP/1.1"
    server: SandboxHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is available at /_sandbox/requests."""

    def setup(self) -> None:
        """Register the connection so stop() can close idle keep-alive sockets."""
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, True)

    def finish(self) -> None:
        """Unregister the connection."""
        self.server.track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        """GET."""
        self._dispatch("GET")

    def do_POST(self) -> None:
        """POST."""
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        """DELETE."""
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        """PUT (wallets, subscriptions, invoices, the catalog; other paths: 404)."""
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        """PATCH (plan entitlements; other paths: 404 resource_not_found)."""
        self._dispatch("PATCH")

    # -- plumbing -------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        head = [
            f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'Unknown')}",
            f"Content-Type: {JSON_TYPE}",
            f"Content-Length: {len(body)}",
        ]
        for name, value in (extra or {}).items():
            head.append(f"{name}: {value}")
        if self.close_connection:
            head.append("Connection: close")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    def _abort(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _dispatch(self, method: str) -> None:
        state = self.server.state
        raw_path, _, query_string = self.path.partition("?")
        body = self._read_body()
        if raw_path.startswith(ADMIN_PREFIX):
            self._admin(method, raw_path, body)
            return
        entry: dict[str, Any] = {
            "method": method,
            "path": raw_path,
            "query": query_string,
            "status": None,
            "body_size": len(body),
            "fault": None,
        }
        with state.requests_lock:
            state.requests.append(entry)
        if not (raw_path == API_PREFIX or raw_path.startswith(API_PREFIX + "/")):
            entry["status"] = 404
            self._send(404, _dumps(ROUTE_NOT_FOUND))
            return
        if state.latency_ms:
            state.stopping.wait(state.latency_ms / 1000)
        allowed, limit_headers = state.rate_limits.take(method, raw_path)
        if not allowed:
            entry["status"] = 429
            self._send(429, _dumps(RATE_LIMITED), limit_headers)
            return
        rule = state.faults.pick(method, raw_path)
        lost = False
        if rule is not None:
            entry["fault"] = rule.fault
            kind = rule.fault
            if kind == "latency":
                state.stopping.wait(rule.delay_ms / 1000)
            elif kind == "rate_limit":
                headers = {
                    "X-RateLimit-Limit": "50",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(rule.reset_seconds),
                }
                if rule.retry_after is not None:
                    headers["Retry-After"] = str(rule.retry_after)
                entry["status"] = 429
                self._send(429, _dumps({"status": 429, "error": "Too Many Requests"}), headers)
                return
            elif kind == "error":
                entry["status"] = rule.status
                text = faults_mod.ERROR_TEXT[rule.status]
                answer: dict[str, Any] = (
                    dict(ROUTE_NOT_FOUND) if rule.status == 404 else {"status": rule.status}
                )
                self._send(rule.status, _dumps({**answer, "error": text}))
                return
            elif kind == "timeout":
                state.stopping.wait(rule.delay_ms / 1000)
                self._abort()
                return
            elif kind == "drop":
                self._abort()
                return
            else:  # lost_response
                lost = True
        status, payload = self._api(method, raw_path[len(API_PREFIX) :], query_string, body)
        if lost:
            self._abort()
            return
        entry["status"] = status
        self._send(status, payload, limit_headers)

    def _api(self, method: str, path: str, query_string: str, body: bytes) -> tuple[int, bytes]:
        state = self.server.state
        found = resolve(method, path or "/")
        if found is None:
            return 404, _dumps(ROUTE_NOT_FOUND)
        handler, path_params = found
        auth = (self.headers.get("Authorization") or "").split()
        if len(auth) < 2 or auth[1] != state.api_key:
            return 401, _dumps(UNAUTHORIZED)
        ctx = RequestContext(
            state, method, path_params, parse_qs(query_string, keep_blank_values=True), body
        )
        try:
            return 200, handler(ctx)
        except ApiError as err:
            return err.status, _dumps(err.body)

    # -- admin ----------------------------------------------------------------------------

    def _admin(self, method: str, path: str, body: bytes) -> None:
        if not _is_loopback(self.client_address[0]):
            self._send(403, _dumps({"status": 403, "error": "Forbidden", "code": "loopback_only"}))
            return
        state = self.server.state
        try:
            parsed = json.loads(body) if body.strip() else None
        except ValueError:
            self._send(400, _dumps({"status": 400, "error": "body is not JSON"}))
            return
        name = path[len(ADMIN_PREFIX) :].rstrip("/")
        try:
            status, payload = self._admin_route(state, method, name, parsed)
        except (ValueError, KeyError, TypeError) as exc:
            status, payload = 400, {"status": 400, "error": str(exc)}
        except ApiError as err:
            status, payload = err.status, err.body
        self._send(status, _dumps(payload))

    def _admin_route(
        self, state: SandboxState, method: str, name: str, body: Any
    ) -> tuple[int, Any]:
        if name == "reset" and method == "POST":
            if body is not None and not isinstance(body, dict):
                raise ValueError("reset body must be an object of seed options")
            return 200, {"status": "ok", "counts": state.reset(body)}
        if name == "dump" and method == "GET":
            dump = state.store.dump()
            # Features and entitlements live with the catalog writes (catalog.py).
            dump["features"] = catalog.features_of(state.store)
            # Plans of overridden subscriptions, when there are any (not a seeded resource).
            overridden = catalog.overridden_plans_of(state.store)
            if overridden:
                dump["overridden_plans"] = overridden
            dump["entitlements"] = [
                {"plan_code": plan, **entitlement}
                for plan, entitlements in catalog.entitlements_of(state.store).items()
                for entitlement in entitlements
            ]
            return 200, dump
        if name.startswith("upsert/") and method == "POST":
            resource = name.split("/", 1)[1]
            if resource not in RESOURCES:
                raise ValueError(f"unknown resource {resource!r} (known: {', '.join(RESOURCES)})")
            items = body if isinstance(body, list) else [body]
            if not all(isinstance(i, dict) for i in items):
                raise ValueError("upsert body must be an object or a list of objects")
            out = state.store.upsert(resource, items, state.complete)
            return 200, {resource: out}
        if name == "faults" and method == "POST":
            if not isinstance(body, dict) or "rules" not in body:
                raise ValueError('faults body must be {"rules": [...]}')
            return 200, {"rules": state.faults.replace(body["rules"])}
        if name == "faults" and method == "GET":
            return 200, {"rules": state.faults.describe()}
        if name == "settings" and method == "POST":
            if not isinstance(body, dict):
                raise ValueError("settings body must be an object")
            return 200, {"settings": state.configure(body)}
        if name == "settings" and method == "GET":
            return 200, {"settings": dict(state.settings)}
        if name == "rate_limits" and method == "GET":
            return 200, state.rate_limits.describe()
        if name == "requests" and method == "GET":
            with state.requests_lock:
                return 200, {"requests": [dict(e) for e in state.requests]}
        if name == "requests" and method == "DELETE":
            with state.requests_lock:
                state.requests.clear()
            return 200, {"status": "ok"}
        return 404, {"status": 404, "error": "Not Found", "code": "resource_not_found"}


class SandboxHTTPServer(ThreadingHTTPServer):
    """Threaded server bound to 127.0.0.1 that can close its keep-alive connections."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, state: SandboxState, port: int) -> None:
        self.state = state
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), SandboxHandler)

    def track(self, conn: socket.socket, add: bool) -> None:
        """Remember (or forget) an open connection."""
        with self._conns_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def close_connections(self) -> None:
        """Shut every open connection (idle keep-alive clients included)."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


# ---------------------------------------------------------------------------------------------
# The Python API.


class Sandbox:
    """A Lago API double serving from background threads of this process.

    Example:
        with Sandbox(seed={"customers": 5, "events": 100}) as sb:
            requests.get(f"{sb.url}/customers", headers={"Authorization": f"Bearer {sb.api_key}"})
    """

    def __init__(
        self,
        api_key: str = "test-api-key",
        *,
        seed: dict[str, Any] | None = None,
        latency_ms: int = 0,
        port: int = 0,
        event_store: str = "postgres",
        rate_limits: Any = None,
    ) -> None:
        self.api_key = api_key
        self.rate_limits = ratelimits.parse(rate_limits)
        self.seed = seed_options(seed)
        self.latency_ms = latency_ms
        self.event_store = event_store
        self.port = port
        self._server: SandboxHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.state: SandboxState | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        if self._server is None:
            raise RuntimeError("the sandbox is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/api/v1``."""
        return self.base_url + API_PREFIX

    def start(self) -> Sandbox:
        """Seed the organisation and serve it."""
        if self._server is not None:
            return self
        self.state = SandboxState(
            self.api_key, self.seed, self.latency_ms, self.event_store, self.rate_limits
        )
        self._server = SandboxHTTPServer(self.state, self.port)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name=f"lago-sandbox-{self._server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.state.stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- admin helpers (over HTTP) ----------------------------------------------------------

    def _admin(self, method: str, name: str, body: Any = None) -> Any:
        import requests

        response = requests.request(
            method, f"{self.base_url}{ADMIN_PREFIX}{name}", json=body, timeout=120
        )
        if response.status_code != 200:
            raise RuntimeError(
                f"sandbox admin {method} {name} failed: {response.status_code} {response.text}"
            )
        return response.json()

    def reset(self, seed: dict[str, Any] | None = None) -> dict[str, int]:
        """Regenerate the data (``seed`` options; None: the options it started with)."""
        return self._admin("POST", "reset", seed)["counts"]

    def dump(self) -> dict[str, list[dict[str, Any]]]:
        """Everything stored, per resource, in list order."""
        return self._admin("GET", "dump")

    def upsert(self, resource: str, objects: dict | list[dict]) -> list[dict]:
        """Insert or change objects (merged by lago_id; events by subscription + txid)."""
        return self._admin("POST", f"upsert/{resource}", objects)[resource]

    def set_faults(self, rules: list[dict[str, Any]]) -> None:
        """Replace every fault rule ([] clears them)."""
        self._admin("POST", "faults", {"rules": rules})

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change behaviour settings (e.g. ``strict_wallets=422``); returns them all."""
        return self._admin("POST", "settings", settings)["settings"]

    def rate_limited(self) -> dict[str, int]:
        """How many requests each Cloud-limits bucket refused with 429 so far."""
        return self._admin("GET", "rate_limits")["limited"]

    def faults(self) -> list[dict[str, Any]]:
        """The active fault rules with their fired counts."""
        return self._admin("GET", "faults")["rules"]

    def requests(self, clear: bool = False) -> list[dict[str, Any]]:
        """The API requests received so far (and clear the log when ``clear``)."""
        out = self._admin("GET", "requests")["requests"]
        if clear:
            self._admin("DELETE", "requests")
        return out
