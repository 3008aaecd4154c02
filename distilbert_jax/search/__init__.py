"""Search: similarity functions, `semantic_search` and its engines, host row I/O, mining, quantization."""
