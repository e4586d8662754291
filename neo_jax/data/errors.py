"""The one exception type for bad input records (NEO_SPEC §3; issue 3)."""

from __future__ import annotations


class BadSample(ValueError):
  """A record that cannot become a training sample.

  Attributes:
    reason: a short stable key used for skip counts (e.g. ``"missing_file"``,
      ``"corrupt_file"``, ``"aspect_ratio"``, ``"decompression_bomb"``,
      ``"image_tag_mismatch"``, ``"empty_conversation"``, ``"no_supervised_token"``,
      ``"too_long"``).
    detail: a human-readable explanation.
  """

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason
    self.detail = detail
