# Read-only access to one model's token, and nothing else.
# One policy (and one role) per model or per team namespace: a pod can read only the
# tokens its service account is bound to. KV v2 reads go through the data/ prefix.
path "secret/data/hf/llama-private" {
  capabilities = ["read"]
}

# Not needed by the sidecar (it reads custom_metadata.expires_at from the data read's
# response); listed as a reminder that metadata/ is a separate path and stays closed.
# path "secret/metadata/hf/llama-private" { capabilities = ["read"] }
