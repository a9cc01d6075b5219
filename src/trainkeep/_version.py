"""The version of trainkeep (one place, read by the package, the manifests and the CLI)."""

__version__ = "0.1.0"
