"""Attention over packed sequences with NEO's mixed mask (causal text, bidirectional
within an image or frame): the mask, the dense reference, the plain-JAX block-sparse
path, the Pallas kernel (Mosaic on TPU, Triton on GPU) and the dispatch between them.

What a user calls: ``attention.attention`` (the model's entry: picks the path for the
platform and mesh), ``flash_mixed_attention`` (the kernel), ``blockwise_attention``
(plain JAX), ``reference_attention`` (dense, the tests' oracle), ``mixed_mask``,
``resolve_attention_impl``. Loaded on first use (``lazy_loader``).
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submodules=["attention"],
    submod_attrs={
        "backend": ["resolve_attention_impl"],
        "flash_blockwise": ["blockwise_attention"],
        "flash_mixed": ["flash_mixed_attention"],
        "mask": ["mixed_mask"],
        "reference": ["reference_attention"],
    })
