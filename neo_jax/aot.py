"""Ahead-of-time compile of the real train step for a TPU pod, on a CPU machine.

    python -m neo_jax.aot --config neo_ov_9b:stage3 --topology v5p-256 \\
        --config.mesh.fsdp=4 --config.mesh.context=8 --config.mesh.tensor=4

MaxText ``train_compile.py`` style: ``jax.experimental.topologies`` gives
compile-only devices of the target pod (libtpu compiles for them; nothing is
allocated), ``trainer.Setup`` builds the same mesh, shardings, optimizer,
remat policy and jitted step as a real run, and the step is lowered against
``ShapeDtypeStruct``s (``Setup.abstract_state`` + the batch of the config) and
compiled. The report gives per-device memory (XLA ``memory_analysis``: arguments,
outputs, temporaries, donated aliases), the XLA ``cost_analysis`` FLOPs of one
device (while-loop bodies counted once, so an undercount for scanned layers),
the model FLOPs (``train.flops``) and a step-time bound ``model FLOPs / peak``. Exit status 1 with a message
when the step does not fit in the chip's HBM.

GPU clusters: JAX 0.10 builds compile-only GPU topologies only through the CUDA
PJRT plugin (``get_topology_desc(platform="cuda", ...)``), which needs the
``jax[cuda]`` plugin installed; ``--topology a3-8x8`` style names are accepted
and fail with that explanation when the plugin is absent.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Any

# The CPU is the host platform; libtpu is only used as a compiler.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu looks for a TPU VM's metadata when it loads; give it empty answers.
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
# Compile-only use: several compiler processes (tests, parallel plans) may load
# libtpu at once; its single-user lockfile is for processes that own TPU chips.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator generation: ``hbm_gib`` [GiB per device], ``peak_tflops``
  [dense bf16 TFLOP/s per device], ``cores_per_device`` (TensorCores that the
  ``vN-<cores>`` name counts per JAX device; 2 for megacore chips)."""
  name: str
  topo_prefix: str
  hbm_gib: float
  peak_tflops: float
  cores_per_device: int
  chip_config: str
  dims: int


CHIPS = {
    "v5p": Chip("v5p", "v5", 95.0, 459.0, 2, "megacore", 3),
    "v4": Chip("v4", "v4", 32.0, 275.0, 2, "megacore", 3),
    "v6e": Chip("v6e", "v6e", 32.0, 918.0, 1, "default", 2),
    "v5e": Chip("v5e", "v5e", 16.0, 197.0, 1, "default", 2),
}

# Pod slice shapes (chips per dimension), as the Cloud TPU docs / MaxText
# ``accelerator_to_spec_map.py`` name them.
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
              128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
              2048: (8, 16, 16), 4096: (16, 16, 16)}
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
              128: (8, 16), 256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A named pod slice: ``chip``, ``shape`` (chips per torus dimension),
  ``num_slices`` (DCN-connected copies)."""
  name: str
  chip: Chip
  shape: tuple[int, ...]
  num_slices: int = 1

  @property
  def num_devices(self) -> int:
    n = 1
    for s in self.shape:
      n *= s
    return n * self.num_slices

  @property
  def topology_name(self) -> str:
    return f"{self.chip.topo_prefix}:{'x'.join(map(str, self.shape))}"


def parse_topology(name: str, num_slices: int = 1) -> Topology:
  """``"v5p-256"`` (cores, the Cloud name) or ``"v5p:4x4x8"`` (chips) -> Topology.

  Raises:
    ValueError: unknown generation or a size with no standard slice shape.
  """
  m = re.fullmatch(r"(v5p|v4|v6e|v5e)-(\d+)", name)
  if m:
    chip = CHIPS[m.group(1)]
    chips = int(m.group(2)) // chip.cores_per_device
    shapes = _SHAPES_3D if chip.dims == 3 else _SHAPES_2D
    if chips not in shapes:
      raise ValueError(f"No standard {chip.name} slice with {chips} chips ({name}); "
                       f"use an explicit shape such as '{chip.name}:4x4x8'.")
    return Topology(name, chip, shapes[chips], num_slices)
  m = re.fullmatch(r"(v5p|v4|v6e|v5e):(\d+(?:x\d+)+)", name)
  if m:
    return Topology(name, CHIPS[m.group(1)], tuple(int(x) for x in m.group(2).split("x")), num_slices)
  if re.fullmatch(r"(a3|h100|a100|gpu)\S*", name):
    raise ValueError(_GPU_NOTE)
  raise ValueError(f"Unknown topology {name!r}; use e.g. v5p-256, v6e-256, v5e-64, v4-32 "
                   f"or v5p:4x4x8. Known generations: {sorted(CHIPS)}.")


_GPU_NOTE = (
    "GPU cluster shapes: JAX compiles for a GPU topology it is not attached to only through "
    "the CUDA PJRT plugin (jax.experimental.topologies.get_topology_desc(platform='cuda', "
    "topology_name='<hosts>x<gpus>')), and that plugin must be installed (pip install "
    "'jax[cuda12]'); it is not part of this CPU/TPU environment. Run neo_jax.aot on a GPU "
    "host, or compile for a TPU topology.")


def topology_devices(topo: Topology) -> list:
  """Compile-only devices of ``topo`` (libtpu; no TPU needed)."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  shape3 = tuple(topo.shape) + (1,) * (3 - len(topo.shape))
  host = (2, 2, 1) if topo.num_devices // topo.num_slices >= 4 else shape3
  kwargs = dict(chip_config_name=topo.chip.chip_config, chips_per_host_bounds=host,
                num_slices=topo.num_slices)
  return list(topologies.get_topology_desc(topo.topology_name, "tpu", **kwargs).devices)


