"""Weights in and out: Qwen3 import, released NEO / NEO-ov import, export to PyTorch.

``param_mapping`` (the one table and how a leaf is cut into pieces), ``hf_config``
(config.json <-> ours), ``leaves`` (piece streams), ``safetensors_io`` /
``orbax_io`` + ``orbax_arrays`` (I/O piece by piece), ``convert`` / ``export`` (the
conversions), ``__main__`` (the CLI). The trainer uses
``orbax_io.save_params`` / ``orbax_io.load_params`` / ``orbax_io.load_config``.
"""

from neo_jax.convert.orbax_io import load_config, load_params, save_params

__all__ = ["load_config", "load_params", "save_params"]
