"""The mutating admission webhook: ``tokensidecar webhook``.

Platform teams get the sidecar into every annotated predictor pod without editing pod
specs. The room is split so that the part worth testing exhaustively is pure:

* :mod:`.inject` — pod + settings → RFC 6902 JSON patch (no I/O, converges on re-review);
* :mod:`.review` — AdmissionReview bytes → AdmissionReview reply (no I/O, never raises);
* :mod:`.server` — the thin aiohttp HTTPS server, metrics and certificate reloading;
* :mod:`.certs` — ``--self-signed``: one CA shared by all replicas, caBundle patching;
* :mod:`.settings` — the command's settings (light, imported for ``--help``).
"""
