"""Preflight: before ``jax.distributed.initialize``, every process checks that the work
directory can be written, so a missing bucket, a wrong endpoint or missing credentials
end every process within seconds with the same line (exit status 2, ``exits.CONFIG``),
instead of one process naming the bucket and the others a gloo deadline minutes later.

``check_workdir(workdir)``:

* a local directory: created if missing, a probe file written and removed;
* ``gs://bucket/...``: a TCP connection to the endpoints of both client stacks (gcsfs:
  ``STORAGE_EMULATOR_HOST`` or storage.googleapis.com; tensorstore, which Orbax writes
  arrays through: ``TENSORSTORE_GCS_HTTP_URL`` or the same), the bucket's metadata
  (gcsfs), then a probe object written, read back and removed under
  ``{workdir}/.neo_jax_preflight/`` through gcsfs and through tensorstore;
* another URL scheme: the probe object through ``etils.epath``.

Each step runs in a daemon thread bounded by ``timeout_s`` (the clients retry a refused
connection for tens of seconds). Errors are said in words: the bucket does not exist,
no permission to write (credentials), nothing answers at the endpoint.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse
import uuid

from neo_jax.core import paths
from neo_jax.train import exits

GCS_ENDPOINT = "https://storage.googleapis.com"


class PreflightError(RuntimeError):
  """The work directory cannot be used; the message says why."""
  exit_status = exits.CONFIG


def _bounded(fn, timeout_s: float, what: str):
  out: list = []

  def target():
    try:
      out.append((True, fn()))
    except BaseException as e:  # pylint: disable=broad-except
      out.append((False, e))

  t = threading.Thread(target=target, daemon=True)
  t.start()
  t.join(timeout_s)
  if not out:
    raise PreflightError(f"{what}: no answer within {timeout_s:g} s.")
  ok, value = out[0]
  if not ok:
    raise value
  return value


def _connect(url: str, timeout_s: float, client: str) -> None:
  u = urllib.parse.urlparse(url if "://" in url else f"http://{url}")
  port = u.port or (443 if u.scheme == "https" else 80)
  try:
    socket.create_connection((u.hostname, port), timeout=timeout_s).close()
  except OSError as e:
    raise PreflightError(f"cannot connect to the object store at {url} ({client}): {e}. "
                         "Check the endpoint (STORAGE_EMULATOR_HOST / "
                         "TENSORSTORE_GCS_HTTP_URL for an emulator) and the network.") from e


def _explain(exc: BaseException, workdir: str, bucket: str | None) -> str:
  text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
  low = text.lower()
  if isinstance(exc, FileNotFoundError) or "404" in low or "not found" in low:
    return (f"the bucket gs://{bucket} does not exist ({text}); create it or fix --workdir."
            if bucket else f"{workdir} does not exist ({text}).")
  if "401" in low or "credential" in low or "unauthenticated" in low:
    return (f"no valid credentials for {workdir} ({text}); on a VM the service account, "
            "elsewhere `gcloud auth application-default login` or "
            "GOOGLE_APPLICATION_CREDENTIALS.")
  if "403" in low or "forbidden" in low or "permission" in low:
    return (f"no permission to write {workdir} ({text}); the credentials in use need "
            "storage.objects.create / get / delete on the bucket.")
  return f"{workdir} is not writable ({text})."


def _probe_gcs(workdir: str, bucket: str, prefix: str, key: str, timeout_s: float) -> None:
  import fsspec  # pylint: disable=g-import-not-at-top
  fs = fsspec.filesystem("gs")
  _bounded(lambda: fs.info(bucket), timeout_s, f"gcsfs: the bucket gs://{bucket}")
  obj = f"{bucket}/{prefix}{key}"
  _bounded(lambda: fs.pipe_file(obj, b"neo_jax preflight\n"), timeout_s, f"gcsfs: writing {obj}")
  got = _bounded(lambda: fs.cat_file(obj), timeout_s, f"gcsfs: reading {obj}")
  if got != b"neo_jax preflight\n":
    raise PreflightError(f"gcsfs read back {got[:40]!r} from gs://{obj}, not what it wrote.")
  _bounded(lambda: fs.rm_file(obj), timeout_s, f"gcsfs: removing {obj}")

  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  kv = ts.KvStore.open({"driver": "gcs", "bucket": bucket, "path": prefix}).result(
      timeout=timeout_s)
  name = key + ".ts"
  kv.write(name, b"neo_jax preflight\n").result(timeout=timeout_s)
  got = kv.read(name).result(timeout=timeout_s).value
  if got != b"neo_jax preflight\n":
    raise PreflightError(f"tensorstore read back {got[:40]!r} from gs://{bucket}/{prefix}{name}.")
  kv.delete_range(ts.KvStore.KeyRange(name, name + "\0")).result(timeout=timeout_s)


def check_workdir(workdir: str, timeout_s: float = 15.0) -> None:
  """Raises ``PreflightError`` (its message names the cause) unless ``workdir`` can be
  written and read back through every client the trainer uses.

  Args:
    workdir: the ``--workdir`` (local path or URL).
    timeout_s: [s] for each step of the check.
  """
  key = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  if not paths.is_url(workdir):
    probe = os.path.join(os.fspath(paths.resolve(workdir)), f".neo_jax_preflight-{key}")
    try:
      os.makedirs(os.path.dirname(probe), exist_ok=True)
      with open(probe, "w") as f:
        f.write("neo_jax preflight\n")
      os.remove(probe)
    except OSError as e:
      raise PreflightError(f"the work directory {workdir} is not writable: {e}.") from e
    return
  u = urllib.parse.urlparse(workdir)
  bucket = u.netloc if u.scheme == "gs" else None
  prefix = u.path.strip("/")
  prefix = f"{prefix}/.neo_jax_preflight/" if prefix else ".neo_jax_preflight/"
  try:
    if bucket:
      _connect(os.environ.get("STORAGE_EMULATOR_HOST") or GCS_ENDPOINT, timeout_s, "gcsfs")
      _connect(os.environ.get("TENSORSTORE_GCS_HTTP_URL") or GCS_ENDPOINT, timeout_s,
               "tensorstore")
      _probe_gcs(workdir, bucket, prefix, key, timeout_s)
    else:
      p = paths.resolve(paths.join(workdir, ".neo_jax_preflight", key))
      _bounded(lambda: p.write_text("neo_jax preflight\n"), timeout_s, f"writing {p}")
      _bounded(p.unlink, timeout_s, f"removing {p}")
  except PreflightError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise PreflightError(_explain(e, workdir, bucket)) from e
