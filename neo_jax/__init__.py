"""neo_jax: NEO and NEO-ov native vision-language models in JAX / Flax.

Layers of the system, one folder each: ``model/`` (Flax modules), ``ops/``
(attention with the mixed mask), ``data/`` (tokenizer, images, video, Grain),
``train/`` (optimizer, sharding, train loop), ``convert/`` (weights in and out),
``infer/`` (generation).
"""

__version__ = "0.1.0"
