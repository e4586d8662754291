"""The local lmms-eval tasks of ``tests/test_eval_lmms.py``: a few held-out images and
videos of the embedded data set (``neo_jax/data/embedded.py``), read from ``data/``.
The JSONL files are found relative to the working directory (run lmms-eval from
``tests/lmms_task``)."""

import os

from PIL import Image

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def doc_to_visual(doc):
  """An image document: its PIL image (RGB, as lmms-eval's tasks give them); a video
  document: its file path (lmms-eval makes it a video content)."""
  if doc.get("video"):
    return [os.path.join(DATA, doc["video"])]
  return [Image.open(os.path.join(DATA, doc["image"])).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
  del lmms_eval_specific_kwargs
  return doc["question"]


def process_results(doc, results):
  """Exact match of the stripped answer."""
  return {"exact_match": float(results[0].strip() == doc["answer"])}
