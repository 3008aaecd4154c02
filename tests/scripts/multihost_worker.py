"""One of two processes of a multi-host run over loopback (CPU backend, gloo collectives)."""

import sys

import jax
import numpy as np

process_id, port, model_path, out_file = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
deterministic = sys.argv[5:] == ["deterministic"]  # then batches of 3 here, compared bit for bit with one process
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

from distilbert_jax import SentenceTransformer  # noqa: E402
from distilbert_jax.encode.distributed import encode_across_processes  # noqa: E402

texts = [f"passage {i}: " + "protein binds receptor " * (i % 9) for i in range(23)]
model = SentenceTransformer.from_pretrained(model_path, deterministic=deterministic)
np.save(out_file, encode_across_processes(model, texts, batch_size=3 if deterministic else 4))
