"""The NEO model in Flax Linen: ``NEO`` (``neo.py``: patch embedder, pre-Buffer and
post-LLM stacks of native primitives, LM head), its typed config (``ModelConfig``,
``model_config.py``) and the user-layer ``ConfigDict`` presets (``get_model_config``,
``config.py``). Loaded on first use (``lazy_loader``)."""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__, submod_attrs={"config": ["get_model_config"], "model_config": ["ModelConfig"],
                            "neo": ["NEO"]})
