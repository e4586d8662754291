"""neo_jax: NEO and NEO-ov native vision-language models in JAX / Flax.

Layers of the system, one package each, every one loaded on first use (importing
``neo_jax`` imports no JAX): ``core`` (what every layer shares), ``model`` (Flax
modules), ``ops`` (attention with the mixed mask), ``data`` (tokenizer, images, video,
Grain), ``train`` (optimizer, sharding, train loop), ``infer`` (KV-cache decoding),
``convert`` (weights in and out), ``eval`` (benchmarks), ``configs`` (the training
recipes), ``launch`` (the local multi-process launcher). The command-line tools are
``python -m neo_jax.train | infer | evaluate | convert | aot | sweep | data.audit``.
"""

import lazy_loader as _lazy

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__, submodules=["configs", "convert", "core", "data", "eval", "infer", "launch",
                          "model", "ops", "train"])
