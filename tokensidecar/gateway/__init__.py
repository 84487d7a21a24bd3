"""The gateway: the cluster's Hugging Face endpoint (``tokensidecar gateway``, docs/gateway.md).

Workloads point ``HF_ENDPOINT`` here and present their Kubernetes identity; the gateway
decides, serves from its cache, and fetches what is missing upstream with credentials only
it holds. Two halves, each in its own modules:

* the control plane decides who may read what: ``identity`` (TokenReview, cached),
  ``policy`` (the rules file, reloaded), ``credentials`` (upstream tokens kept fresh by the
  sidecar's refresher, memory only) and ``authz`` (the Gatekeeper that joins them and writes
  the audit line);
* the data plane moves the bytes: ``upstream`` (one aiohttp client to the Hub or a mirror,
  which follows the Hub's CDN redirects without the credential and strips Xet hints),
  ``cache`` (content-addressed blobs checked against their sha256 or git blob id before
  they count as complete, single-flight fills streamed to every waiter through the
  filesystem, LRU eviction that skips files in use, and the metadata cache: commits for
  good, branches and tags for the revision TTL, stale-if-error during an outage) and
  ``server`` (the Hub's routes, headers and errors, probes and metrics).

Every request, a cache hit included, goes through the Gatekeeper before any byte of
metadata or content is read. ``settings`` stays light: the CLI imports it for ``--help``.
"""
