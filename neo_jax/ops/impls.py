"""The names of the attention implementations, importable without JAX.

``ATTENTION_IMPLS`` is the one list of ``model.attention_impl`` values: the model
config validates against it (``model/model_config.py``, which the recipes load before
JAX starts) and ``ops/backend.resolve_attention_impl`` resolves ``"auto"`` among them.
``"xla"``: the dense reference (``[S, S]`` scores per head, the tests' oracle);
``"xla_blockwise"``: plain-JAX block-sparse attention (``ops/flash_blockwise.py``);
``"pallas"``: the block-sparse kernel (``ops/flash_mixed.py``); ``"auto"``: chosen per
platform (``ops/backend.py``).
"""

ATTENTION_IMPLS = ("xla", "xla_blockwise", "pallas", "auto")
