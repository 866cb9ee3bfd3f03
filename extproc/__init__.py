"""extproc: an AI-governance egress sidecar for Envoy."""

__version__ = "0.1.0"
