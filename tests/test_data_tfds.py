"""TFDS source (``kind: tfds``) against a real prepared TFDS data set, without TensorFlow.

A tiny ``GeneratorBasedBuilder`` is prepared in a temporary directory with
``file_format="array_record"``. TFDS 4.9 serialises without TensorFlow as long
as images are given as files or Pillow images (only encoding a NumPy image
calls ``tf.image.encode_png``); reading goes through ``tfds.data_source``
(ArrayRecord + the NumPy example parser, Pillow decoding). The builder is not
registered (``skip_registration``), so ``tfds.data_source`` finds the data set
from ``data_dir`` alone, as with data prepared on another machine.

Each check compares with the same records written as a JSON annotation file,
whose path through the pipeline is tested in ``test_data_pipeline.py``.
"""

import json
import pickle

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from neo_jax.data import pipeline  # pylint: disable=g-import-not-at-top
from neo_jax.data import sources  # pylint: disable=g-import-not-at-top
from testlib.data import assert_batches_equal, take  # pylint: disable=g-import-not-at-top

NAME = "neo_jax_tiny_vqa"
N = 12
SIZES = ((40, 70), (64, 48), (33, 90))  # (h, w) of the RGB images, by i % 3


class NeoJaxTinyVqa(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """RGB + grayscale images, question / answer / caption text; generation order kept."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  root = ""

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "gray": tfds.features.Image(shape=(None, None, 1)),
            "question": tfds.features.Text(),
            "answer": tfds.features.Text(),
            "caption": tfds.features.Text(),
            "pair": tfds.features.Sequence(tfds.features.Image(shape=(None, None, 3))),
        }),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(N):
      yield i, {"image": f"{self.root}/rgb{i % 3}.png",  # a path: stored as the file's PNG bytes
                "gray": Image.open(f"{self.root}/gray{i % 2}.png"),  # a Pillow "L" image
                "question": f"Question {i}?", "answer": f"Answer {i}.",
                "caption": f"caption {i} \u00e9\u00e8",
                "pair": [f"{self.root}/rgb{i % 3}.png", f"{self.root}/rgb{(i + 1) % 3}.png"]}


def _json_record(i, image_key="image", question_key="question", prompt="{question}"):
  """The release-format record a TFDS example should map to (image as its PNG file)."""
  q = {"question": f"Question {i}?", "caption": f"caption {i} \u00e9\u00e8"}[question_key]
  rec = {"conversations": [{"from": "human", "value": prompt.format(question=q)},
                           {"from": "gpt", "value": f"Answer {i}."}]}
  if image_key == "pair":
    rec["images"] = [f"rgb{i % 3}.png", f"rgb{(i + 1) % 3}.png"]
  elif image_key:
    rec["image"] = {"image": f"rgb{i % 3}.png", "gray": f"gray{i % 2}.png"}[image_key]
  return rec


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds_src")
  rng = np.random.default_rng(0)
  for k, (h, w) in enumerate(SIZES):
    Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(root / f"rgb{k}.png")
  for k, (h, w) in enumerate(((50, 36), (32, 80))):
    Image.fromarray(rng.integers(0, 256, size=(h, w), dtype=np.uint8), "L").save(root / f"gray{k}.png")
  NeoJaxTinyVqa.root = str(root)
  data_dir = root / "data"
  builder = NeoJaxTinyVqa(data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      compute_stats=tfds.download.ComputeStatsMode.SKIP))
  assert list((data_dir / NAME / "1.0.0").glob("*.array_record*"))
  return root


def _cfg(kind_cfg, **kw):
  c = pipeline.default_data_config()
  c.shuffle = kw.pop("shuffle", False)
  for k, v in kw.items():
    c[k] = v
  c.sources = {"mine": dict(weight=1.0, data_root="", options={"min_pixels": 1024, "max_pixels": 4096},
                            **kind_cfg)}
  return c


def _tfds_cfg(root, **kw):
  return {"kind": "tfds", "tfds_name": NAME, "tfds_split": kw.pop("split", "train"),
          "tfds_data_dir": str(root / "data"), **kw}


def _json_cfg(root, recs, name="a.json"):
  (root / name).write_text(json.dumps(recs))
  return {"kind": "json", "path": str(root / name)}


def _assert_records_match(tf_rec, js_rec, root):
  assert tf_rec["_id"] == js_rec["_id"]
  assert tf_rec["conversations"] == js_rec["conversations"]
  for key in ("image", "images"):
    assert (key in tf_rec) == (key in js_rec), key
    if key not in js_rec:
      continue
    tf_imgs, js_imgs = (tf_rec[key], js_rec[key]) if key == "images" else ([tf_rec[key]], [js_rec[key]])
    assert len(tf_imgs) == len(js_imgs)
    for img, path in zip(tf_imgs, js_imgs):
      assert isinstance(img, np.ndarray) and img.dtype == np.uint8
      expect = np.asarray(Image.open(root / path))
      assert img.shape == expect.shape
      np.testing.assert_array_equal(img, expect)


def test_tfds_source_records_match_json(tfds_dir):
  tf_ds = sources.make_source("mine", _cfg(_tfds_cfg(tfds_dir)).sources.mine)
  js_ds = sources.make_source("mine", _cfg(_json_cfg(tfds_dir, [_json_record(i) for i in range(N)])).sources.mine)
  assert len(tf_ds) == len(js_ds) == N
  for i in range(N):
    _assert_records_match(tf_ds[i], js_ds[i], tfds_dir)
  assert tf_ds[0]["_id"] == "mine:0" and tf_ds[0]["image"].shape == SIZES[0] + (3,)
  # Split slicing goes through to TFDS.
  part = sources.make_source("mine", _cfg(_tfds_cfg(tfds_dir, split="train[4:7]")).sources.mine)
  assert len(part) == 3
  assert part[0]["conversations"][1]["value"] == "Answer 4."
  # The source pickles (Grain sends it to worker processes).
  again = pickle.loads(pickle.dumps(tf_ds))
  _assert_records_match(again[5], js_ds[5], tfds_dir)


@pytest.mark.parametrize("shuffle", [False, True])
def test_tfds_batches_match_json(tfds_dir, shuffle):
  kw = dict(seq_len=256, batch_size=2, seed=1)
  c_tf = _cfg(_tfds_cfg(tfds_dir), shuffle=shuffle)
  c_js = _cfg(_json_cfg(tfds_dir, [_json_record(i) for i in range(N)]), shuffle=shuffle)
  it_tf, it_js = pipeline.make_train_iterator(c_tf, **kw), pipeline.make_train_iterator(c_js, **kw)
  a, b = take(it_tf, 4), take(it_js, 4)
  assert_batches_equal(a, b)
  st_tf, st_js = it_tf.stats(), it_js.stats()
  assert st_tf["samples"] == st_js["samples"]
  assert not pipeline.skip_counts(it_tf)
  # Every sample is packed whole: count segments and images against the sample count.
  n_seg = sum(int(s.max()) for bt in a for s in bt["segment_ids"])
  assert n_seg >= 8
  img_start = sum(int((bt["input_ids"] == pipeline.get_tokenizer("embedded").img_start_id).sum()) for bt in a)
  assert img_start == n_seg  # one image per sample
  if not shuffle:  # in order: the first sequence starts with record 0
    tok = pipeline.get_tokenizer("embedded")
    ids, seg = a[0]["input_ids"][0], a[0]["segment_ids"][0]
    text = tok.decode([int(t) for t in ids[seg == 1] if t != tok.img_context_id])
    assert "Question 0?" in text and "Answer 0." in text


def test_tfds_custom_keys_grayscale_and_text_only(tfds_dir):
  kw = dict(seq_len=256, batch_size=2, seed=0)
  # A one-channel image feature ([H, W, 1]) and another text feature with a prompt template.
  opts = {"image_key": "gray", "question_key": "caption", "prompt": "Describe: {question}"}
  c_tf = _cfg(_tfds_cfg(tfds_dir, **opts))
  c_js = _cfg(_json_cfg(tfds_dir, [_json_record(i, "gray", "caption", "Describe: {question}")
                                   for i in range(N)], "gray.json"))
  tf_ds, js_ds = (sources.make_source("mine", c.sources.mine) for c in (c_tf, c_js))
  for i in range(N):
    _assert_records_match(tf_ds[i], js_ds[i], tfds_dir)
  it = pipeline.make_train_iterator(c_tf, **kw)
  assert_batches_equal(take(it, 3), take(pipeline.make_train_iterator(c_js, **kw), 3))
  assert not pipeline.skip_counts(it)
  # Text only: image_key "".
  c_tf = _cfg(_tfds_cfg(tfds_dir, image_key=""))
  c_js = _cfg(_json_cfg(tfds_dir, [_json_record(i, "") for i in range(N)], "text.json"))
  it = pipeline.make_train_iterator(c_tf, **kw)
  a = take(it, 2)
  assert_batches_equal(a, take(pipeline.make_train_iterator(c_js, **kw), 2))
  assert all((bt["pixel_values"] == 0).all() for bt in a)
  assert not pipeline.skip_counts(it)


def test_tfds_image_sequence_is_multi_image(tfds_dir):
  kw = dict(seq_len=384, batch_size=2, seed=0)
  opts = {"image_key": "pair", "prompt": "<image>\n<image>\n{question}"}
  c_tf = _cfg(_tfds_cfg(tfds_dir, **opts))
  c_js = _cfg(_json_cfg(tfds_dir, [_json_record(i, "pair", prompt=opts["prompt"]) for i in range(N)],
                        "pair.json"))
  tf_ds, js_ds = (sources.make_source("mine", c.sources.mine) for c in (c_tf, c_js))
  for i in range(N):
    _assert_records_match(tf_ds[i], js_ds[i], tfds_dir)
  it = pipeline.make_train_iterator(c_tf, **kw)
  a = take(it, 2)
  assert_batches_equal(a, take(pipeline.make_train_iterator(c_js, **kw), 2))
  tok = pipeline.get_tokenizer("embedded")
  n_seg = sum(int(s.max()) for bt in a for s in bt["segment_ids"])
  assert n_seg >= 2
  assert sum(int((bt["input_ids"] == tok.img_start_id).sum()) for bt in a) == 2 * n_seg
  assert not pipeline.skip_counts(it)
