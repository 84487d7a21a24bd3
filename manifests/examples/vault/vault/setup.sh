#!/usr/bin/env bash
# Configure Vault (or OpenBao: replace `vault` with `bao`) for the llama-private example.
#
# Run once per cluster (the auth method) and once per model (policy + role + secret), as
# a Vault operator, with VAULT_ADDR and VAULT_TOKEN set. Safe to run again.
#
#   KUBE_HOST      the API server URL as Vault reaches it (default: in-cluster address)
#   KUBE_CA_FILE   the cluster CA bundle (default: the one of the pod running this)
#   HF_TOKEN_FILE  a file holding the first Hugging Face token to store (optional)
#
# Vault OUTSIDE the cluster (a VM, HCP Vault, another cluster) cannot use a pod's own
# service-account token to call TokenReview. Give it one of:
#   TOKEN_REVIEWER_JWT_FILE  a long-lived token of a service account bound to
#                  system:auth-delegator (create it with a kubernetes.io/service-account-token
#                  Secret; see docs/quickstart.md, "Vault outside the cluster"); Vault
#                  then calls TokenReview with that token;
#   USE_CALLER_JWT=true      no reviewer token: Vault calls TokenReview with the very JWT
#                  each client logs in with, so every client's service account needs
#                  system:auth-delegator (the sidecars' included — usually the wrong trade);
# and, unless Vault runs in a pod of this cluster, the script sets
# disable_local_ca_jwt=true so Vault never reads a local service-account file it lacks.
#   VAULT_IN_CLUSTER=false   force the outside-the-cluster settings (default: detected from
#                  the presence of the pod's service-account token).
set -euo pipefail

VAULT=${VAULT:-vault}
AUTH_MOUNT=${AUTH_MOUNT:-kubernetes}
NAMESPACE=models-team-a
SERVICE_ACCOUNT=llama-private
ROLE=hf-llama-private
POLICY=hf-llama-private
# The rotation job (../rotation): its own service account, role and write policy.
ROTATE_SERVICE_ACCOUNT=tokensidecar-rotate-llama-private
ROTATE_ROLE=hf-llama-private-rotate
ROTATE_POLICY=hf-llama-private-rotate
KV_PATH=secret/hf/llama-private
HERE=$(cd "$(dirname "$0")" && pwd)

# 0. How Vault will call TokenReview: decided before anything is written.
SA_DIR=/var/run/secrets/kubernetes.io/serviceaccount
if [[ -z "${VAULT_IN_CLUSTER:-}" ]]; then
  if [[ -f "$SA_DIR/token" ]]; then VAULT_IN_CLUSTER=true; else VAULT_IN_CLUSTER=false; fi
fi
config_args=(
  kubernetes_host="${KUBE_HOST:-https://kubernetes.default.svc}"
  kubernetes_ca_cert=@"${KUBE_CA_FILE:-$SA_DIR/ca.crt}"
)
if [[ -n "${TOKEN_REVIEWER_JWT_FILE:-}" ]]; then
  # `@file`: the reviewer token is read from the file, never put in argv.
  config_args+=(token_reviewer_jwt=@"$TOKEN_REVIEWER_JWT_FILE")
fi
if [[ "$VAULT_IN_CLUSTER" != true ]]; then
  if [[ -z "${TOKEN_REVIEWER_JWT_FILE:-}" && "${USE_CALLER_JWT:-}" != true ]]; then
    echo "error: Vault outside the cluster needs TOKEN_REVIEWER_JWT_FILE or USE_CALLER_JWT=true" >&2
    exit 2
  fi
  config_args+=(disable_local_ca_jwt=true)
fi

# 1. Kubernetes auth. When Vault runs inside the cluster, it can use its own service
#    account for TokenReview (that account needs the system:auth-delegator ClusterRole).
# (Listed into a variable first: `grep -q` closing a pipe early trips `pipefail`.)
auth_mounts=$("$VAULT" auth list -format=json)
if [[ "$auth_mounts" != *"\"${AUTH_MOUNT}/\""* ]]; then
  "$VAULT" auth enable -path="$AUTH_MOUNT" kubernetes
fi
"$VAULT" write "auth/${AUTH_MOUNT}/config" "${config_args[@]}"

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

# 3b. The rotation job's role: its own service account, a policy that may write the one
#     path (and its metadata) — the sidecar's role above may only read it.
"$VAULT" policy write "$ROTATE_POLICY" "${HERE}/policy-llama-private-rotate.hcl"
"$VAULT" write "auth/${AUTH_MOUNT}/role/${ROTATE_ROLE}" \
  bound_service_account_names="$ROTATE_SERVICE_ACCOUNT" \
  bound_service_account_namespaces="$NAMESPACE" \
  audience=vault \
  token_policies="$ROTATE_POLICY" \
  token_ttl=5m \
  token_max_ttl=15m

# 4. The token itself (KV v2), with its expiry in custom metadata so the sidecar
#    refreshes before it runs out. The rotation CronJob (../rotation: `tokensidecar rotate
#    --target vault`) keeps this up to date; this only seeds the first value.
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