@dataclasses.dataclass
class Report:
  """Per-device figures of one compiled train step (bytes, FLOPs, seconds)."""
  topology: str
  num_devices: int
  mesh: dict
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  code_bytes: int
  hbm_bytes: int
  flops_per_device: float
  peak_flops: float
  model_flops_per_device: float

  @property
  def total_bytes(self) -> int:
    """Peak HBM of the step: live arguments + outputs not aliased onto donated
    inputs + temporaries + the program."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

  @property
  def fits(self) -> bool:
    return self.total_bytes <= self.hbm_bytes

  @property
  def step_time_s(self) -> float:
    """Model FLOPs / peak: a lower bound on the step time (100% MFU, no
    communication). Model FLOPs, not XLA's count: XLA's ``cost_analysis``
    counts the body of a while loop once, and the step has two (the layer
    ``nn.scan`` and the gradient-accumulation scan), so its figure is far
    below the real work (checked: 2 -> 10 layers barely changes it; 2
    micro-batches halve it)."""
    return self.model_flops_per_device / self.peak_flops

  def text(self) -> str:
    g = lambda b: f"{b / GiB:8.2f} GiB"
    lines = [
        f"topology {self.topology}: {self.num_devices} devices, mesh {self.mesh}",
        f"per-device memory  arguments {g(self.argument_bytes)}",
        f"                   outputs   {g(self.output_bytes)} (aliased to donated inputs {g(self.alias_bytes)})",
        f"                   temps     {g(self.temp_bytes)}",
        f"                   code      {g(self.code_bytes)}",
        f"                   total     {g(self.total_bytes)} of {g(self.hbm_bytes)} HBM "
        f"({100 * self.total_bytes / self.hbm_bytes:.1f}%)",
        f"FLOPs per device   model {self.model_flops_per_device:.4g} per step; XLA cost analysis "
        f"{self.flops_per_device:.4g} (loop bodies counted once)",
        f"step time          >= {self.step_time_s:.4g} s at {self.peak_flops / 1e12:.0f} TFLOP/s "
        f"peak (model FLOPs / peak, i.e. at 100% MFU)",
    ]
    return "\n".join(lines)


def compile_train_step(config, topology: str, num_slices: int = 1,
                       hbm_gib: float | None = None,
                       seq_len: int | None = None) -> tuple[Report, Any]:
  """Compiles ``Setup(config).train_step`` for ``topology``; nothing is allocated.

  Args:
    config: a training config (``neo_jax.configs``); ``mesh`` / ``dcn_mesh`` must
      multiply to the topology's devices (one axis may be -1).
    topology: e.g. "v5p-256", "v6e-256", "v5p:2x2x2".
    num_slices: DCN-connected slices (then set ``config.dcn_mesh``).
    hbm_gib: memory budget per device [GiB]; default the chip's HBM (a lower
      value keeps headroom, e.g. for XLA's runtime reservations).
    seq_len: [tokens per row] of the batch, default ``config.seq_len`` (a context
      phase's length: ``core/context_schedule.py``).

  Returns:
    (Report, the ``jax.stages.Compiled``).

  Raises:
    ValueError: unknown topology or a mesh that does not match it.
  """
  from neo_jax.ops import backend  # pylint: disable=g-import-not-at-top
  from neo_jax.train import flops, sharding, trainer  # pylint: disable=g-import-not-at-top
  topo = parse_topology(topology, num_slices)
  config = config.copy_and_resolve_references()
  # The topology (TPU) decides ``auto``, not this CPU host.
  config.model.attention_impl = backend.resolve_attention_impl(config.model.attention_impl,
                                                               "tpu")
  devices = topology_devices(topo)
  mesh = sharding.make_mesh(dict(config.mesh), devices=devices,
                            dcn_shape=dict(config.get("dcn_mesh", {})) or None)
  setup = trainer.Setup(config, mesh=mesh)
  seq_len = int(seq_len or config.seq_len)
  compiled = setup.train_step.lower(setup.abstract_state,
                                    setup.abstract_batch(seq_len)).compile()
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  tokens = config.batch_size * seq_len
  model_cfg = setup.model.config
  model_flops = flops.train_flops_per_token(
      model_cfg, avg_visible_keys=config.get("avg_visible_keys", 0) or seq_len / 4,
      head_fraction=(model_cfg.max_supervised_tokens / seq_len
                     if model_cfg.max_supervised_tokens else 1.0)) * tokens / len(devices)
  report = Report(
      topology=topo.name + (f" x{num_slices} slices" if num_slices > 1 else "")
      + (f", {seq_len}-token rows" if seq_len != config.seq_len else ""),
      num_devices=len(devices), mesh=dict(mesh.shape),
      argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
      alias_bytes=mem.alias_size_in_bytes, temp_bytes=mem.temp_size_in_bytes,
      code_bytes=mem.generated_code_size_in_bytes,
      hbm_bytes=int((hbm_gib or topo.chip.hbm_gib) * GiB), flops_per_device=float(cost.get("flops", 0.0)),
      peak_flops=topo.chip.peak_tflops * 1e12, model_flops_per_device=model_flops)
  return report, compiled


def main(argv) -> int:
  from absl import flags  # pylint: disable=g-import-not-at-top
  fl = flags.FLAGS
  print(f"Compiling the train step for {fl.topology} (x{fl.num_slices} slices) on the CPU; this can take minutes for the released sizes.",
        flush=True)
  from neo_jax.core import context_schedule  # pylint: disable=g-import-not-at-top
  phases = context_schedule.phases(_CONFIG.value)
  if len(phases) > 1:   # one compiled step per context phase: every one must fit
    print(f"Context schedule: {context_schedule.describe(_CONFIG.value)}", flush=True)
  for length in sorted({p.seq_len for p in phases}):
    report, compiled = compile_train_step(_CONFIG.value, fl.topology, fl.num_slices,
                                          fl.hbm_gib or None, seq_len=length)
    del compiled
    print(report.text(), flush=True)
    if not report.fits:
      break
  if not report.fits:
    print(f"DOES NOT FIT: the step needs {report.total_bytes / GiB:.2f} GiB per device, the "
          f"{fl.topology} budget is {report.hbm_bytes / GiB:.2f} GiB. Shard more (mesh.fsdp / "
          "mesh.tensor / mesh.context), use a stronger remat policy (model.remat_policy=full) or "
          "more gradient accumulation (train.grad_accum_steps).", file=sys.stderr, flush=True)
    return 1
  print("FITS", flush=True)
  return 0


_CONFIG = None


def _define_flags():
  global _CONFIG
  from absl import flags  # pylint: disable=g-import-not-at-top
  from neo_jax import configs  # pylint: disable=g-import-not-at-top
  _CONFIG = configs.define_flag("config")
  flags.DEFINE_string("topology", "v5p-8", "TPU slice: v5p-256, v6e-256, v5e-64, v4-32, v5p:4x4x8.")
  flags.DEFINE_integer("num_slices", 1, "Number of DCN-connected slices (set config.dcn_mesh).")
  flags.DEFINE_float("hbm_gib", 0.0, "Memory budget per device in GiB (0 = the chip's HBM).")
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
