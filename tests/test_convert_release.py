"""The release-code acceptance check as a test, skipped unless ``NEO_RELEASE_DIR``
points at an extracted copy of the release's ``to_hf`` folder (see
``release_check.py``)."""

import os

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

RELEASE_DIR = os.environ.get("NEO_RELEASE_DIR")


@pytest.mark.torch
@pytest.mark.skipif(not RELEASE_DIR, reason="set NEO_RELEASE_DIR to the release's to_hf folder")
@pytest.mark.parametrize("tie", [True, False])
def test_release_neochatmodel_reproduces_our_logits(tmp_path, tie):
  import release_check
  assert release_check.check(RELEASE_DIR, tie, str(tmp_path), 1e-4)
