"""The release-code acceptance check, skipped unless ``NEO_RELEASE_DIR`` points at an
extracted copy of the release's ``to_hf`` folder (``testlib/release.py`` says how)."""

import os

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

RELEASE_DIR = os.environ.get("NEO_RELEASE_DIR")


@pytest.mark.torch
@pytest.mark.skipif(not RELEASE_DIR, reason="set NEO_RELEASE_DIR to the release's to_hf folder")
@pytest.mark.parametrize("tie", [True, False])
def test_release_neochatmodel_reproduces_our_logits(tmp_path, tie):
  from testlib import release  # pylint: disable=import-outside-toplevel
  assert os.path.isfile(os.path.join(RELEASE_DIR, "modeling_neo_chat.py")), (
      f"{RELEASE_DIR} has no modeling_neo_chat.py (point NEO_RELEASE_DIR at the to_hf folder).")
  assert release.check(RELEASE_DIR, tie, str(tmp_path), 1e-4)


@pytest.mark.torch
@pytest.mark.skipif(not RELEASE_DIR, reason="set NEO_RELEASE_DIR to the release's to_hf folder")
@pytest.mark.parametrize("tie", [True, False])
def test_release_generate_equals_our_cached_decoder(tmp_path, tie):
  from testlib import release  # pylint: disable=import-outside-toplevel
  assert release.check_generate(RELEASE_DIR, tie, str(tmp_path))
