"""The actions target-lago can take, one module each; `ACTIONS` is the table.

Adding an action means one module declaring its sink (endpoint, method, key, required
fields, payload, how a response settles) and one line here. `rank` orders the writes of
a run: lower ranks are flushed before a higher-ranked sink writes.
"""

from __future__ import annotations

from target_lago.actions.customers import CustomersSink
from target_lago.actions.events import EventsSink
from target_lago.actions.subscriptions import SubscriptionsSink
from target_lago.sinks import LagoSink

ACTIONS: dict[str, type[LagoSink]] = {
    sink.action: sink for sink in (CustomersSink, SubscriptionsSink, EventsSink)
}
