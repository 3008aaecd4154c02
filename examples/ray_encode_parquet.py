"""Encode a Parquet corpus to Parquet embeddings with Ray Data (the cluster recipe; see the README).

  python examples/ray_encode_parquet.py CORPUS OUT --model MODEL [--concurrency N] [--num-gpus G]

CORPUS and OUT are paths or URLs (s3://, gs://) Ray Data reads and writes through pyarrow. Each of the N actors
loads the model once (`distilbert_jax.integrations.ray.Embedder`) and encodes batches of `--batch-size` rows; the
output has the input's columns plus `embedding` (float32 [dim] per row). With `--address auto` it joins a running
cluster; without, it starts a local one on this machine's CPUs.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("corpus")
  parser.add_argument("out")
  parser.add_argument("--model", required=True)
  parser.add_argument("--concurrency", type=int, default=1, help="actors, each with its own model")
  parser.add_argument("--num-gpus", type=float, default=0, help="GPUs per actor (0 on CPU)")
  parser.add_argument(
    "--actor-cpus", type=float, default=1, help="CPUs per actor (leave some of the cluster to reading and writing)"
  )
  parser.add_argument("--batch-size", type=int, default=256, help="rows per map_batches call")
  parser.add_argument("--text-column", default="text")
  parser.add_argument("--address", default=None, help="a running cluster ('auto'); default: a local one")
  parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local cluster")
  args = parser.parse_args(argv)

  import ray

  from distilbert_jax.integrations.ray import Embedder

  ray.init(address=args.address, num_cpus=args.num_cpus, include_dashboard=False)
  ds = ray.data.read_parquet(args.corpus)
  ds = ds.map_batches(
    Embedder,
    fn_constructor_kwargs={"model": args.model, "text_column": args.text_column},
    batch_size=args.batch_size,
    batch_format="numpy",
    concurrency=args.concurrency,
    num_gpus=args.num_gpus,
    num_cpus=args.actor_cpus,
  )
  ds.write_parquet(args.out)
  print(f"wrote embeddings of {args.corpus} to {args.out}")


if __name__ == "__main__":
  main()
