"""Long-video decode: peak memory and time of sampling frames (data/video.py).

Makes a synthetic H.264 video with PyAV (a textured picture panning under a moving
box, ``--minutes`` long, ``--width`` x ``--height`` at 30 fps, keyframe every
``--gop`` frames; cached under ``--dir``), then, each in a fresh subprocess,
samples ``--frames`` frames from it and reports the wall time and the peak
resident memory the decode adds (VmHWM, reset after the imports):

* ``seek``: today's ``video.decode_video`` (seek to the keyframe before each
  sampled time, decode forward, keep only the sampled frames);
* ``every_frame``: the previous ``decode_video`` (every frame to a PIL image,
  then sample), re-stated here as the "before" figure; only run on files short
  enough to fit (``--every_frame_max_s``), its memory grows with the length;
* ``just_those``: decoding ``--frames`` consecutive frames from the start and
  converting them to RGB, the cost of decoding just that many frames (the
  floor: a sampled frame of an inter-coded video needs its group of pictures).

    JAX_PLATFORMS=cpu PYTHONPATH=. python bench/video_decode.py --minutes 10 --width 1280 --height 720
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # pylint: disable=wrong-import-position

FPS = 30


def make_video(path: str, seconds: float, width: int, height: int, gop: int) -> None:
  """Writes the synthetic H.264 video (libx264 ``veryfast``, yuv420p, ``gop``)."""
  import av  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  # A smooth texture twice the frame width; each frame is a window sliding over it.
  tex = rng.integers(0, 256, size=(height // 8, width // 4, 3), dtype=np.uint8)
  tex = np.kron(tex, np.ones((8, 8, 1), np.uint8))[:height, :2 * width]
  n = int(seconds * FPS)
  tmp = path + ".part"
  with av.open(tmp, "w", format="mp4") as c:
    s = c.add_stream("libx264", rate=FPS)
    s.width, s.height, s.pix_fmt = width, height, "yuv420p"
    s.codec_context.gop_size = gop
    s.options = {"preset": "veryfast", "crf": "28"}
    for i in range(n):
      x = (i * 3) % width
      frame = np.ascontiguousarray(tex[:, x:x + width])
      y0, x0 = (i * 2) % (height - 64), (i * 5) % (width - 64)
      frame[y0:y0 + 64, x0:x0 + 64] = (i * 7 % 256, 255, 0)
      for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        c.mux(p)
      if i % (FPS * 60) == 0:
        print(f"  encoding: {i / FPS / 60:.0f} / {seconds / 60:.0f} min", flush=True)
    for p in s.encode():
      c.mux(p)
  os.replace(tmp, path)


def _measure(mode: str, path: str, frames: int) -> dict:
  import av  # pylint: disable=import-outside-toplevel
  from neo_jax.data import images as images_lib  # pylint: disable=import-outside-toplevel
  from neo_jax.data import video as video_lib  # pylint: disable=import-outside-toplevel
  with av.open(path) as c:
    s = c.streams.video[0]
    duration = float(s.duration * s.time_base)
  target_fps = frames / duration  # exactly `frames` frames spread over the video
  before = benchlib.reset_peak()
  t0 = time.perf_counter()
  if mode == "seek":
    out = video_lib.decode_video(path, target_fps, frames)[0]
  elif mode == "every_frame":
    with av.open(path) as c:
      s = c.streams.video[0]
      every = [f.to_image() for f in c.decode(s)]
    idx = video_lib.sample_frame_indices(len(every), float(s.average_rate), target_fps, frames)
    out = [images_lib.to_rgb(every[i]) for i in idx]
  else:  # just_those
    with av.open(path) as c:
      out = []
      for f in c.decode(c.streams.video[0]):
        out.append(images_lib.to_rgb(f.to_image()))
        if len(out) == frames:
          break
  return {"mode": mode, "frames": len(out), "seconds": time.perf_counter() - t0,
          "added_peak_mib": benchlib.hwm_mib() - before, "peak_rss_mib": benchlib.hwm_mib()}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--minutes", type=float, default=10.0)
  ap.add_argument("--width", type=int, default=1280)
  ap.add_argument("--height", type=int, default=720)
  ap.add_argument("--gop", type=int, default=12, help="keyframe interval [frames] (PyAV's default 12)")
  ap.add_argument("--frames", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--every_frame_max_s", type=float, default=90.0)
  ap.add_argument("--dir", default="/tmp/neo_jax_bench_video")
  ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
  a = ap.parse_args()
  if a.one:
    mode, path = a.one.split(":", 1)
    print(json.dumps(_measure(mode, path, a.frames)))
    return
  os.makedirs(a.dir, exist_ok=True)
  path = os.path.join(a.dir, f"synthetic_{a.minutes:g}min_{a.width}x{a.height}_gop{a.gop}.mp4")
  if not os.path.exists(path):
    print(f"Writing {path} ...", flush=True)
    t0 = time.perf_counter()
    make_video(path, a.minutes * 60, a.width, a.height, a.gop)
    print(f"  done in {time.perf_counter() - t0:.0f} s, {os.path.getsize(path) / 2**20:.0f} MiB")
  modes = ["just_those", "seek"] + (["every_frame"] if a.minutes * 60 <= a.every_frame_max_s else [])
  rows = []
  for mode in modes:
    runs = []
    for _ in range(a.repeats):
      runs.append(benchlib.run_fresh(__file__, [f"--one={mode}:{path}", f"--frames={a.frames}"]))
    best = min(runs, key=lambda r: r["seconds"])
    best["peak_added_max_mib"] = max(r["added_peak_mib"] for r in runs)
    rows.append(best)
  base = rows[0]["seconds"]
  print(f"video: {a.minutes:g} min {a.width}x{a.height} {FPS} fps H.264, keyframe every {a.gop} "
        f"frames; {a.frames} frames sampled; best of {a.repeats} fresh processes")
  print("| mode | frames | seconds | x just_those | peak RSS added MiB (max) | peak RSS MiB |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['mode']} | {r['frames']} | {r['seconds']:.2f} | {r['seconds'] / base:.2f} | "
          f"{r['peak_added_max_mib']:.0f} | {r['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
  main()
