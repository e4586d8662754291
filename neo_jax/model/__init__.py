"""The NEO model in Flax Linen: ``NEO`` (``neo.py``: patch embedder, pre-Buffer and
post-LLM stacks of native primitives, LM head) and its config (``get_model_config``,
``config.py``). Loaded on first use (``lazy_loader``)."""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__, submod_attrs={"config": ["get_model_config"], "neo": ["NEO"]})
