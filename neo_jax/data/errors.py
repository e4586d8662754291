"""The one exception type for bad input records (docs/design.md §3; issue 3)."""

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


class SourceStarvedError(RuntimeError):
  """A data source yields (almost) no samples: the run stops instead of looping.

  Raised by the packer (``source_stats.SourceMonitor``) when a source's last
  ``data.starve_records`` records all were skipped, or its skip rate over the last
  ``data.skip_rate_window`` records exceeds ``data.max_skip_rate``. The message names
  the source, the dominant skip reason, an example record and the setting to change.

  Attributes:
    source: the source's name; reason: its dominant skip reason.
  """

  def __init__(self, message: str, source: str = "", reason: str = ""):
    super().__init__(message)
    self.source = source
    self.reason = reason
