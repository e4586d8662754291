"""``launch/xpk.py`` checked by xpk's own parser and the JobSet manifest by the schemas.

* The xpk command line is parsed by xpk 1.16.0's argument parser (``xpk.parser.core``),
  in its own virtual environment (xpk pins ``google-api-core``, ``packaging``, ``urllib3``
  versions that conflict with ``requirements-lock.txt``): created on first use from the
  ``xpk`` extra of ``pyproject.toml`` under ``$NEO_JAX_TOOLS_DIR`` (default
  ``~/.cache/neo_jax/tools``), ~35 s and ~400 MB once. xpk's slice table
  (``UserFacingNameToSystemCharacteristics``) is the independent reference for the
  manifest's hosts, topology, accelerator label and chips per host.
* The manifest: each replicated Job's template is validated as a ``batch/v1`` Job by
  ``kubernetes-validate`` (Kubernetes 1.37 schema, strict: unknown fields are errors); the
  JobSet around it against the JobSet v0.10.1 CRD's OpenAPI schema
  (``testlib/jobset_v1alpha2_schema.json``, made strict the same way). Not validated: the
  CRD's CEL rules (immutability; a startupPolicy rule that does not apply) and the API
  server's semantic checks, which are asserted directly where they matter
  (``restartPolicy``, variable references).
"""

import json
import os
import subprocess
import sys
import tomllib

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "launch"))
import jobset as jobset_lib  # noqa: E402  pylint: disable=g-import-not-at-top
import xpk as xpk_launcher  # noqa: E402  pylint: disable=g-import-not-at-top

K8S_VERSION = "1.37.0"
_PARSE = r"""
import argparse, json, sys
from xpk.parser.core import set_parser
from xpk.core.system_characteristics import UserFacingNameToSystemCharacteristics as table
if sys.argv[1] == "table":
  print(json.dumps({k: [s.topology, s.vms_per_slice, s.gke_accelerator, s.chips_per_vm]
                    for k, s in table.items()}))
  sys.exit(0)
p = argparse.ArgumentParser(prog="xpk")
set_parser(parser=p)
a = p.parse_args(sys.argv[2:])
print(json.dumps({k: v for k, v in vars(a).items()
                  if isinstance(v, (str, int, float, bool, list, type(None)))}))
"""


def _xpk_requirement() -> str:
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    (req,) = tomllib.load(f)["project"]["optional-dependencies"]["xpk"]
  return req


@pytest.fixture(scope="module")
def xpk_python(tmp_path_factory):
  """The interpreter of a virtual environment with the pinned xpk (built once, cached)."""
  req = _xpk_requirement()
  base = os.environ.get("NEO_JAX_TOOLS_DIR") or os.path.join(
      os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "neo_jax", "tools")
  venv = os.path.join(base, f"{req.replace('==', '-')}-py{sys.version_info[0]}{sys.version_info[1]}")
  python = os.path.join(venv, "bin", "python")
  if not os.path.exists(os.path.join(venv, ".complete")):
    tmp = f"{venv}.tmp{os.getpid()}"
    subprocess.run([sys.executable, "-m", "venv", "--clear", tmp], check=True)
    r = subprocess.run([os.path.join(tmp, "bin", "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", req], capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, f"pip install {req} failed (needs the package index):\n{r.stderr}"
    open(os.path.join(tmp, ".complete"), "w").close()
    try:
      os.rename(tmp, venv)
    except OSError:  # built meanwhile by another test process
      subprocess.run(["rm", "-rf", tmp], check=False)
  home = tmp_path_factory.mktemp("xpk_home")  # xpk keeps its config under ~
  return lambda *args: subprocess.run([python, "-c", _PARSE, *args], capture_output=True,
                                      text=True, timeout=120, env=dict(os.environ, HOME=str(home)))


@pytest.fixture(scope="module")
def xpk_table(xpk_python):
  r = xpk_python("table")
  assert r.returncode == 0, r.stderr
  return json.loads(r.stdout)


def _xpk_args(flags):
  a = xpk_launcher.parse_args(flags)
  cmd = xpk_launcher.xpk_command(a, a.train_args)
  assert cmd[:1] == ["xpk"]
  return a, cmd


@pytest.mark.parametrize("tpu_type,slices,image_flag", [
    ("v5p-256", 2, "--image=us-docker.pkg.dev/p/r/neo_jax:abc"),
    ("v5e-16", 1, "--base_image=us-docker.pkg.dev/p/r/neo_jax:deps"),
    ("v6e-256", 4, "--image=img:1")])
def test_xpk_command_parses_with_xpks_parser(xpk_python, tpu_type, slices, image_flag):
  a, cmd = _xpk_args([f"--cluster=c", "--zone=us-east5-a", "--project=p", "--workload=neo9",
                      f"--tpu_type={tpu_type}", f"--num_slices={slices}", image_flag,
                      "--workdir=gs://b/r", "--env=LIBTPU_INIT_ARGS=--x=1", "--",
                      "--config", "configs/neo_ov_9b.py:stage3", "--config.dcn_mesh.data=2"])
  r = xpk_python("parse", *cmd[1:])
  assert r.returncode == 0, r.stderr
  got = json.loads(r.stdout)
  assert (got["xpk_subcommands"], got["xpk_workload_subcommands"]) == ("workload", "create")
  assert got["tpu_type"] == jobset_lib.xpk_tpu_type(tpu_type)
  assert (got["cluster"], got["workload"], got["zone"], got["project"], got["num_slices"]) == (
      "c", "neo9", "us-east5-a", "p", slices)
  assert got["command"] == ("python3 -m neo_jax.train --distributed --workdir=gs://b/r "
                            "--config configs/neo_ov_9b.py:stage3 --config.dcn_mesh.data=2")
  assert got["env"] == ["LIBTPU_INIT_ARGS=--x=1"]
  assert (got["max_restarts"], got["termination_grace_period_seconds"]) == ("3", "300")
  if image_flag.startswith("--image"):
    assert got["docker_image"] == image_flag.split("=", 1)[1]
  else:
    assert got["base_docker_image"] == image_flag.split("=", 1)[1]
    assert got["docker_image"] is None and got["script_dir"] == ROOT


def test_xpk_rejects_our_topology_name_for_v5e(xpk_python):
  """Why the name is translated: xpk's parser has no ``v5e-16`` (it is ``v5litepod-16``)."""
  _, cmd = _xpk_args(["--cluster=c", "--zone=z", "--workload=w", "--tpu_type=v5e-16",
                      "--image=i", "--workdir=gs://b/r"])
  bad = [c if not c.startswith("--tpu-type=") else "--tpu-type=v5e-16" for c in cmd]
  r = xpk_python("parse", *bad[1:])
  assert r.returncode == 2 and "v5e-16" in r.stderr


def _strict(schema):
  """The schema with ``additionalProperties: false`` wherever properties are listed and
  unknown fields are not explicitly allowed (kubernetes-validate's "strict")."""
  if isinstance(schema, dict):
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get(
        "x-kubernetes-preserve-unknown-fields"):
      out["additionalProperties"] = False
    return out
  if isinstance(schema, list):
    return [_strict(v) for v in schema]
  return schema


def validate_jobset(js: dict) -> None:
  """Raises on a JobSet that the CRD schema or (per replicated Job) the Job schema rejects."""
  with open(os.path.join(ROOT, "tests", "testlib", "jobset_v1alpha2_schema.json")) as f:
    schema = _strict(json.load(f)["schema"])
  jsonschema.Draft7Validator(schema).validate(js)
  for rj in js["spec"]["replicatedJobs"]:
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": f"{js['metadata']['name']}-{rj['name']}-0"},
           "spec": rj["template"]["spec"]}
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)


