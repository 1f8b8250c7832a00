"""The actions target-lago can take, one module each; `ACTIONS` is the table.

Adding an action means one module declaring its sink (endpoint, method, key, required
fields, payload, how a response settles) and one line here. `rank` orders the writes of
a run: lower ranks are flushed before a higher-ranked sink writes, so what a record refers
to is in Lago before it. The ranks leave room for the actions between: taxes, billable
metrics and features 0, add-ons 10, plans 20, plan entitlements 25, coupons 30 (the
catalog: `catalog.py`), customers 40, wallets 50, subscriptions 60, subscription plans
(overrides) 65, applied coupons 70, wallet transactions and one-off invoices 80, events 90.
"""

from __future__ import annotations

from target_lago.actions.add_ons import AddOnsSink
from target_lago.actions.applied_coupons import AppliedCouponsSink
from target_lago.actions.billable_metrics import BillableMetricsSink
from target_lago.actions.coupons import CouponsSink
from target_lago.actions.customers import CustomersSink
from target_lago.actions.entitlements import EntitlementsSink
from target_lago.actions.events import EventsSink
from target_lago.actions.features import FeaturesSink
from target_lago.actions.one_off_invoices import OneOffInvoicesSink
from target_lago.actions.plans import PlansSink
from target_lago.actions.subscription_plans import SubscriptionPlansSink
from target_lago.actions.subscriptions import SubscriptionsSink
from target_lago.actions.taxes import TaxesSink
from target_lago.actions.wallet_transactions import WalletTransactionsSink
from target_lago.actions.wallets import WalletsSink
from target_lago.sinks import LagoSink

ACTIONS: dict[str, type[LagoSink]] = {
    sink.action: sink
    for sink in (
        CustomersSink,
        SubscriptionsSink,
        EventsSink,
        WalletsSink,
        WalletTransactionsSink,
        AppliedCouponsSink,
        OneOffInvoicesSink,
        SubscriptionPlansSink,
        TaxesSink,
        BillableMetricsSink,
        FeaturesSink,
        AddOnsSink,
        PlansSink,
        EntitlementsSink,
        CouponsSink,
    )
}
