"""The one table between our parameter paths and the release's state-dict keys.

docs/design.md §5.3 lists the release's keys (``VLMEvalKit/vlmeval/vlm/neo/to_hf`` and
``VLMTrainKit/neo/model``: ``NEOChatModel`` = ``vision_model`` +
``language_model``, a ``Qwen3ForCausalLM`` whose layers carry the extra H / W
projections). Every conversion (Qwen3 import, NEO import, export) walks this
table; the hook functions below turn one tensor from our layout into the
PyTorch layout and back, so both directions share one description. Our shapes are
not written here: they are read from the model (``model/shapes.param_shapes``, a
``jax.eval_shape`` of ``NEO.init``), and a model parameter without an entry raises.

Layouts (ours -> PyTorch):
* Dense kernels ``[in..., out...]`` -> Linear ``weight [prod(out), prod(in)]``
  (``q_proj [D, Hq, d]`` -> ``[Hq d, D]``; ``o_proj [Hq, d, D]`` -> ``[D, Hq d]``).
* ``patch_embedding.kernel [3 P P, V]`` (patch flattened (c, y, x)) ->
  Conv ``weight [V, 3, P, P]`` (OIHW).
* ``dense_embedding.kernel [k k V, D]`` (flattened (dy, dx, V)) -> Conv
  ``weight [D, V, k, k]`` (OIHW), k = ``downsample``.
* ``lm_head.kernel [D, vocab]`` -> ``weight [vocab, D]``; norms, biases and the
  embedding table are unchanged.
* Scanned stacks: our leaf ``[L, ...]`` holds layer ``l`` of the stack at
  index ``l``; pre-Buffer layer ``i`` is release layer ``i``, post-LLM layer
  ``j`` is release layer ``j + num_prebuffer_layers``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterator

import numpy as np

from neo_jax.model import shapes as model_shapes
from neo_jax.model.model_config import STACKS, ModelConfig

Path = tuple[str, ...]

LANGUAGE_PREFIX = "language_model."


# ----------------------------------------------------------------------------
# Hooks: our layout <-> PyTorch layout, one tensor at a time (numpy).

_TRANSPOSE_ROWS = 16


def transpose2d(x: np.ndarray) -> np.ndarray:
  """``x.T`` of a 2-D array as a new C-contiguous array (same dtype).

  Large matrices are copied 16 input rows at a time: every output row then
  receives 16 adjacent values per pass instead of one value per cache line, which
  makes it about 10x faster than ``np.ascontiguousarray(x.T)`` (a 12288 x 4096
  bfloat16 matrix: ~2.3 GB/s against ~0.25 GB/s on this CPU), and the transposes
  are the conversions' main CPU cost.
  """
  m, n = x.shape
  if x.size < 1 << 16:
    return np.ascontiguousarray(x.T)
  out = np.empty((n, m), x.dtype)
  for r in range(0, m, _TRANSPOSE_ROWS):
    out[:, r:r + _TRANSPOSE_ROWS] = x[r:r + _TRANSPOSE_ROWS].T
  return out


def _dense_to_torch(n_in: int):
  def to_torch(x: np.ndarray, cfg) -> np.ndarray:
    del cfg
    return transpose2d(x.reshape(math.prod(x.shape[:n_in]), -1))

  def from_torch(w: np.ndarray, cfg, shape: tuple[int, ...]) -> np.ndarray:
    del cfg
    return transpose2d(w.reshape(w.shape[0], -1)).reshape(shape)

  def torch_shape(shape, cfg):
    del cfg
    return (math.prod(shape[n_in:]), math.prod(shape[:n_in]))

  return to_torch, from_torch, torch_shape


def _identity():
  return (lambda x, cfg: x), (lambda w, cfg, shape: w.reshape(shape)), (lambda shape, cfg: shape)


def _patch_conv():
  """``[3 P P, V]`` <-> OIHW ``[V, 3, P, P]``."""
  def to_torch(x, cfg):
    p = cfg.patch_size
    return transpose2d(x).reshape(x.shape[1], cfg.num_channels, p, p)

  def from_torch(w, cfg, shape):
    del cfg
    return transpose2d(w.reshape(w.shape[0], -1)).reshape(shape)

  def torch_shape(shape, cfg):
    return (shape[1], cfg.num_channels, cfg.patch_size, cfg.patch_size)

  return to_torch, from_torch, torch_shape


def _dense_conv():
  """``[k k V, D]`` (dy, dx, V) <-> OIHW ``[D, V, k, k]``."""
  def to_torch(x, cfg):
    k = cfg.downsample
    return np.ascontiguousarray(
        x.reshape(k, k, cfg.vision_hidden, x.shape[-1]).transpose(3, 2, 0, 1))

  def from_torch(w, cfg, shape):
    del cfg
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(shape)

  def torch_shape(shape, cfg):
    return (shape[1], cfg.vision_hidden, cfg.downsample, cfg.downsample)

  return to_torch, from_torch, torch_shape


@dataclasses.dataclass(frozen=True)
class Entry:
  """One parameter: our path, the release key, and the two hooks.

  Attributes:
    path: path inside the parameter tree; for layer entries relative to
      ``<stack>/layers``.
    key: release state-dict key; layer entries contain ``{i}``.
    to_torch: ``(ours, cfg) -> torch layout`` (numpy in, numpy out).
    from_torch: ``(torch layout, cfg, our shape) -> ours``.
    torch_shape: ``(our shape, cfg) -> torch shape`` (no data touched).
    kind: "layer" | "global".
  """
  path: Path
  key: str
  to_torch: Callable
  from_torch: Callable
  torch_shape: Callable
  kind: str = "global"


def _layer(path: str, key: str, hooks) -> Entry:
  return Entry(tuple(path.split("/")), LANGUAGE_PREFIX + "model.layers.{i}." + key, *hooks,
               kind="layer")


def _global(path: str, key: str, hooks) -> Entry:
  return Entry(tuple(path.split("/")), key, *hooks, kind="global")


LAYER_ENTRIES: tuple[Entry, ...] = (
    _layer("input_layernorm/scale", "input_layernorm.weight", _identity()),
    _layer("post_attention_layernorm/scale", "post_attention_layernorm.weight", _identity()),
    _layer("self_attn/q_proj/kernel", "self_attn.q_proj.weight", _dense_to_torch(1)),
    _layer("self_attn/q_proj_hw/kernel", "self_attn.q_proj_hw.weight", _dense_to_torch(1)),
    _layer("self_attn/k_proj/kernel", "self_attn.k_proj.weight", _dense_to_torch(1)),
    _layer("self_attn/k_proj_hw/kernel", "self_attn.k_proj_hw.weight", _dense_to_torch(1)),
    _layer("self_attn/v_proj/kernel", "self_attn.v_proj.weight", _dense_to_torch(1)),
    _layer("self_attn/o_proj/kernel", "self_attn.o_proj.weight", _dense_to_torch(2)),
    _layer("self_attn/q_norm/scale", "self_attn.q_norm.weight", _identity()),
    _layer("self_attn/k_norm/scale", "self_attn.k_norm.weight", _identity()),
    _layer("self_attn/q_norm_h/scale", "self_attn.q_norm_h.weight", _identity()),
    _layer("self_attn/q_norm_w/scale", "self_attn.q_norm_w.weight", _identity()),
    _layer("self_attn/k_norm_h/scale", "self_attn.k_norm_h.weight", _identity()),
    _layer("self_attn/k_norm_w/scale", "self_attn.k_norm_w.weight", _identity()),
    _layer("mlp/gate_proj/kernel", "mlp.gate_proj.weight", _dense_to_torch(1)),
    _layer("mlp/up_proj/kernel", "mlp.up_proj.weight", _dense_to_torch(1)),
    _layer("mlp/down_proj/kernel", "mlp.down_proj.weight", _dense_to_torch(1)),
)

GLOBAL_ENTRIES: tuple[Entry, ...] = (
    _global("vision_model/patch_embedding/kernel",
            "vision_model.embeddings.patch_embedding.weight", _patch_conv()),
    _global("vision_model/patch_embedding/bias",
            "vision_model.embeddings.patch_embedding.bias", _identity()),
    _global("vision_model/dense_embedding/kernel",
            "vision_model.embeddings.dense_embedding.weight", _dense_conv()),
    _global("vision_model/dense_embedding/bias",
            "vision_model.embeddings.dense_embedding.bias", _identity()),
    _global("embed_tokens/embedding", LANGUAGE_PREFIX + "model.embed_tokens.weight", _identity()),
    _global("norm/scale", LANGUAGE_PREFIX + "model.norm.weight", _identity()),
    _global("lm_head/kernel", LANGUAGE_PREFIX + "lm_head.weight", _dense_to_torch(1)),
)

# Layer parameters a plain Qwen3 checkpoint lacks (docs/design.md §2 derives them).
HW_ONLY = ("self_attn/q_proj_hw/kernel", "self_attn/k_proj_hw/kernel", "self_attn/q_norm_h/scale",
           "self_attn/q_norm_w/scale", "self_attn/k_norm_h/scale", "self_attn/k_norm_w/scale")

# Parameters whose leading axis is the vocabulary in the torch layout.
VOCAB_KEYS = (LANGUAGE_PREFIX + "model.embed_tokens.weight", LANGUAGE_PREFIX + "lm_head.weight")
# Their vocabulary axis in our layout (``embedding [vocab, D]``, ``lm_head [D, vocab]``).
VOCAB_AXIS = {("embed_tokens", "embedding"): 0, ("lm_head", "kernel"): 1}

# Streaming unit: a piece of a vocabulary leaf holds at most this many bytes in
# float32 (64 MiB: 4096 rows of a 4096-wide table).
PIECE_BYTES = 64 * 2 ** 20


@dataclasses.dataclass(frozen=True)
class Leaf:
  """One leaf of our parameter tree with its release keys.

  Attributes:
    path: full path in our tree (``("llm", "layers", "mlp", ...)``).
    entry: the table entry.
    shape: our shape (with the stacked layer axis first for layer leaves).
    keys: release keys, one per stacked layer (one for a global leaf).
  """
  path: Path
  entry: Entry
  shape: tuple[int, ...]
  keys: tuple[str, ...]

  @property
  def stacked(self) -> bool:
    return self.entry.kind == "layer"


def _shapes(cfg) -> dict[Path, tuple[int, ...]]:
  """Every parameter's shape, from the model itself (``model/shapes.param_shapes``)."""
  return model_shapes.param_shapes(ModelConfig.coerce(cfg))


