"""``tokensidecar rotate``: the CronJob that keeps the rotating Secret (or Vault path) supplied.

Sidecars only ever *read* tokens; minting credentials (the org's OAuth app, a Trusted
Publisher identity, Vault write access) live in this one job instead of in every
predictor pod. One run reads what is stored, skips when it is still fresh, mints a token
(:mod:`.issuers`), verifies it at the Hub, stores it with a conditional write
(:mod:`.targets`), and revokes what has outlived its overlap (:mod:`.job`).

This package's top level is light (settings only) so ``tokensidecar --help`` stays fast;
the job and its clients load when the command runs.
"""

from __future__ import annotations

from tokensidecar.rotate.settings import SETTINGS

__all__ = ["SETTINGS"]
