"""A corpus of realistic records for the data-pipeline benchmark (not a test).

Writes under ``root`` a release-format data set and a mixture file naming it:

* ``photos/``: JPEG photographs of 1-4 megapixels (scikit-image's photographs,
  cropped and resized to a random size in that range, with sensor-like noise so
  the JPEGs are not trivially small), quality 90;
* ``videos/``: H.264 clips (640x360, 30 fps, 20-60 s, keyframe every 60 frames), or
  with ``long_video_minutes`` clips of that length at 1280x720 (``video_decode.make_video``);
* ``image.jsonl`` (one photo per record), ``multi_image.jsonl`` (2-4 photos),
  ``video.jsonl`` (one clip) and ``text.jsonl`` (text only): question / answer
  conversations of 20-200 words;
* ``mix.yaml``: the four sources with their modality, no weights, so the NEO-ov
  default 2 : 4 : 1 : 1 (text : image : multi-image : video) applies.

    python bench/realistic_corpus.py /tmp/neo_realistic
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from PIL import Image

WORDS = ("the a of to and in is it that for on with as was at by this be from or an are "
         "image photo shows left right top bottom color red blue green person cat building "
         "street sky water tree light dark small large near far above below").split()


def _text(rng, lo, hi):
  return " ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi)))).capitalize() + "."


def _photos(root, rng, n):
  from skimage import data as skdata  # pylint: disable=import-outside-toplevel
  bases = [np.asarray(getattr(skdata, k)()) for k in ("astronaut", "coffee", "chelsea", "rocket")]
  bases = [b if b.ndim == 3 else np.stack([b] * 3, -1) for b in bases]
  os.makedirs(os.path.join(root, "photos"), exist_ok=True)
  names = []
  for i in range(n):
    base = bases[i % len(bases)][..., :3]
    mp = rng.uniform(1.0, 4.0) * 1e6
    aspect = rng.uniform(0.6, 1.8)
    w, h = int(np.sqrt(mp * aspect)), int(np.sqrt(mp / aspect))
    img = np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR), np.int16)
    img = np.clip(img + rng.normal(0, 6, size=img.shape), 0, 255).astype(np.uint8)
    name = f"photos/{i:04d}.jpg"
    Image.fromarray(img).save(os.path.join(root, name), quality=90)
    names.append(name)
  return names


def _videos(root, rng, n):
  import av  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.join(root, "videos"), exist_ok=True)
  names = []
  tex = rng.integers(0, 256, size=(45, 160, 3), dtype=np.uint8)
  tex = np.kron(tex, np.ones((8, 8, 1), np.uint8))  # 360 x 1280
  for i in range(n):
    name = f"videos/{i:03d}.mp4"
    with av.open(os.path.join(root, name), "w") as c:
      s = c.add_stream("libx264", rate=30)
      s.width, s.height, s.pix_fmt = 640, 360, "yuv420p"
      s.codec_context.gop_size = 60
      s.options = {"preset": "veryfast", "crf": "26"}
      for f in range(int(rng.integers(20, 61)) * 30):
        x = (f * 2 + i * 37) % 640
        for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(tex[:, x:x + 640]),
                                                     format="rgb24")):
          c.mux(p)
      for p in s.encode():
        c.mux(p)
    names.append(name)
  return names


def _long_videos(root, n, minutes):
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import video_decode  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.join(root, "videos"), exist_ok=True)
  names = [f"videos/long{i:02d}.mp4" for i in range(n)]
  for name in names:
    if not os.path.exists(os.path.join(root, name)):
      video_decode.make_video(os.path.join(root, name), minutes * 60, 1280, 720, gop=60)
  return names


def build(root: str, photos: int = 48, videos: int = 8, records: int = 400, seed: int = 0,
          long_video_minutes: float = 0) -> str:
  """Writes the corpus (once; kept when ``mix.yaml`` exists) and returns the mixture path.

  ``long_video_minutes`` > 0: the ``videos`` clips are that long, 1280x720, 30 fps.
  """
  mix = os.path.join(root, "mix.yaml")
  if os.path.exists(mix):
    return mix
  rng = np.random.default_rng(seed)
  os.makedirs(root, exist_ok=True)
  ph = _photos(root, rng, photos)
  vi = (_long_videos(root, videos, long_video_minutes) if long_video_minutes
        else _videos(root, rng, videos))

  def conv(media_tag):
    return [{"from": "human", "value": media_tag + _text(rng, 10, 40)},
            {"from": "gpt", "value": _text(rng, 20, 200)}]

  files = {
      "text": [{"conversations": conv("")} for _ in range(records)],
      "image": [{"image": str(rng.choice(ph)), "conversations": conv("<image>\n")}
                for _ in range(records)],
      "multi_image": [],
      "video": [{"video": str(rng.choice(vi)), "conversations": conv("<video>\n")}
                for _ in range(records)],
  }
  for _ in range(records):
    k = int(rng.integers(2, 5))
    files["multi_image"].append({"image": [str(x) for x in rng.choice(ph, size=k, replace=False)],
                                 "conversations": conv("<image>\n" * k)})
  lines = ["sources:"]
  for name, recs in files.items():
    with open(os.path.join(root, f"{name}.jsonl"), "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in recs)
    lines += [f"  {name}:", f"    annotation_path: {root}/{name}.jsonl", f"    data_path: {root}",
              f"    modality: {name}"]
  with open(mix, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return mix


if __name__ == "__main__":
  print(build(sys.argv[1] if len(sys.argv) > 1 else "/tmp/neo_realistic"))
