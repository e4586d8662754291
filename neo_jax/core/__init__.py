"""What every layer of neo_jax agrees on, with no dependency on any of them.

``data/``, ``model/``, ``infer/``, ``convert/`` and ``train/`` import from here;
this package imports nothing of neo_jax.

* ``tokens``: special token ids of the Qwen3 + NEO vocabulary, the pad id and
  the label ignore index (docs/design.md §3.1, §3.5).
* ``geometry``: patch and visual-token geometry, pixel normalisation
  (docs/design.md §1.1).
* ``batch``: the packed ``[batch, seq]`` batch the model takes, its shapes, its
  check and the one function that assembles rows of samples into it.
"""
