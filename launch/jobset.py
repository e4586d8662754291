"""A JobSet manifest for a TPU training job on GKE (``kubectl apply -f``), as xpk writes one.

One replicated Job per slice (``replicas`` = slices), one pod per TPU VM host
(``parallelism`` = ``completions`` = hosts, Indexed), the whole JobSet restarted on any
failure (``backoffLimit: 0``, ``failurePolicy.maxRestarts``). The pod spec follows xpk
1.16.0's ``WORKLOAD_CREATE_YAML`` (``xpk/commands/workload.py``): ``restartPolicy: Never``
(Kubernetes accepts only Never / OnFailure in a Job), ``hostNetwork: true`` with
``dnsPolicy: ClusterFirstWithHostNet`` (the TPU runtime and the DCN traffic use the host's
network, names still resolve through the cluster DNS), the TPU toleration, a privileged
container, ``terminationGracePeriodSeconds`` long enough for the preemption save (SIGTERM
-> every process saves the same step; ``neo_jax/train/preemption.py``), and
``serviceAccountName`` (the Kubernetes service account bound to a Google service account
with access to the bucket: Workload Identity). Several slices: ``MEGASCALE_*`` set from the
JobSet's labels and pod 0 of slice 0's DNS name, as xpk's Pathways template and its
GPU / CPU coordinator variable do.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# TPU generation -> GKE accelerator label; every multi-host TPU VM has 4 chips
# (xpk's ``UserFacingNameToSystemCharacteristics``: ct5p / ct5lp / ct6e / ct4p ``-4t``).
GKE_ACCELERATOR = {"v5p": "tpu-v5p-slice", "v6e": "tpu-v6e-slice",
                   "v5e": "tpu-v5-lite-podslice", "v4": "tpu-v4-podslice"}
CHIPS_PER_HOST = 4
MEGASCALE_PORT = 8080


def xpk_tpu_type(tpu_type: str) -> str:
  """xpk's name of a slice: ``v5e-N`` is ``v5litepod-N`` (N chips); others are the same."""
  return "v5litepod-" + tpu_type[4:] if tpu_type.startswith("v5e-") else tpu_type


def slice_hosts(tpu_type: str) -> tuple[str, str, int, int]:
  """(GKE accelerator label, topology ``AxB[xC]``, hosts, chips per host) of a slice.

  Raises:
    ValueError: a name ``neo_jax.aot.parse_topology`` does not know.
  """
  from neo_jax.aot import parse_topology  # pylint: disable=g-import-not-at-top
  topo = parse_topology(tpu_type)
  chips = topo.num_devices
  per_host = min(CHIPS_PER_HOST, chips)
  return (GKE_ACCELERATOR[topo.chip.name], "x".join(map(str, topo.shape)),
          chips // per_host, per_host)


def _env(num_slices: int, extra: dict) -> list[dict]:
  env = [{"name": "JOBSET_NAME", "valueFrom": {"fieldRef": {
             "fieldPath": "metadata.annotations['jobset.sigs.k8s.io/jobset-name']"}}},
         {"name": "REPLICATED_JOB_NAME", "valueFrom": {"fieldRef": {
             "fieldPath": "metadata.annotations['jobset.sigs.k8s.io/replicatedjob-name']"}}}]
  if num_slices > 1:
    env += [{"name": "MEGASCALE_COORDINATOR_ADDRESS",
             "value": "$(JOBSET_NAME)-$(REPLICATED_JOB_NAME)-0-0.$(JOBSET_NAME)"},
            {"name": "MEGASCALE_NUM_SLICES", "value": str(num_slices)},
            {"name": "MEGASCALE_SLICE_ID", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.labels['jobset.sigs.k8s.io/job-index']"}}},
            {"name": "MEGASCALE_PORT", "value": str(MEGASCALE_PORT)}]
  env += [{"name": k, "value": v} for k, v in extra.items()]
  return env


def jobset(name: str, tpu_type: str, num_slices: int, image: str, command: str, *,
           service_account: str = "default", grace_period_s: int = 300, max_restarts: int = 3,
           ttl_s: int = 12 * 3600, env: dict | None = None) -> dict:
  """The JobSet as a dict (``yaml.safe_dump`` it).

  Args:
    name: JobSet name (a DNS label).
    tpu_type: slice name as ``neo_jax.aot`` parses it (``v5p-256``, ``v5e-16``, ...).
    num_slices: replicas of the slice Job.
    image: container image with neo_jax installed (``Dockerfile``).
    command: shell command of every pod (``exec``'d, so the trainer gets the SIGTERM).
    service_account: Kubernetes service account of the pods.
    grace_period_s: [s] between SIGTERM and SIGKILL (the preemption save).
    max_restarts: JobSet restarts after a failure (each resumes from the last checkpoint).
    ttl_s: [s] the finished JobSet is kept.
    env: extra container variables.
  """
  label, topology, hosts, per_host = slice_hosts(tpu_type)
  pod = {
      "restartPolicy": "Never",
      "hostNetwork": True,
      "dnsPolicy": "ClusterFirstWithHostNet",
      "terminationGracePeriodSeconds": int(grace_period_s),
      "serviceAccountName": service_account,
      "nodeSelector": {"cloud.google.com/gke-tpu-accelerator": label,
                       "cloud.google.com/gke-tpu-topology": topology},
      "tolerations": [{"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"}],
      "containers": [{
          "name": "train",
          "image": image,
          "imagePullPolicy": "Always",
          "securityContext": {"privileged": True},
          "env": _env(num_slices, env or {}),
          "command": ["bash", "-c", "exec " + command],
          "resources": {"limits": {"google.com/tpu": per_host}},
      }],
  }
  return {
      "apiVersion": "jobset.x-k8s.io/v1alpha2",
      "kind": "JobSet",
      "metadata": {"name": name, "annotations": {
          "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}},
      "spec": {
          "ttlSecondsAfterFinished": int(ttl_s),
          "failurePolicy": {"maxRestarts": int(max_restarts)},
          "network": {"enableDNSHostnames": True},
          "replicatedJobs": [{
              "name": "slice",
              "replicas": int(num_slices),
              "template": {"spec": {
                  "parallelism": hosts,
                  "completions": hosts,
                  "completionMode": "Indexed",
                  "backoffLimit": 0,
                  "template": {"metadata": {"labels": {"app.kubernetes.io/name": "neo-jax",
                                                       "neo-jax/workload": name}},
                               "spec": pod},
              }},
          }],
      },
  }
