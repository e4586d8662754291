"""Peak memory and speed of ``neo_jax.convert import-neo`` and ``export`` at NEO-ov 9B size.

Builds a synthetic Hugging Face checkpoint in the release's layout (``config.json``
of ``hf_config.to_release_config`` for the preset, the release's tensor names,
layer by layer, bfloat16 shards of ``--shard_gb`` GB with
``model.safetensors.index.json``) whose values are random bfloat16 numbers (random
sign and mantissa, magnitude 2^-7 .. 2^-6), then measures, each conversion in a
fresh subprocess (peak RSS from ``os.wait4``, wall time):

1. ``disk``: a plain copy of the shard files to the same disk (read + write of the
   same bytes, 64 MiB blocks, fsync per file), deleted again: the reference time;
2. ``import-neo``: HF -> Orbax checkpoint (bfloat16; ``--import_dtype=float32``, the
   CLI's default, writes twice the bytes);
3. ``export``: Orbax -> HF (bfloat16, with the built-in tokenizer files);
4. with ``--verify``: every exported tensor equals its source byte for byte.

Before each step its input files are fsync'ed and dropped from the page cache
(``posix_fadvise(DONTNEED)``, per file, no root needed), so each step reads from
disk, as the reference does; steps 2-3 fsync what they write (tensorstore's file
driver, the safetensors writer), as the reference does. The files (~20.5 GB each
for neo_9b; 3x that on disk at once with ``--verify``, else 2x) are deleted at the
end unless ``--keep``. Ratios are step time / reference time; the goal (issue 28) is
<= 1.5 at <= 2 GB peak RSS. Timings need a quiet machine.

    JAX_PLATFORMS=cpu PYTHONPATH=. python bench/convert_memory.py --workdir=/tmp/convert_bench --verify
    # a smaller model for a quick check: --preset=neo_2b --layers=4

``--pythonpath`` runs the conversions from another checkout (e.g. the code before
the streaming, for a before/after on the same files).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # pylint: disable=wrong-import-position

BLOCK = 64 * 2 ** 20


def _files(root: str) -> list[str]:
  return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


def _size(root: str) -> int:
  return sum(os.path.getsize(f) for f in _files(root))


def drop_cache(root: str) -> None:
  """fsync and evict every file under ``root`` from the page cache."""
  for f in _files(root):
    fd = os.open(f, os.O_RDONLY)
    try:
      os.fsync(fd)
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
      os.close(fd)


def random_bf16(rng: np.random.Generator, shape) -> np.ndarray:
  """Random bfloat16 values: random sign and mantissa, exponent 120 (2^-7 .. 2^-6)."""
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  bits = rng.integers(0, 2 ** 16, size=shape, dtype=np.uint16)
  return ((bits & 0x807F) | 0x3C00).view(ml_dtypes.bfloat16)


def build_hf(cfg, dst: str, shard_bytes: int, seed: int = 0) -> int:
  """The synthetic release checkpoint for ``cfg``: tensors in the release's order
  (vision, embedding, layer 0..N-1, norm, head); returns its tensor bytes."""
  from neo_jax.convert import hf_config, param_mapping as pm, safetensors_io  # pylint: disable=import-outside-toplevel
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  shapes = {}
  for leaf in pm.leaves(cfg):
    inner = leaf.shape[1:] if leaf.stacked else leaf.shape
    for key in leaf.keys:
      shapes[key] = tuple(leaf.entry.torch_shape(inner, cfg))
  layer = lambda k: int(k.split(".layers.")[1].split(".")[0]) if ".layers." in k else -1
  tail = lambda k: ("norm.weight" in k and ".layers." not in k) or "lm_head" in k
  order = sorted(shapes, key=lambda k: (tail(k), layer(k) if not tail(k) else 0))
  os.makedirs(dst, exist_ok=True)
  w = safetensors_io.ShardedWriter(dst, [(k, shapes[k], np.dtype(ml_dtypes.bfloat16)) for k in order],
                                   shard_bytes)
  rng = np.random.default_rng(seed)
  for k in order:
    shape = shapes[k]
    rows = max(1, BLOCK // (2 * max(math.prod(shape[1:]), 1)))
    for r in range(0, shape[0], rows):
      w.write(k, random_bf16(rng, (min(rows, shape[0] - r),) + shape[1:]))
  w.close()
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(hf_config.to_release_config(cfg, torch_dtype="bfloat16"), f, indent=2)
  return w.total_bytes


def copy_reference(src: str, dst: str) -> float:
  """Seconds to read every file of ``src`` and write it under ``dst`` (fsync'ed)."""
  os.makedirs(dst, exist_ok=True)
  buf = bytearray(BLOCK)
  start = time.perf_counter()
  for f in _files(src):
    with open(f, "rb", buffering=0) as i, open(os.path.join(dst, os.path.basename(f)), "wb") as o:
      while n := i.readinto(buf):
        o.write(memoryview(buf)[:n])
      o.flush()
      os.fsync(o.fileno())
  return time.perf_counter() - start


# Runs argv[2:] as a child of this small process and writes the child's peak RSS [kB]
# to argv[1]: a child forked straight from this (big) process would count this
# process's pages mapped before its exec in ``ru_maxrss``.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
  os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(cmd: list[str], env: dict, cwd: str, quiet: bool) -> dict:
  """Runs ``cmd`` in a fresh process; its wall time [s] and peak RSS [GB]."""
  fd, result = tempfile.mkstemp(prefix="convert_rss_")
  os.close(fd)
  start = time.perf_counter()
  r = subprocess.run([sys.executable, "-c", LAUNCHER, result, *cmd], env=env, cwd=cwd,
                     stdout=subprocess.PIPE if quiet else None,
                     stderr=subprocess.STDOUT if quiet else None, check=False)
  wall = time.perf_counter() - start
  if r.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): "
                       f"{(r.stdout or b'').decode()[-3000:]}")
  with open(result) as f:
    kb = int(f.read())
  os.remove(result)
  return {"wall_s": round(wall, 1), "peak_rss_gb": round(kb * 1024 / 1e9, 3)}


