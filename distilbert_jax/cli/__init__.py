"""The `distilbert-jax` command, one module per command group."""

from distilbert_jax.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
