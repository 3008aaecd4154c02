"""Checkpoint conversion scripts over the library's one name table; outside `distilbert_jax` (which never imports
them): see README.md here."""
