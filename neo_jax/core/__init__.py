"""What every layer of neo_jax agrees on, with no dependency on any of them.

``data/``, ``model/``, ``infer/``, ``convert/`` and ``train/`` import from here;
this package imports nothing of neo_jax.

* ``tokens``: special token ids of the Qwen3 + NEO vocabulary, the pad id and
  the label ignore index (docs/design.md §3.1, §3.5).
* ``geometry``: patch and visual-token geometry, pixel normalisation
  (docs/design.md §1.1).
* ``batch``: the packed ``[batch, seq]`` batch the model takes, its shapes, its
  check and the one function that assembles rows of samples into it
  (``assemble_batch``, ``batch_shapes``, ``check_batch``).
* ``paths``: local paths and ``gs://`` URLs alike; ``run_layout``: where a training
  work directory keeps what; ``context_schedule``: the run's sequence-length phases;
  ``host_memory``: resident-set figures and returning freed memory to the system.

Loaded on first use (``lazy_loader``).
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submodules=["batch", "context_schedule", "geometry", "host_memory", "paths", "run_layout",
                "tokens"],
    submod_attrs={"batch": ["assemble_batch", "batch_shapes", "check_batch"]})