def layer_shapes(cfg: ModelConfig) -> dict[Path, tuple[int, ...]]:
  """Our per-layer parameter shapes (without the stacked axis), read from the model's
  ``llm`` stack (the pre-Buffer layers have the same)."""
  return {path[2:]: shape[1:] for path, shape in _shapes(cfg).items() if path[0] == "llm"}


def global_shapes(cfg: ModelConfig) -> dict[Path, tuple[int, ...]]:
  """Shapes of the non-layer parameters (``lm_head`` only when untied), read from the
  model."""
  return {path: shape for path, shape in _shapes(cfg).items() if path[0] not in STACKS}


def stack_sizes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
  """``{stack: (num_layers, release index of its first layer)}`` for the stacks present
  (the pre-Buffer layers come first in the release's numbering)."""
  present = {path[0]: shape[0] for path, shape in _shapes(cfg).items() if path[0] in STACKS}
  out, offset = {}, 0
  for stack in STACKS:
    if stack in present:
      out[stack] = (present[stack], offset)
      offset += present[stack]
  return out


def _check_table(cfg) -> None:
  """Raises ``ValueError`` when the model has a parameter this table does not map (a
  changed Flax module without its conversion entry)."""
  known = {e.path for e in GLOBAL_ENTRIES} | {(s, "layers") + e.path for s in STACKS
                                              for e in LAYER_ENTRIES}
  missing = sorted("/".join(p) for p in _shapes(cfg) if p not in known)
  if missing:
    raise ValueError(f"Parameters of the model with no entry in convert/param_mapping.py: "
                     f"{missing}; add their release keys and layout hooks.")


