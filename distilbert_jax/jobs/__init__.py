"""Corpus jobs: `encode-corpus`, `tokenize-corpus`, and reading their outputs back (`load_embeddings`)."""
