"""Peak memory of the conversion CLI in a fresh process, for the bounded-memory test.

``cli_peak_rss`` runs ``python -m neo_jax.convert ...`` and returns the child's peak
resident set (``os.wait4``'s ``ru_maxrss``); ``fixtures`` writes, for a config, a
random Orbax checkpoint and its release-layout Hugging Face export (the two inputs).
``mid_config`` is a model of ~400 MB in bfloat16 made of 26 layers: the old
whole-leaf conversion grew by a few stacked leaves (import: Orbax's staging of a
24-layer, 100 MB ``mlp`` leaf) or by the whole model (export: its shard buffer);
the streaming one by a few layers (4 MB each).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np

from neo_jax.convert import convert as cv, orbax_io, param_mapping as pm
from neo_jax.model import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def mid_config():
  """24 + 2 layers of hidden 512 / MLP 4096, 4096-row untied vocabulary: 198M parameters."""
  return config_lib.get_model_config(
      "tiny", hidden_size=512, intermediate_size=4096, num_heads=8, num_kv_heads=4, head_dim=64,
      num_llm_layers=24, num_prebuffer_layers=2, vocab_size=4096, tie_word_embeddings=False)


def model_bytes(cfg, itemsize: int = 2) -> int:
  return sum(int(np.prod(l.shape)) for l in pm.leaves(cfg)) * itemsize


def fixtures(cfg, root: str, dtype: str = "bfloat16") -> tuple[str, str]:
  """``(orbax_dir, hf_dir)`` under ``root`` holding the same random parameters."""
  ck, hf = os.path.join(root, "ck"), os.path.join(root, "hf")
  cv.write(cv.random_pieces(cfg, dtype=dtype, seed=1), orbax_io.ParamWriter(ck, cfg),
           progress=False)
  cv.export_release(orbax_io.ParamReader(ck), cfg, hf, dtype=dtype, progress=False,
                    write_tokenizer=False, max_shard_bytes=2 * 1024 ** 3)
  return ck, hf


# Runs argv[2:] as a child of this small process and writes the child's peak RSS [kB]
# to argv[1]. A child forked straight from a big parent (pytest) would count the
# parent's pages mapped before its exec in ``ru_maxrss``.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
  os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def cli_peak_rss(*args: str, pythonpath: str = REPO) -> int:
  """Peak RSS [bytes] of ``python -m neo_jax.convert *args --noprogress`` (run from
  ``pythonpath``'s checkout, in a fresh process started by ``LAUNCHER``).

  Raises:
    RuntimeError: the command failed (its output attached).
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=pythonpath)
  with tempfile.NamedTemporaryFile("r") as result:
    # cwd: ``-m`` puts the current directory first on sys.path.
    r = subprocess.run([sys.executable, "-c", LAUNCHER, result.name, sys.executable, "-m",
                        "neo_jax.convert", *args, "--noprogress"], cwd=pythonpath, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    if r.returncode:
      raise RuntimeError(f"convert {' '.join(args)} failed: {r.stdout.decode()[-3000:]}")
    return int(result.read()) * 1024
