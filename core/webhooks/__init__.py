"""Outgoing webhook subscriptions (docs/webhooks.md).

* :mod:`core.webhooks.events` — the CloudEvents 1.0 envelope, the event-type catalogue, filters;
* :mod:`core.webhooks.store` — subscriptions and their delivery log (what the API calls);
* :mod:`core.webhooks.dispatcher` — delivers ``contract_events`` to subscriptions, in order,
  signed, retried, at least once (runs in the worker).
"""
