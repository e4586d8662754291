"""GKE launcher: an xpk workload, or a JobSet manifest for ``kubectl``.

    bash launch/build_image.sh us-docker.pkg.dev/my-proj/neo     # prints the image
    python launch/xpk.py --cluster=my-gke --zone=us-east5-a --project=my-proj \\
        --workload=neo-ov-9b-s3 --tpu_type=v5p-256 --num_slices=2 \\
        --image=us-docker.pkg.dev/my-proj/neo/neo_jax:abc123 --workdir=gs://bucket/run -- \\
        --config neo_ov_9b:stage3 --config.dcn_mesh.data=2 --config.mesh.fsdp=16 \\
        --config.mesh.tensor=4 --config.mesh.context=2

Default: ``xpk workload create`` with every flag it needs: ``--zone`` (always; xpk
otherwise reads gcloud's default), ``--tpu-type`` in xpk's names (``v5e-16`` ->
``v5litepod-16``), ``--num-slices``, the image (``--image`` -> ``--docker-image``; or
``--base_image`` -> ``--base-docker-image`` plus ``--script-dir`` = this checkout, which
xpk copies over ``/app`` of the base image, where the Dockerfile installs the package),
``--max-restarts``, ``--termination-grace-period-seconds`` (the preemption save) and
``--command``. The image defaults to ``$NEO_JAX_IMAGE``. xpk (and GKE) give every pod its
worker id, host list and, for several slices, the ``MEGASCALE_*`` variables.

``--manifest FILE`` writes the equivalent JobSet (``launch/jobset.py``) instead:
``kubectl apply -f FILE``; watch it with ``kubectl get jobset,pods`` and ``kubectl logs``,
stop it with ``kubectl delete -f FILE`` (the pods get SIGTERM: the job saves and exits).
With xpk: ``xpk workload list`` / ``xpk workload delete --workload=NAME``.
``--dry_run`` prints the command (and the manifest) without running anything.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import jobset as jobset_lib  # noqa: E402  pylint: disable=g-import-not-at-top


def train_command(a, train_args: list[str]) -> str:
  """The shell command every host runs (in the image's ``/app``)."""
  return shlex.join(["python3", "-m", "neo_jax.train", "--distributed",
                     f"--workdir={a.workdir}"] + train_args)


def xpk_command(a, train_args: list[str]) -> list[str]:
  """``xpk workload create ...`` (argv)."""
  cmd = ["xpk", "workload", "create", f"--cluster={a.cluster}", f"--workload={a.workload}",
         f"--tpu-type={jobset_lib.xpk_tpu_type(a.tpu_type)}", f"--num-slices={a.num_slices}",
         f"--zone={a.zone}"]
  if a.project:
    cmd.append(f"--project={a.project}")
  if a.base_image:
    cmd += [f"--base-docker-image={a.base_image}", f"--script-dir={a.src}"]
  else:
    cmd.append(f"--docker-image={a.image}")
  cmd += [f"--max-restarts={a.max_restarts}",
          f"--termination-grace-period-seconds={a.grace_period_s}"]
  cmd += [f"--env={kv}" for kv in a.env]
  cmd.append(f"--command={train_command(a, train_args)}")
  return cmd


def manifest(a, train_args: list[str]) -> str:
  """The JobSet YAML of the same job."""
  import yaml  # pylint: disable=g-import-not-at-top
  js = jobset_lib.jobset(a.workload, a.tpu_type, a.num_slices, a.image,
                         train_command(a, train_args), service_account=a.service_account,
                         grace_period_s=a.grace_period_s, max_restarts=a.max_restarts,
                         env=dict(kv.split("=", 1) for kv in a.env))
  return yaml.safe_dump(js, sort_keys=False, width=1000)


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--cluster", default="", help="GKE cluster (xpk)")
  ap.add_argument("--zone", required=True, help="the cluster's zone")
  ap.add_argument("--project", default="")
  ap.add_argument("--workload", required=True, help="job name (a DNS label)")
  ap.add_argument("--tpu_type", required=True, help="slice: v5p-256, v6e-256, v5e-64, v4-32")
  ap.add_argument("--num_slices", type=int, default=1)
  ap.add_argument("--image", default=os.environ.get("NEO_JAX_IMAGE", ""),
                  help="image with neo_jax installed (launch/build_image.sh); $NEO_JAX_IMAGE")
  ap.add_argument("--base_image", default="",
                  help="xpk only: base image; xpk adds this checkout (--src) on top")
  ap.add_argument("--src", default=os.path.dirname(HERE), help="checkout for --base_image")
  ap.add_argument("--workdir", required=True, help="gs:// work directory")
  ap.add_argument("--service_account", default="default",
                  help="manifest: Kubernetes service account with access to the bucket")
  ap.add_argument("--grace_period_s", type=int, default=300,
                  help="seconds from SIGTERM to SIGKILL: time for the preemption save")
  ap.add_argument("--max_restarts", type=int, default=3, help="restarts of the whole job")
  ap.add_argument("--env", action="append", default=[], help="K=V for the container (repeat)")
  ap.add_argument("--manifest", default="", help="write a JobSet YAML here instead of using xpk")
  ap.add_argument("--dry_run", action="store_true")
  ap.add_argument("train_args", nargs=argparse.REMAINDER, help="-- arguments of neo_jax.train")
  a = ap.parse_args(argv)
  a.train_args = a.train_args[1:] if a.train_args[:1] == ["--"] else a.train_args
  if not a.manifest and not a.cluster:
    ap.error("--cluster is required for xpk (or write a --manifest)")
  if a.base_image and (a.image or a.manifest):
    if a.manifest:
      ap.error("--base_image is xpk's; a manifest needs a complete --image")
    a.image = ""
  if not (a.image or a.base_image):
    ap.error("give --image (or set NEO_JAX_IMAGE); build one with: bash launch/build_image.sh "
             "<registry>")
  for kv in a.env:
    if "=" not in kv:
      ap.error(f"--env wants K=V, got {kv!r}")
  try:
    jobset_lib.slice_hosts(a.tpu_type)
  except (ValueError, KeyError) as e:
    ap.error(f"--tpu_type: {e}")
  return a


def main(argv=None) -> int:
  a = parse_args(argv)
  if a.manifest:
    text = manifest(a, a.train_args)
    cmd = ["kubectl", "apply", "-f", a.manifest]
    if a.dry_run:
      print(text)
    else:
      with open(a.manifest, "w") as f:
        f.write(text)
  else:
    cmd = xpk_command(a, a.train_args)
  print(shlex.join(cmd), flush=True)
  return 0 if a.dry_run else subprocess.call(cmd)


if __name__ == "__main__":
  sys.exit(main())
