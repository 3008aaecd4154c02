"""One of two processes of a multi-host run over loopback (CPU backend, gloo collectives)."""

import sys

import jax
import numpy as np

process_id, port, model_path, out_file = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

from distilbert_jax import SentenceTransformer  # noqa: E402
from distilbert_jax.encode.distributed import encode_across_processes  # noqa: E402

texts = [f"passage {i}: " + "protein binds receptor " * (i % 9) for i in range(23)]
np.save(out_file, encode_across_processes(SentenceTransformer.from_pretrained(model_path), texts, batch_size=4))
