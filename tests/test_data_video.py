"""Seeking video decode (data/video.py) against decoding every frame.

The oracle decodes the whole file in order (what ``decode_video`` did before it
seeked) and picks frames by index or by presentation time; every frame carries
its own index as a 16-bit block pattern, so a frame is identified by its pixels.
"""

from fractions import Fraction

import av
import numpy as np
import pytest

from neo_jax.data import video as video_lib
from neo_jax.data.errors import BadSample

SIDE = 64


def _pattern(i: int) -> np.ndarray:
  """A 64x64 frame showing ``i`` as 16 black / white 16x16 blocks."""
  bits = (i >> np.arange(16)) & 1
  return np.kron(bits.reshape(4, 4) * 255, np.ones((16, 16))).astype(np.uint8)[..., None].repeat(3, -1)


def _read_pattern(img) -> int:
  a = np.asarray(img.convert("L"), np.float64).reshape(4, 16, 4, 16).mean(axis=(1, 3))
  return int(((a.reshape(-1) > 127) * (1 << np.arange(16))).sum())


def _write(path, n, *, codec="libx264", fmt=None, rate=30, gop=12, pts=None, time_base=None):
  with av.open(str(path), "w", format=fmt) as c:
    s = c.add_stream(codec, rate=rate)
    s.width = s.height = SIDE
    s.pix_fmt = "yuv420p"
    s.codec_context.gop_size = gop
    if codec == "libx264":
      s.options = {"qp": "0"}  # lossless: the block pattern survives exactly
    if time_base is not None:
      s.time_base = time_base
      s.codec_context.time_base = time_base
    for i in range(n):
      fr = av.VideoFrame.from_ndarray(_pattern(i), format="rgb24")
      if pts is not None:
        fr.pts, fr.time_base = pts[i], time_base
      for p in s.encode(fr):
        c.mux(p)
    for p in s.encode():
      c.mux(p)


def _all_frames(path):
  """Oracle: every frame in decode order with its presentation time [s]."""
  with av.open(str(path)) as c:
    s = c.streams.video[0]
    return [(f.time, f.to_image()) for f in c.decode(s)]


@pytest.mark.parametrize("gop,target_fps,max_frames", [(12, 1.0, 128), (12, 0.25, 128), (90, 1.0, 7), (300, 2.0, 64)])
def test_cfr_h264_equals_decoding_everything(tmp_path, gop, target_fps, max_frames):
  path = tmp_path / "v.mp4"
  n = 600  # 20 s at 30 fps
  _write(path, n, gop=gop)
  frames, times, duration = video_lib.decode_video(str(path), target_fps, max_frames)
  idx = video_lib.sample_frame_indices(n, 30.0, target_fps, max_frames)
  every = _all_frames(path)
  assert len(every) == n and len(frames) == len(idx)
  for got, t, i in zip(frames, times, idx):
    assert _read_pattern(got) == i
    np.testing.assert_array_equal(np.asarray(got), np.asarray(every[i][1].convert("RGB")))
    assert t == pytest.approx(i / 30.0, abs=1e-6)
  assert duration == pytest.approx(20.0, abs=0.05)


@pytest.mark.parametrize("target_fps", [2.0, 0.4])
def test_variable_frame_rate_timestamps_are_the_frames_own(tmp_path, target_fps):
  """Frames 0, 20, 30, 90, ... ms apart irregularly: each sample is the first frame at or
  after its target time (within half a mean frame), stamped with its own pts."""
  rng = np.random.default_rng(0)
  n = 240
  gaps = rng.choice([10, 20, 40, 90], size=n - 1)  # [ms]
  pts = np.concatenate([[0], np.cumsum(gaps)]).tolist()
  path = tmp_path / "vfr.mkv"
  _write(path, n, pts=pts, time_base=Fraction(1, 1000), gop=25)
  frames, times, _ = video_lib.decode_video(str(path), target_fps, 128)
  every = _all_frames(path)
  assert [round(t * 1000) for t, _ in every] == pts  # the file is as intended
  assert len(frames) >= 3
  for img, t in zip(frames, times):
    i = _read_pattern(img)
    assert t == pytest.approx(pts[i] / 1000, abs=1e-6)  # its own presentation time
  assert times == sorted(times) and len(set(times)) == len(times)


def test_raw_stream_without_duration(tmp_path):
  """A raw Annex-B H.264 file has no duration or index: timed from its packets."""
  path = tmp_path / "v.h264"
  _write(path, 150, fmt="h264", gop=30)
  frames, times, duration = video_lib.decode_video(str(path), 1.0, 128)
  assert [_read_pattern(f) for f in frames] == [0, 30, 60, 90, 120]
  assert times == pytest.approx([0, 1, 2, 3, 4], abs=1e-3)
  assert duration == pytest.approx(5.0, abs=0.05)


def test_undecodable_file_is_a_bad_sample(tmp_path):
  path = tmp_path / "bad.mp4"
  path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
  with pytest.raises(BadSample) as e:
    video_lib.decode_video(str(path), 1.0)
  assert e.value.reason == "corrupt_file"
