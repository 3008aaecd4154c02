"""Encoding: the sentence-transformers facade, the runner (planning, dispatch, the compiled forward), batching
and packing, multi-host slicing."""
