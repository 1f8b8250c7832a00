"""Customers (upsert) and subscriptions (idempotent re-post), and their ordering."""

from __future__ import annotations

import datetime as dt
from typing import Any

from target_lago.target import RecordsRejectedError

from tests.lago_sandbox import Sandbox
from tests.target.helpers import (
    EVENT_PROPS,
    dead_letters,
    posts,
    record,
    run_target,
    schema,
    usage_rows,
)

ANY_PROPS = {"external_id": {"type": "string"}}  # other columns need no declared type


def customers_messages(*records: dict[str, Any]) -> list[dict]:
    return [
        schema("customers", ANY_PROPS, ["external_id"]),
        *(record("customers", r) for r in records),
    ]


def subscriptions_messages(*records: dict[str, Any]) -> list[dict]:
    return [
        schema("subscriptions", ANY_PROPS, ["external_id"]),
        *(record("subscriptions", r) for r in records),
    ]


def by_external_id(objects: list[dict], external_id: str) -> list[dict]:
    return [o for o in objects if o["external_id"] == external_id]


def test_customers_are_upserted_on_external_id(lago: Sandbox, config: dict) -> None:
    first = {"external_id": "acme", "name": "Acme", "email": "billing@acme.test",
             "currency": "EUR", "country": "fr"}  # fmt: skip
    assert run_target(config, customers_messages(first)).error is None
    update = {"external_id": "acme", "email": "finance@acme.test"}
    run = run_target(config, customers_messages(update, {**update, "city": "Lyon"}))
    assert run.error is None
    assert run.counts["customers"]["delivered"] == 2

    [acme] = by_external_id(lago.dump()["customers"], "acme")
    assert acme["name"] == "Acme"  # absent from the update: unchanged
    assert acme["email"] == "finance@acme.test"
    assert acme["city"] == "Lyon"  # records of one customer are applied in order
    assert acme["country"] == "FR"


def test_a_tap_lago_customer_is_copied_without_its_read_only_fields(
    sandbox: Sandbox, lago: Sandbox, config: dict
) -> None:
    source = next(c for c in sandbox.dump()["customers"] if c["metadata"] and c["taxes"])
    run = run_target(config, customers_messages(source))
    assert run.error is None
    assert run.counts["customers"]["delivered"] == 1

    [copy] = by_external_id(lago.dump()["customers"], source["external_id"])
    assert copy["lago_id"] != source["lago_id"]
    for field in ("name", "email", "currency", "country", "city", "net_payment_term"):
        assert copy[field] == source[field], field
    assert [(m["key"], m["value"]) for m in copy["metadata"]] == [
        (m["key"], m["value"]) for m in source["metadata"]
    ]
    assert {t["code"] for t in copy["taxes"]} == {t["code"] for t in source["taxes"]}
    assert (
        copy["billing_configuration"]["document_locale"]
        == (source["billing_configuration"]["document_locale"])
    )


def test_an_unchanged_customer_is_already_present_and_not_sent_again(
    sandbox: Sandbox, lago: Sandbox, config: dict
) -> None:
    source = next(c for c in sandbox.dump()["customers"] if c["metadata"] and c["taxes"])
    plain = {"external_id": "plain", "name": "Plain", "country": "fr", "currency": "EUR"}
    assert run_target(config, customers_messages(source, plain)).error is None
    before = lago.dump()["customers"]
    lago.requests(clear=True)

    again = run_target(config, customers_messages(source, plain))
    assert again.error is None
    assert again.counts["customers"]["delivered"] == 0
    assert again.counts["customers"]["already_present"] == 2
    # The plain one is read, compared, not sent; the copied one is sent (without a licence
    # Lago drops its `timezone`, so it differs on every run) and Lago's answer shows that
    # nothing changed.
    assert source["timezone"] and not any(c["timezone"] for c in before)
    assert len(posts(lago)) == 1
    assert lago.dump()["customers"] == before

    changed = run_target(config, customers_messages(source, {**plain, "city": "Lyon"}))
    assert changed.counts["customers"]["delivered"] == 1
    assert changed.counts["customers"]["already_present"] == 1
    [row] = by_external_id(lago.dump()["customers"], "plain")
    assert (row["city"], row["country"]) == ("Lyon", "FR")


