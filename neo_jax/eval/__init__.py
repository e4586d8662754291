"""Benchmarks as the NEO authors run them: VLMEvalKit files and prompts (``vlmevalkit``,
``prompts``, ``matching``, ``scores``), the release's evaluation preprocessing and
generation settings (``presets``: ``Preset``), the evaluation loop (``evaluate``, what
``python -m neo_jax.evaluate`` runs) and an lmms-eval model (``lmms_adapter``, loaded by
lmms-eval in an environment of its own: ``python -m neo_jax.eval.lmms_env``). Loaded on
first use (``lazy_loader``).
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submodules=["matching", "presets", "prompts", "scores", "vlmevalkit"],
    submod_attrs={"presets": ["Preset"], "runner": ["evaluate"]})