def verify(a: str, b: str) -> int:
  """Number of tensors of ``a``; raises if ``b`` lacks one or differs in any byte."""
  from neo_jax.convert import safetensors_io  # pylint: disable=import-outside-toplevel
  ra, rb = safetensors_io.SafetensorsReader(a), safetensors_io.SafetensorsReader(b)
  if sorted(ra.keys()) != sorted(rb.keys()):
    raise AssertionError(f"key sets differ: {sorted(set(ra.keys()) ^ set(rb.keys()))[:5]}")
  for k in ra.keys():
    x, y = ra.get(k), rb.get(k)
    if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
      raise AssertionError(f"{k} differs")
  return len(ra.keys())


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", default="/tmp/convert_bench")
  ap.add_argument("--preset", default="neo_9b")
  ap.add_argument("--layers", type=int, default=0, help="post-LLM layers (0: the preset's)")
  ap.add_argument("--shard_gb", type=float, default=5.0, help="source shard size [GB]")
  ap.add_argument("--pythonpath", default=REPO, help="checkout whose neo_jax runs the steps")
  ap.add_argument("--import_dtype", default="bfloat16", choices=["bfloat16", "float32"],
                  help="dtype import-neo stores (float32 doubles the Orbax checkpoint)")
  ap.add_argument("--verify", action="store_true", help="compare the export with the source "
                  "(keeps the source until the end: 3 checkpoints on disk at once)")
  ap.add_argument("--keep", action="store_true", help="keep the files")
  ap.add_argument("--quiet", action="store_true", help="hide the conversions' progress bars")
  ap.add_argument("--out", default="", help="also write the results as JSON here")
  args = ap.parse_args()
  from neo_jax.model import config as config_lib  # pylint: disable=import-outside-toplevel
  over = {"num_llm_layers": args.layers} if args.layers else {}
  cfg = config_lib.get_model_config(args.preset, **over)
  hf, ck, hf2, ref = (os.path.join(args.workdir, n) for n in ("hf", "ckpt", "hf_export", "copy"))
  shutil.rmtree(args.workdir, ignore_errors=True)
  os.makedirs(args.workdir)
  print(f"disk free under {args.workdir}: {shutil.disk_usage(args.workdir).free / 1e9:.1f} GB",
        flush=True)
  t = time.perf_counter()
  nbytes = build_hf(cfg, hf, int(args.shard_gb * 1e9))
  print(f"built {hf}: {nbytes / 1e9:.2f} GB of tensors in {time.perf_counter() - t:.0f} s",
        flush=True)
  res = {"preset": args.preset, "num_llm_layers": cfg.num_llm_layers, "tensor_bytes": nbytes,
         "cpu_count": os.cpu_count(), "load_avg_at_start": os.getloadavg()[0]}
  drop_cache(hf)
  res["disk_copy_s"] = round(copy_reference(hf, ref), 1)
  shutil.rmtree(ref)
  env = dict(os.environ, PYTHONPATH=args.pythonpath, JAX_PLATFORMS="cpu")
  cli = [sys.executable, "-m", "neo_jax.convert"] + (["--noprogress"] if args.quiet else [])
  drop_cache(hf)
  # cwd: ``python -m`` puts the current directory first on sys.path.
  res["import_neo"] = run_measured(cli + ["import-neo", f"--src={hf}", f"--dst={ck}",
                                          f"--dtype={args.import_dtype}", "--overwrite"], env,
                                   args.pythonpath, args.quiet)
  res["import_dtype"], res["orbax_bytes"] = args.import_dtype, _size(ck)
  if not args.verify and not args.keep:
    shutil.rmtree(hf)  # disk: the export needs only the Orbax checkpoint
  drop_cache(ck)
  res["export"] = run_measured(cli + ["export", f"--src={ck}", f"--dst={hf2}",
                                      "--dtype=bfloat16"], env, args.pythonpath, args.quiet)
  for step in ("import_neo", "export"):
    res[step]["time_vs_disk_copy"] = round(res[step]["wall_s"] / res["disk_copy_s"], 2)
  if args.verify:
    res["verified_tensors"] = verify(hf, hf2)
  if not args.keep:
    shutil.rmtree(args.workdir, ignore_errors=True)
  print(f"\n{nbytes / 1e9:.2f} GB of tensors; disk copy (read + write): {res['disk_copy_s']} s")
  print(f"{'step':12s} {'wall [s]':>9s} {'x disk copy':>12s} {'peak RSS [GB]':>14s}")
  for step in ("import_neo", "export"):
    r = res[step]
    print(f"{step:12s} {r['wall_s']:9.1f} {r['time_vs_disk_copy']:12.2f} {r['peak_rss_gb']:14.3f}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(res, f, indent=2)
  print(json.dumps(res))


if __name__ == "__main__":
  main()