def test_subscriptions_repost_skip_and_reject(lago: Sandbox, config: dict, plan: dict) -> None:
    future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=20)).strftime("%Y-%m-%d")
    records = [
        {"external_id": "sub_1", "external_customer_id": "acme", "plan_code": plan["code"],
         "name": "Main", "billing_time": "anniversary", "subscription_at": "2025-01-01T00:00:00Z"},
        {"external_id": "sub_later", "external_customer_id": "acme", "plan_code": plan["code"],
         "subscription_at": future},
        {"external_id": "sub_bad", "external_customer_id": "acme", "plan_code": "no_such_plan"},
        {"external_id": "sub_old", "external_customer_id": "acme", "plan_code": plan["code"],
         "status": "incomplete"},
        {"external_id": "sub_gone", "external_customer_id": "acme", "plan_code": plan["code"],
         "status": "canceled"},
    ]  # fmt: skip
    first = run_target(config, subscriptions_messages(*records))
    assert isinstance(first.error, RecordsRejectedError)
    assert first.counts["subscriptions"] == {
        "received": 5, "delivered": 2, "already_present": 0, "rejected": 2, "skipped": 1,
        "accepted_unverified": 0,
    }  # fmt: skip
    subs = lago.dump()["subscriptions"]
    [main] = by_external_id(subs, "sub_1")
    assert (main["status"], main["billing_time"], main["name"]) == ("active", "anniversary", "Main")
    assert by_external_id(subs, "sub_later")[0]["status"] == "pending"
    assert not by_external_id(subs, "sub_old") + by_external_id(subs, "sub_gone")
    letter, gone = sorted(
        dead_letters(config["dead_letter_path"]), key=lambda x: x["record"]["external_id"]
    )
    assert letter["record"]["external_id"] == "sub_bad"
    assert (letter["http_status"], letter["error_code"]) == (404, "plan_not_found")
    assert letter["action"] == "subscriptions"
    # Nothing to cancel: a canceled row of a subscription Lago never had.
    assert gone["record"]["external_id"] == "sub_gone"
    assert (gone["http_status"], gone["error_code"]) == (404, "subscription_not_found")

    # Re-posting: Lago returns the existing subscriptions unchanged.
    lago.upsert("subscriptions", {"lago_id": main["lago_id"], "created_at": "2025-01-01T00:00:00Z"})
    again = run_target({**config, "allow_rejections": True}, subscriptions_messages(*records))
    assert again.error is None
    assert again.counts["subscriptions"]["already_present"] >= 1
    after = lago.dump()["subscriptions"]
    assert len(after) == len(subs)
    assert by_external_id(after, "sub_1")[0]["lago_id"] == main["lago_id"]


def test_a_replay_right_after_the_first_run_is_already_present(
    lago: Sandbox, config: dict, plan: dict
) -> None:
    # Seconds after its creation: the subscription Lago listed before the post is the one
    # the post answers, so no clock decides.
    future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=20)).strftime("%Y-%m-%d")
    rows = [
        {"external_id": "sub_now", "external_customer_id": "acme", "plan_code": plan["code"]},
        {"external_id": "sub_soon", "external_customer_id": "acme", "plan_code": plan["code"],
         "subscription_at": future},
    ]  # fmt: skip
    assert run_target(config, subscriptions_messages(*rows)).counts["subscriptions"][
        "delivered"
    ] == 2
    before = lago.dump()["subscriptions"]
    again = run_target(config, subscriptions_messages(*rows))
    assert again.error is None
    assert again.counts["subscriptions"]["already_present"] == 2
    assert again.counts["subscriptions"]["delivered"] == 0
    assert lago.dump()["subscriptions"] == before


def test_customers_then_subscriptions_then_events(
    lago: Sandbox, config: dict, plan: dict, metric_code: str
) -> None:
    # The events stream comes first and fills batches before the others are full.
    events = usage_rows(250, ["sub_o"], metric_code)
    messages = [
        schema("events", EVENT_PROPS, ["id"]),
        schema("customers", ANY_PROPS, ["external_id"]),
        schema("subscriptions", ANY_PROPS, ["external_id"]),
        record("customers", {"external_id": "cust_o", "name": "Ordered", "currency": "EUR"}),
        record("subscriptions", {"external_id": "sub_o", "external_customer_id": "cust_o",
                                 "plan_code": plan["code"]}),
        *(record("events", e) for e in events),
    ]  # fmt: skip
    run = run_target(config, messages)
    assert run.error is None
    order = [r["path"].rsplit("/api/v1", 1)[1] for r in posts(lago)]
    assert order[:2] == ["/customers", "/subscriptions"]
    assert order[2:] == ["/events/batch"] * 3
    [customer] = by_external_id(lago.dump()["customers"], "cust_o")
    assert customer["name"] == "Ordered"  # not a bare customer auto-created by the subscription


def test_later_customers_wait_for_their_turn_only(lago: Sandbox, config: dict, plan: dict) -> None:
    # A customer received after a subscription still precedes it (same drain), and a
    # second subscription batch sees the customer already written.
    messages = [
        schema("subscriptions", ANY_PROPS, ["external_id"]),
        schema("customers", ANY_PROPS, ["external_id"]),
        record("subscriptions", {"external_id": "sub_x", "external_customer_id": "cust_x",
                                 "plan_code": plan["code"]}),
        record("customers", {"external_id": "cust_x", "name": "Named", "currency": "EUR"}),
    ]  # fmt: skip
    run = run_target(config, messages)
    assert run.error is None
    order = [r["path"].rsplit("/api/v1", 1)[1] for r in posts(lago)]
    assert order == ["/customers", "/subscriptions"]


def test_updates_of_a_customer_keep_their_order_across_a_schema_change(
    lago: Sandbox, config: dict
) -> None:
    wider = {**ANY_PROPS, "city": {"type": "string"}}
    messages = [
        schema("customers", ANY_PROPS, ["external_id"]),
        record("customers", {"external_id": "acme", "name": "Old name"}),
        schema("customers", wider, ["external_id"]),  # a new sink; the old one is retired
        record("customers", {"external_id": "acme", "name": "New name", "city": "Lyon"}),
        record("customers", {"external_id": "other", "name": "Other"}),  # fills the batch
    ]
    run = run_target({**config, "batch_size": 2}, messages)
    assert run.error is None
    [acme] = by_external_id(lago.dump()["customers"], "acme")
    assert (acme["name"], acme["city"]) == ("New name", "Lyon")
