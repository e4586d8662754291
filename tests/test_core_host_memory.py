"""core/host_memory.py: the heap is trimmed after long XLA compiles, and JAX still emits
the event the listener waits for (a renamed event would silently disable it)."""

import jax
import jax.numpy as jnp

from neo_jax.core import host_memory


def test_listener_trims_after_long_backend_compiles_only(monkeypatch):
  calls = []
  monkeypatch.setattr(host_memory, "release_host_memory", lambda collect=True: calls.append(collect))
  listener = host_memory.compile_listener(1.0)
  listener("/jax/core/compile/backend_compile_duration", 0.5)
  listener("/jax/core/compile/jaxpr_trace_duration", 5.0)
  assert not calls
  listener("/jax/core/compile/backend_compile_duration", 2.0, fun_name="step")
  assert calls == [False]   # malloc_trim only, no garbage collection inside JAX


def test_jax_emits_the_backend_compile_event():
  events = []
  jax.monitoring.register_event_duration_secs_listener(lambda e, d, **k: events.append(e))
  jax.jit(lambda x: x * 3 + 1.5)(jnp.ones(5)).block_until_ready()
  assert host_memory._TRIM_EVENT in events  # pylint: disable=protected-access
