"""Conditional writes on object stores, one table by protocol: S3 (`If-None-Match: *`, `If-Match: ETAG`, as in
s3fs' own `mode="create"`) and GCS (`ifGenerationMatch`, as in gcsfs' own `mode="create"`). A protocol outside the
table has no precondition to commit by and is refused by name (it would let two writers overwrite each other)."""

from __future__ import annotations

import contextlib
import errno
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote


class PreconditionFailed(RuntimeError):
  """Another writer created or changed the object since this writer read it."""


class StorageError(OSError):
  """A store that cannot be used as asked (missing bucket, missing extra, no preconditions); names the URL."""


def _lost(e: BaseException) -> bool:
  """Whether a client error is the store's 412 Precondition Failed (s3fs and gcsfs map it to these)."""
  return isinstance(e, FileExistsError) or (
    isinstance(e, OSError) and (e.errno == errno.EINVAL or "PreconditionFailed" in str(e) or "412" in str(e))
  )


@contextlib.contextmanager
def _conditional(fs: Any, url: str) -> Iterator[None]:
  """A conditional write: the store's 412 as PreconditionFailed; the client's caches of the key dropped after."""
  try:
    yield
  except Exception as e:
    if _lost(e):
      raise PreconditionFailed(f"{url}: changed by another writer") from None
    raise
  finally:
    fs.invalidate_cache(url.split("://", 1)[1])


class S3:
  @staticmethod
  def publish(fs: Any, key: str, data: bytes, expect: str, absent: str) -> str:
    bucket, name = key.split("/", 1)
    match = {"IfNoneMatch": "*"} if expect == absent else {"IfMatch": expect}
    with _conditional(fs, f"s3://{key}"):
      out = fs.call_s3("put_object", Bucket=bucket, Key=name, Body=data, **match)
    return str(out["ETag"])


class GCS:
  @staticmethod
  def publish(fs: Any, key: str, data: bytes, expect: str, absent: str) -> str:
    """gcsfs' simple (multipart) upload with the generation precondition it sets only for create."""
    bucket, name = key.split("/", 1)
    metadata = json.dumps({"name": name})
    body = (
      (
        f"--==0==\nContent-Type: application/json; charset=UTF-8\n\n{metadata}\n--==0==\n"
        "Content-Type: application/octet-stream\n\n"
      ).encode()
      + data
      + b"\n--==0==--"
    )
    with _conditional(fs, f"gs://{key}"):
      out = fs.call(
        "POST",
        f"{fs._location}/upload/storage/v1/b/{quote(bucket)}/o",
        uploadType="multipart",
        headers={"Content-Type": 'multipart/related; boundary="==0=="'},
        data=body,
        json_out=True,
        ifGenerationMatch="0" if expect == absent else expect,
      )
    return str(out["generation"])


BACKENDS = {"s3": S3, "s3a": S3, "gs": GCS, "gcs": GCS}


def backend(protocol: str, url: str):
  try:
    return BACKENDS[protocol]
  except KeyError:
    raise StorageError(
      f"{url}: {protocol}:// has no conditional write here (supported: {', '.join(sorted(BACKENDS))}, local paths)"
    ) from None
