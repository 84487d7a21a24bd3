"""The demo: the whole flow on one machine, with real local stand-ins for Vault and the Hub.

``tokensidecar demo`` (:mod:`tokensidecar.demo.run`) starts a local OpenBao dev server and
the Hub stand-in (:mod:`tokensidecar.demo.hub`), runs the sidecar against them, rotates
the token and downloads a private model through huggingface_hub after each rotation.
The stand-ins double as the test suite's fixtures; they are not product features.
"""
