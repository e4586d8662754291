"""GKE launcher: an xpk workload, or a plain JobSet manifest for kubectl.

    python launch/xpk.py --cluster=my-gke --workload=neo-ov-9b-s3 --tpu_type=v5p-256 \\
        --num_slices=1 --image=gcr.io/proj/neo_jax:latest --workdir=gs://bucket/run -- \\
        --config configs/neo_ov_9b.py:stage3 --config.mesh.fsdp=32 --config.mesh.tensor=4

Default: ``xpk workload create ...`` (xpk builds the JobSet, one pod per TPU VM
host). ``--manifest FILE`` instead writes a JobSet YAML (``kubectl apply -f
FILE``) with the TPU node selectors and ``google.com/tpu`` limits; on GKE,
``jax.distributed`` finds its peers from the JobSet / megascale environment.
Multi-slice: ``--num_slices=N`` and ``--config.dcn_mesh.data=N``.
``--dry_run`` prints the command (and the manifest) without running anything.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

# TPU generation -> (GKE accelerator label, chips per host VM).
_GKE = {
    "v5p": ("tpu-v5p-slice", 4), "v6e": ("tpu-v6e-slice", 4), "v5e": ("tpu-v5-lite-podslice", 4),
    "v4": ("tpu-v4-podslice", 4),
}


def train_command(a, train_args: list[str]) -> str:
  return shlex.join(["python3", "-m", "neo_jax.train", "--distributed",
                     f"--workdir={a.workdir}"] + train_args)


def xpk_command(a, train_args: list[str]) -> list[str]:
  return ["xpk", "workload", "create", f"--cluster={a.cluster}", f"--workload={a.workload}",
          f"--tpu-type={a.tpu_type}", f"--num-slices={a.num_slices}",
          f"--docker-image={a.image}", f"--command={train_command(a, train_args)}"] + (
              [f"--project={a.project}", f"--zone={a.zone}"] if a.project else [])


def jobset_manifest(a, train_args: list[str]) -> str:
  """A JobSet with one replicated Job per slice, one pod per TPU host."""
  from neo_jax.aot import parse_topology  # pylint: disable=g-import-not-at-top
  topo = parse_topology(a.tpu_type)
  chips = topo.num_devices
  label, per_host = _GKE[topo.chip.name]
  hosts = max(1, chips // per_host)
  shape = "x".join(map(str, topo.shape))
  return f"""apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata:
  name: {a.workload}
  annotations:
    alpha.jobset.sigs.k8s.io/exclusive-topology: cloud.google.com/gke-nodepool
spec:
  failurePolicy:
    maxRestarts: 3
  replicatedJobs:
  - name: slice
    replicas: {a.num_slices}
    template:
      spec:
        parallelism: {hosts}
        completions: {hosts}
        backoffLimit: 0
        template:
          spec:
            nodeSelector:
              cloud.google.com/gke-tpu-accelerator: {label}
              cloud.google.com/gke-tpu-topology: {shape}
            containers:
            - name: train
              image: {a.image}
              command: ["bash", "-c", {train_command(a, train_args)!r}]
              resources:
                limits:
                  google.com/tpu: {per_host if chips >= per_host else chips}
"""


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--cluster", default="")
  ap.add_argument("--workload", required=True)
  ap.add_argument("--tpu_type", required=True, help="e.g. v5p-256, v6e-256")
  ap.add_argument("--num_slices", type=int, default=1)
  ap.add_argument("--image", required=True, help="container image with neo_jax installed")
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--project", default="")
  ap.add_argument("--zone", default="")
  ap.add_argument("--manifest", default="", help="write a JobSet YAML here instead of using xpk")
  ap.add_argument("--dry_run", action="store_true")
  ap.add_argument("train_args", nargs=argparse.REMAINDER)
  a = ap.parse_args(argv)
  train_args = a.train_args[1:] if a.train_args[:1] == ["--"] else a.train_args
  if a.manifest:
    text = jobset_manifest(a, train_args)
    cmd = ["kubectl", "apply", "-f", a.manifest]
    if a.dry_run:
      print(text)
    else:
      with open(a.manifest, "w") as f:
        f.write(text)
  else:
    if not a.cluster:
      ap.error("--cluster is required for xpk")
    cmd = xpk_command(a, train_args)
  print(shlex.join(cmd), flush=True)
  return 0 if a.dry_run else subprocess.call(cmd)


if __name__ == "__main__":
  sys.exit(main())
