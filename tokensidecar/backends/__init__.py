"""The upstreams every command talks to, one module each, used by every side.

* :mod:`.hub` — the Hugging Face Hub: verification (whoami, auth-check), token exchange,
  revocation; :mod:`.hub_scope` judges what a token may do; :mod:`.verify` is the one
  protocol every command verifies through, :mod:`.hub_errors` the Hub's verdicts.
* :mod:`.vault` — Vault / OpenBao: login, renewal, revocation, KV v1/v2 read and write,
  and the KV layout (paths, ``custom_metadata`` keys) the source and the job share.
* :mod:`.kube` — the Kubernetes API client: in-cluster or kubeconfig, the pod's namespace,
  watch streams.
* :mod:`.secret` — the token's Kubernetes Secret: annotations, data keys, base64.
* :mod:`.errors` — what a failure means, decided once for all of them: unavailable or refused.
* :mod:`.credential_file` — credential files, read once and remembered for redaction.
* :mod:`.settings` — the Hub's, Vault's and Kubernetes' settings, resolved once at the door.

The sidecar's sources read through these modules, the rotation job writes through them,
and the gateway fetches through them, so a backend's layout (paths, keys, annotations,
metadata) is declared in one place. Nothing is imported here: each client loads only
when a command needs it.
"""