def leaves(cfg: ModelConfig) -> Iterator[Leaf]:
  """Every leaf of our parameter tree for ``cfg``, in a fixed order.

  Global leaves first (vision, embedding, norm, head), then the pre-Buffer and
  post-LLM stacks, entry by entry.
  """
  _check_table(cfg)
  gshapes = global_shapes(cfg)
  for e in GLOBAL_ENTRIES:
    if e.path in gshapes:
      yield Leaf(e.path, e, gshapes[e.path], (e.key,))
  lshapes = layer_shapes(cfg)
  for stack, (n, offset) in stack_sizes(cfg).items():
    for e in LAYER_ENTRIES:
      keys = tuple(e.key.format(i=offset + i) for i in range(n))
      yield Leaf((stack, "layers") + e.path, e, (n,) + lshapes[e.path], keys)


def piece_slices(path: Path, shape: tuple[int, ...]) -> list[tuple[slice, ...]]:
  """How the leaf ``path`` of ``shape`` is cut into pieces for streaming.

  Every conversion moves a model piece by piece in this order, and the Orbax
  writer chunks each array the same way, so a piece is one chunk on disk:
  * a scanned stack (``prebuffer/layers/...``, ``llm/layers/...``): one layer per
    piece (``[1, ...]``; the largest, a 9B ``mlp`` layer, is 4096 x 12288);
  * a vocabulary leaf (``VOCAB_AXIS``): blocks along the vocabulary axis of at most
    ``PIECE_BYTES`` in float32, i.e. blocks of rows of the release's
    ``[vocab, D]`` tensors;
  * any other leaf: one piece.

  Returns:
    Index tuples (one ``slice`` per axis) that tile ``shape`` in order.
  """
  full = tuple(slice(0, n) for n in shape)
  if path[0] in STACKS and len(shape) > 0:
    axis, block = 0, 1
  elif path in VOCAB_AXIS:
    axis = VOCAB_AXIS[path]
    row_bytes = 4 * math.prod(shape) // max(shape[axis], 1)
    block = max(1, PIECE_BYTES // max(row_bytes, 1))
  else:
    return [full]
  return [full[:axis] + (slice(s, min(s + block, shape[axis])),) + full[axis + 1:]
          for s in range(0, shape[axis], block)]


def release_keys(cfg: ModelConfig) -> list[str]:
  """All state-dict keys of the release model for ``cfg`` (no tied ``lm_head``)."""
  return [k for leaf in leaves(cfg) for k in leaf.keys]


def resize_rows(x: np.ndarray, rows: int, *, init: str = "zero", std: float = 0.02,
                rng: np.random.Generator | None = None) -> np.ndarray:
  """Crops or grows the leading (vocabulary) axis of ``x`` to ``rows``.

  Args:
    x: ``[vocab, ...]`` any dtype.
    rows: target number of rows.
    init: "zero" or "normal" (N(0, std)) for appended rows.
    std: std of the appended rows for "normal".
    rng: numpy generator for "normal".

  Returns:
    ``[rows, ...]`` in ``x.dtype``.
  """
  if rows <= x.shape[0]:
    return x[:rows]
  extra_shape = (rows - x.shape[0],) + x.shape[1:]
  if init == "zero":
    extra = np.zeros(extra_shape, x.dtype)
  elif init == "normal":
    rng = rng or np.random.default_rng(0)
    extra = (rng.standard_normal(extra_shape, dtype=np.float32) * std).astype(x.dtype)
  else:
    raise ValueError(f"init={init!r} is not 'zero' or 'normal'.")
  return np.concatenate([x, extra], axis=0)
