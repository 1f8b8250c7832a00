"""The actions target-lago can take, one module each; `ACTIONS` is the table.

Adding an action means one module declaring its sink (endpoint, method, key, required
fields, payload, how a response settles) and one line here. `rank` orders the writes of
a run: lower ranks are flushed before a higher-ranked sink writes. The ranks leave room
for the actions between: customers 0, wallets 10, subscriptions 20, applied coupons 30,
wallet transactions and one-off invoices 40, events 50.
"""

from __future__ import annotations

from target_lago.actions.applied_coupons import AppliedCouponsSink
from target_lago.actions.customers import CustomersSink
from target_lago.actions.events import EventsSink
from target_lago.actions.one_off_invoices import OneOffInvoicesSink
from target_lago.actions.subscriptions import SubscriptionsSink
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
    )
}
