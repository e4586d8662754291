"""TPU VM pod launcher: the same command on every worker of a TPU VM slice.

    python launch/tpu_pod.py --tpu=neo-v5p-256 --zone=us-east5-a --project=my-proj \\
        --workdir=gs://bucket/neo_ov_9b_s3 -- \\
        --config configs/neo_ov_9b.py:stage3 --config.mesh.fsdp=32 --config.mesh.tensor=4

Runs ``gcloud compute tpus tpu-vm ssh TPU --worker=all --command=...``; the
command ``cd``s into the checkout on each worker and starts
``python -m neo_jax.train --distributed`` (``jax.distributed`` finds the
coordinator, process count and index from the TPU VM metadata). ``--setup``
first copies the checkout (``scp --worker=all``) and installs it.
``--dry_run`` prints the gcloud commands without running them.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys


def commands(a, train_args: list[str]) -> list[list[str]]:
  """The gcloud argv lists the launch runs, in order."""
  base = ["gcloud", "compute", "tpus", "tpu-vm"]
  where = [f"--zone={a.zone}"] + ([f"--project={a.project}"] if a.project else [])
  out = []
  if a.setup:
    out.append(base + ["scp", "--recurse", a.src, f"{a.tpu}:~/", "--worker=all"] + where)
    out.append(base + ["ssh", a.tpu, "--worker=all"] + where +
               [f"--command=cd ~/{a.remote_dir} && pip install -q -r requirements-lock.txt && "
                "pip install -q -e ."])
  train = ["python3", "-m", "neo_jax.train", "--distributed", f"--workdir={a.workdir}"] + train_args
  cmd = f"cd ~/{a.remote_dir} && {a.env + ' ' if a.env else ''}{shlex.join(train)}"
  out.append(base + ["ssh", a.tpu, "--worker=all"] + where + [f"--command={cmd}"])
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--tpu", required=True, help="TPU VM name")
  ap.add_argument("--zone", required=True)
  ap.add_argument("--project", default="")
  ap.add_argument("--workdir", required=True, help="checkpoint / log directory (gs:// on pods)")
  ap.add_argument("--src", default=".", help="local checkout copied by --setup")
  ap.add_argument("--remote_dir", default="neo_jax", help="checkout directory on the workers")
  ap.add_argument("--env", default="", help="environment prefix, e.g. 'LIBTPU_INIT_ARGS=...'")
  ap.add_argument("--setup", action="store_true", help="copy the checkout and install first")
  ap.add_argument("--dry_run", action="store_true")
  ap.add_argument("train_args", nargs=argparse.REMAINDER, help="-- arguments of neo_jax.train")
  a = ap.parse_args(argv)
  train_args = a.train_args[1:] if a.train_args[:1] == ["--"] else a.train_args
  for cmd in commands(a, train_args):
    print(shlex.join(cmd), flush=True)
    if not a.dry_run:
      rc = subprocess.call(cmd)
      if rc:
        return rc
  return 0


if __name__ == "__main__":
  sys.exit(main())
