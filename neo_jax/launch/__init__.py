"""Launchers that ship with the package: ``local`` (N JAX processes on this machine,
``python -m neo_jax.launch.local``). The pod launchers (TPU VMs, xpk / JobSet, SLURM,
the container image) live in the checkout's ``launch/``: they ship or build that
checkout. Loaded on first use (``lazy_loader``)."""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(__name__, submodules=["local"])
