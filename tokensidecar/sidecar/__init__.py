"""The sidecar: ``tokensidecar run`` and ``tokensidecar once``.

One data path, each step in its own module: a source (:mod:`tokensidecar.sources`) gives
a token, the refresher (:mod:`.refresh`) validates it and has the Hub verify it
(:mod:`tokensidecar.backends.verify`), the publisher (:mod:`.publish`) writes it
atomically to the token file, the notifier (:mod:`.notify`) tells the model server.
:mod:`.server` answers probes, metrics (:mod:`.metrics`) and status from the refresher's
state; :mod:`.settings` holds the sidecar's settings, resolved once; :mod:`.main` wires
them and keeps the promise to stop within 5 s of SIGTERM.

Nothing is imported here, so ``tokensidecar --help`` stays fast.
"""
