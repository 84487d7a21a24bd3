# The rotation job's policy for llama-private: write the one KV v2 path the sidecar reads,
# and nothing else. `tokensidecar rotate --target vault` reads the current version and its
# metadata (check-and-set on that version), writes the new version with cas, and patches
# custom_metadata (expiry, fingerprint, revocation state) with a JSON merge patch.
path "secret/data/hf/llama-private" {
  capabilities = ["create", "update", "read"]
}

path "secret/metadata/hf/llama-private" {
  capabilities = ["read", "patch"]
}
