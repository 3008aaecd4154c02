"""Adapters to other engines' APIs (Ray Data), over the library's own encoding."""
