"""Inference: a checkpoint in (``load``: a training work directory, an Orbax parameter
checkpoint or a released Hugging Face directory, local or ``gs://``), text out
(``Generator``: one prefill with the mixed mask, then cached one-token steps;
``SamplingConfig``), the KV cache (``init_cache``, ``cache_bytes``), the uncached oracle
(``greedy_generate``) and answer scoring (``exact_match``, ``mcq_match``). The CLI is
``python -m neo_jax.infer``. Loaded on first use (``lazy_loader``).
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "checkpoints": ["load"],
        "decode": ["Generator"],
        "generate": ["greedy_generate"],
        "kv_cache": ["cache_bytes", "init_cache"],
        "sampling": ["SamplingConfig"],
        "scoring": ["exact_match", "mcq_match"],
    })
