"""The upstreams every command talks to, one module each, used by every side.

* :mod:`.hub` — the Hugging Face Hub: verification (whoami, auth-check), token exchange,
  revocation; :mod:`.hub_scope` judges what a token may do.
* :mod:`.vault` — Vault / OpenBao: login, renewal, revocation, KV v1/v2 read and write.
* :mod:`.kube` — the Kubernetes API client: in-cluster or kubeconfig, the pod's namespace.
* :mod:`.errors` — what a failure means, decided once for all of them: unavailable or refused.

The sidecar's sources read through these modules, the rotation job writes through them,
and the gateway fetches through them, so a backend's layout (paths, keys, annotations,
metadata) is declared in one place. Nothing is imported here: each client loads only
when a command needs it.
"""
