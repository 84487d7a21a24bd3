"""tokensidecar: keeps short-lived Hugging Face tokens fresh inside model-serving pods."""

__version__ = "0.1.0"