@pytest.mark.parametrize("tpu_type", ["v5p-8", "v5p-256", "v5e-16", "v6e-256", "v4-32", "v6e-8"])
@pytest.mark.parametrize("slices", [1, 2])
def test_manifest_validates_and_matches_xpks_slice_table(xpk_table, tpu_type, slices):
  r = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "xpk.py"),
                      "--manifest=js.yaml", "--zone=z", "--workload=neo-9b",
                      f"--tpu_type={tpu_type}", f"--num_slices={slices}", "--image=img:1",
                      "--workdir=gs://b/r", "--service_account=neo-ksa", "--env=A=1",
                      "--dry_run", "--", "--config", "c.py"],
                     capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
  assert r.returncode == 0, r.stderr
  *manifest, last = r.stdout.strip().splitlines()
  assert last == "kubectl apply -f js.yaml"
  js = yaml.safe_load("\n".join(manifest))
  validate_jobset(js)

  topology, hosts, accelerator, chips = xpk_table[jobset_lib.xpk_tpu_type(tpu_type)]
  rj = js["spec"]["replicatedJobs"][0]
  job = rj["template"]["spec"]
  pod = job["template"]["spec"]
  assert rj["replicas"] == slices and job["parallelism"] == job["completions"] == hosts
  assert job["completionMode"] == "Indexed" and job["backoffLimit"] == 0
  assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": accelerator,
                                 "cloud.google.com/gke-tpu-topology": topology}
  (c,) = pod["containers"]
  assert c["resources"]["limits"] == {"google.com/tpu": chips}
  # What the API server and the job need beyond the schema.
  assert pod["restartPolicy"] in ("Never", "OnFailure")  # the only ones a Job accepts
  assert (pod["hostNetwork"], pod["dnsPolicy"]) == (True, "ClusterFirstWithHostNet")
  assert pod["terminationGracePeriodSeconds"] == 300 and pod["serviceAccountName"] == "neo-ksa"
  assert c["command"] == ["bash", "-c", "exec python3 -m neo_jax.train --distributed "
                          "--workdir=gs://b/r --config c.py"]
  env = {e["name"]: e for e in c["env"]}
  assert env["A"]["value"] == "1"
  names = [e["name"] for e in c["env"]]
  for i, e in enumerate(c["env"]):  # $(VAR) expands only variables defined before it
    for ref in ("JOBSET_NAME", "REPLICATED_JOB_NAME"):
      if f"$({ref})" in e.get("value", ""):
        assert ref in names[:i]
  if slices > 1:
    assert env["MEGASCALE_NUM_SLICES"]["value"] == str(slices)
    assert env["MEGASCALE_COORDINATOR_ADDRESS"]["value"] == (
        "$(JOBSET_NAME)-$(REPLICATED_JOB_NAME)-0-0.$(JOBSET_NAME)")
    assert env["MEGASCALE_SLICE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['jobset.sigs.k8s.io/job-index']")
  else:
    assert not [n for n in names if n.startswith("MEGASCALE")]


def test_validation_rejects_a_broken_manifest():
  js = jobset_lib.jobset("w", "v5p-16", 1, "img", "true")
  validate_jobset(js)
  pod = js["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
  pod["hostNetwrk"] = pod.pop("hostNetwork")  # a typo: unknown field in a pod spec
  with pytest.raises(kubernetes_validate.ValidationError):
    validate_jobset(js)
  js = jobset_lib.jobset("w", "v5p-16", 1, "img", "true")
  js["spec"]["failurePolicy"]["maxRestart"] = 3  # a typo in the JobSet part
  with pytest.raises(jsonschema.ValidationError):
    validate_jobset(js)
