"""Weights in and out: Qwen3 import, released NEO / NEO-ov import, export to PyTorch.

``param_mapping`` (the one table and how a leaf is cut into pieces), ``hf_config``
(config.json <-> ours), ``leaves`` (piece streams), ``safetensors_io`` /
``orbax_io`` + ``orbax_arrays`` (I/O piece by piece), ``convert`` / ``export`` (the
conversions), ``workdir`` (a training work directory as a source), ``__main__`` (the
CLI, ``python -m neo_jax.convert``). What a user calls: ``save_params`` /
``load_params`` / ``load_config`` (Orbax parameter checkpoints, what the trainer's
``checkpoint.init_from`` reads), ``qwen3_config`` / ``release_config`` (the model
config of a Qwen3 / released directory), ``export_release`` (a Hugging Face directory).
Loaded on first use (``lazy_loader``).
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "convert": ["qwen3_config", "release_config"],
        "export": ["export_release"],
        "orbax_io": ["load_config", "load_params", "save_params"],
    })
