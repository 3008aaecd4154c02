"""The package version, in one place (written into saved model directories)."""

__version__ = "0.1.0"
