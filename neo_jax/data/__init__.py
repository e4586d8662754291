"""Samples in, packed ``[batch, seq]`` batches out: the Qwen3 + NEO tokenizer, the chat
template, native-resolution images, video, the release's annotation sources, fitting a
sample to the run's limits, packing, the Grain pipeline, the embedded data set and the
data audit.

What a user calls: ``make_train_iterator`` / ``make_train_dataset`` (the training input
of a config's ``data``), ``make_eval_examples`` (held-out examples), ``get_tokenizer``,
``SampleProcessor`` (one record -> one packed-ready sample), ``read_mixture`` /
``apply_mixture`` (a mixture file), ``run_audit`` (``python -m neo_jax.data.audit``);
``BadSample`` / ``SourceStarvedError`` are its errors. Never imports ``neo_jax.model``.
Loaded on first use (``lazy_loader``).
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "audit": ["run_audit"],
        "errors": ["BadSample", "SourceStarvedError"],
        "mixture": ["apply_mixture", "read_mixture"],
        "pipeline": ["default_data_config", "make_eval_examples", "make_train_dataset",
                     "make_train_iterator"],
        "processor": ["ProcessOptions", "SampleProcessor"],
        "tokenizer": ["Tokenizer", "get_tokenizer"],
    })
