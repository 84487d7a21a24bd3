#!/usr/bin/env bash
# Configure Vault (or OpenBao: replace `vault` with `bao`) for the llama-private example.
#
# Run once per cluster (the auth method) and once per model (policy + role + secret), as
# a Vault operator, with VAULT_ADDR and VAULT_TOKEN set. Safe to run again.
#
#   KUBE_HOST      the API server URL as Vault reaches it (default: in-cluster address)
#   KUBE_CA_FILE   the cluster CA bundle (default: the one of the pod running this)
#   HF_TOKEN_FILE  a file holding the first Hugging Face token to store (optional)
set -euo pipefail

VAULT=${VAULT:-vault}
AUTH_MOUNT=${AUTH_MOUNT:-kubernetes}
NAMESPACE=models-team-a
SERVICE_ACCOUNT=llama-private
ROLE=hf-llama-private
POLICY=hf-llama-private
KV_PATH=secret/hf/llama-private
HERE=$(cd "$(dirname "$0")" && pwd)

# 1. Kubernetes auth. When Vault runs inside the cluster, it can use its own service
#    account for TokenReview (that account needs the system:auth-delegator ClusterRole).
# (Listed into a variable first: `grep -q` closing a pipe early trips `pipefail`.)
auth_mounts=$("$VAULT" auth list -format=json)
if [[ "$auth_mounts" != *"\"${AUTH_MOUNT}/\""* ]]; then
  "$VAULT" auth enable -path="$AUTH_MOUNT" kubernetes
fi
"$VAULT" write "auth/${AUTH_MOUNT}/config" \
  kubernetes_host="${KUBE_HOST:-https://kubernetes.default.svc}" \
  kubernetes_ca_cert=@"${KUBE_CA_FILE:-/var/run/secrets/kubernetes.io/serviceaccount/ca.crt}"

# 2. The policy: read one path.
"$VAULT" policy write "$POLICY" "${HERE}/policy-llama-private.hcl"

# 3. The role: only this service account in this namespace, only tokens minted for the
#    audience "vault" (tokensidecar.io/token-audience), short-lived Vault tokens that the
#    sidecar renews and revokes on shutdown.
"$VAULT" write "auth/${AUTH_MOUNT}/role/${ROLE}" \
  bound_service_account_names="$SERVICE_ACCOUNT" \
  bound_service_account_namespaces="$NAMESPACE" \
  audience=vault \
  token_policies="$POLICY" \
  token_ttl=15m \
  token_max_ttl=1h

# 4. The token itself (KV v2), with its expiry in custom metadata so the sidecar
#    refreshes before it runs out. The rotation CronJob (`tokensidecar rotate --target
#    vault`) keeps this up to date; this only seeds the first value.
secret_mounts=$("$VAULT" secrets list -format=json)
if [[ "$secret_mounts" != *'"secret/"'* ]]; then
  "$VAULT" secrets enable -path=secret -version=2 kv
fi
if [[ -n "${HF_TOKEN_FILE:-}" ]]; then
  # `key=-` reads the value from stdin, so the token never appears in argv or history.
  "$VAULT" kv put "$KV_PATH" token=- < "$HF_TOKEN_FILE"
  # EXPIRES_AT: RFC 3339, e.g. 2026-01-31T12:00:00Z (unset: the sidecar reads a JWT's exp,
  # or polls every TOKENSIDECAR_REFRESH_INTERVAL).
  if [[ -n "${EXPIRES_AT:-}" ]]; then
    "$VAULT" kv metadata patch -custom-metadata=expires_at="$EXPIRES_AT" "$KV_PATH"
  fi
fi
