"""Training: the loop (``run``, what ``python -m neo_jax.train`` calls), its set-up
(``Setup``: model, mesh, shardings, the jitted step; ``build_model``), the step
(``TrainState``, ``train_step``), the optimizer (``make_optimizer``,
``learning_rate_schedule``), meshes and logical-axis shardings (``make_mesh``,
``rules_from_config``, ``logical_shardings``), the input (``make_data_iterator``),
Orbax checkpoints with the data-iterator state (``checkpointing``), resume
(``restore_or_init``), and the ways a run ends (``exits``, ``preemption``, ``peers``,
``preflight``). Loaded on first use (``lazy_loader``).
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submodules=["checkpointing", "exits"],
    submod_attrs={
        "input_pipeline": ["make_data_iterator"],
        "optimizer": ["learning_rate_schedule", "make_optimizer"],
        "resume": ["CheckpointUnreadableError", "restore_or_init"],
        "setup": ["Setup", "build_model"],
        "sharding": ["logical_shardings", "make_mesh", "rules_from_config"],
        "step": ["TrainState", "train_step"],
        "trainer": ["run"],
    })
