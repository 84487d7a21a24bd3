"""Fault injection: the sidecar, the publisher and the webhook under failures
(docs/behaviour.md, docs/security.md).

Each module breaks one real dependency the way production breaks it — OpenBao killed and
restarted, watch streams cut and 410 storms from the API server, a Hub that answers 429
and 5xx or stalls, a publisher killed mid-write, hostile and slow admission clients — and
checks the promises that must survive: the last good token stays published, nothing the
Hub rejected is ever published, reconnects stay bounded, and no token leaks.
"""
