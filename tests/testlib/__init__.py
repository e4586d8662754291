"""Helpers shared by the tests (imported as ``from testlib import model``).

* ``model``: the tiny model config, a hand-built packed batch, parameters, loss.
* ``batch``: packed test batches in our format and in the release's.
* ``attention``: random packed segment / unit ids for the kernel tests.
* ``data``: independent re-implementations of the data pipeline's formulas.
* ``train``: the trainer CLI command and its logged losses.
* ``np_reference``: the model in NumPy float64 (the independent reference).
* ``torch_reference``: the model in PyTorch from exported weights.
"""
