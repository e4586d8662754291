"""Will cached decoding of a released size fit? AOT-compile the KV-cache decoder for a TPU
slice on this CPU host (libtpu as a compiler, nothing allocated) with the training
mesh's parameter shardings and report per-device memory.

    JAX_PLATFORMS=cpu PYTHONPATH=. python bench/decode_aot.py --config configs/neo_ov_9b.py:stage3 \\
        --topology v5p-16 --fsdp 8 --batch 8 --prompt 8192 --new_tokens 256

The parameters and the batch are ``ShapeDtypeStruct``s with the ``Setup``'s shardings
(FSDP over ``--fsdp`` devices, the rest data-parallel), the cache follows the
activations' logical axes, prefill uses the config's attention (the Pallas kernel on
TPU for ``auto``) and the decode loop is the jitted ``lax.while_loop``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import time


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default="configs/neo_ov_9b.py:stage3")
  ap.add_argument("--topology", default="v5p-16")
  ap.add_argument("--fsdp", type=int, default=8)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--prompt", type=int, default=8192)
  ap.add_argument("--new_tokens", type=int, default=256)
  a = ap.parse_args()

  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from flax import linen as nn  # pylint: disable=import-outside-toplevel
  from neo_jax import aot  # pylint: disable=import-outside-toplevel
  from neo_jax.core import geometry  # pylint: disable=import-outside-toplevel
  from neo_jax.infer import decode, kv_cache, sampling  # pylint: disable=import-outside-toplevel
  from neo_jax.ops import backend  # pylint: disable=import-outside-toplevel
  from neo_jax.train import sharding  # pylint: disable=import-outside-toplevel
  from neo_jax.train.setup import abstract_params, build_model  # pylint: disable=import-outside-toplevel

  path, _, arg = a.config.partition(":")
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config(arg or None)
  config.model.attention_impl = backend.resolve_attention_impl(config.model.attention_impl, "tpu")
  topo = aot.parse_topology(a.topology)
  devices = aot.topology_devices(topo)
  config.mesh.data, config.mesh.fsdp = len(devices) // a.fsdp, a.fsdp
  mesh = sharding.make_mesh(dict(config.mesh), devices=devices)
  rules = sharding.rules_from_config(config.sharding_rules)
  model = build_model(config)       # the typed ModelConfig: model.config
  boxed = abstract_params(model)
  shardings = sharding.logical_shardings(boxed, mesh, rules)
  params = jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                  nn.meta.unbox(boxed), shardings)
  repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  b, s = a.batch, a.prompt
  batch = {"input_ids": jax.ShapeDtypeStruct((b, s), np.int32, sharding=repl),
           "segment_ids": jax.ShapeDtypeStruct((b, s), np.int32, sharding=repl),
           "token_hw": jax.ShapeDtypeStruct((b, s, 2), np.int32, sharding=repl),
           "pixel_values": jax.ShapeDtypeStruct(
               (b, s) + geometry.token_pixels_shape(model.config.patch_size), np.uint8,
               sharding=repl)}
  lengths = jax.ShapeDtypeStruct((b,), np.int32, sharding=repl)
  key = jax.ShapeDtypeStruct((2,), np.uint32, sharding=repl)
  gen = decode.Generator(model.config, mesh=mesh, rules=rules)
  program = gen._program(a.new_tokens, (151645,), sampling.SamplingConfig(), False)  # pylint: disable=protected-access
  t0 = time.perf_counter()
  compiled = program.lower(params, batch, lengths, key).compile()
  mem = compiled.memory_analysis()
  gib = lambda x: x / 2 ** 30
  cache = kv_cache.cache_bytes(model.config, b, s + a.new_tokens)
  total = mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes
  print(f"{a.config} on {a.topology} ({len(devices)} devices, data {config.mesh.data} x fsdp "
        f"{a.fsdp}), batch {b}, prompt {s}, {a.new_tokens} new tokens, compute "
        f"{config.model.dtype}, attention {config.model.attention_impl}: compiled in "
        f"{time.perf_counter() - t0:.0f} s")
  print(f"per device: arguments {gib(mem.argument_size_in_bytes):.2f} GiB, temporaries "
        f"{gib(mem.temp_size_in_bytes):.2f} GiB, outputs {gib(mem.output_size_in_bytes):.3f} GiB,"
        f" total {gib(total):.2f} of {topo.chip.hbm_gib:.0f} GiB HBM; whole KV cache "
        f"{gib(cache):.2f} GiB ({gib(cache) / len(devices):.2f} GiB per device if evenly split)")


if __name__ == "__main__":
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  main()
