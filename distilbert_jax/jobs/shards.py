"""A shard's bytes, in either output format, and back.

- `npy`: `shard-NNNNNN.npy` (the [rows, width] array) beside `shard-NNNNNN.ids.json` (its ids); memory-mapped back
  when local.
- `parquet`: `shard-NNNNNN.parquet`, one file per shard with an `id` string column and an `embedding` column of
  fixed-size lists (float32, or the stored codes: int8, uint8, packed bits), the layout vector databases bulk-load.
"""

from __future__ import annotations

import io
import json

import numpy as np

from distilbert_jax.core.files import npy_bytes
from distilbert_jax.core.storage import Store

FORMATS = ("npy", "parquet")
ID_COLUMN, EMBEDDING_COLUMN = "id", "embedding"


def check_format(fmt: str) -> str:
  if fmt not in FORMATS:
    raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
  return fmt


def shard_files(name: str, fmt: str) -> dict[str, str]:
  """The files of shard `name` ("shard-000000"): {"file": ..., "ids": ...} (Parquet keeps its ids inside)."""
  if fmt == "parquet":
    return {"file": f"{name}.parquet"}
  return {"file": f"{name}.npy", "ids": f"{name}.ids.json"}


def shard_bytes(embeddings: np.ndarray, ids: list[str], fmt: str) -> dict[str, bytes]:
  """{"file": bytes, "ids": bytes} of one shard (see `shard_files`)."""
  if fmt == "npy":
    return {"file": npy_bytes(embeddings), "ids": json.dumps(ids).encode()}
  import pyarrow as pa
  import pyarrow.parquet as pq

  rows, width = embeddings.shape
  values = pa.array(np.ascontiguousarray(embeddings).reshape(-1))
  table = pa.table(
    {ID_COLUMN: pa.array(ids, pa.string()), EMBEDDING_COLUMN: pa.FixedSizeListArray.from_arrays(values, width)}
  )
  buffer = io.BytesIO()
  pq.write_table(table, buffer, compression="none")
  return {"file": buffer.getvalue()}


def read_shard(store: Store, shard: dict, fmt: str, data: bytes | None = None) -> tuple[list[str], np.ndarray]:
  """(ids, [rows, width] array) of a committed shard; a local `npy` shard is memory-mapped, anything else read
  (from `data` when the caller has its bytes already, as after checking their sha256)."""
  where = store.where(shard["file"])
  if fmt == "parquet":
    import pyarrow.parquet as pq

    try:
      table = pq.read_table(io.BytesIO(data if data is not None else store.read_bytes(shard["file"])))
      ids = table.column(ID_COLUMN).to_pylist()
      column = table.column(EMBEDDING_COLUMN).combine_chunks()
      array = column.flatten().to_numpy(zero_copy_only=False).reshape(len(ids), -1)
    except Exception as e:  # pyarrow's error for damaged bytes or another schema, with the file named
      raise ValueError(f"{where}: not a readable embeddings shard ({e})") from None
    return ids, array
  ids = json.loads(store.read_bytes(shard["ids"]))
  local = store.path(shard["file"])
  if local is not None and data is None:
    return ids, np.load(local, mmap_mode="r")
  return ids, np.load(io.BytesIO(data if data is not None else store.read_bytes(shard["file"])))
