"""The release's evaluation functions, run from its own files (``NEO_RELEASE_DIR``).

``NEO_RELEASE_DIR`` is the release's ``to_hf`` folder for the model checks
(``testlib/release.py``) or the extraction's root; the VLMEvalKit trees are found
above it (``VLMEvalKit/`` and ``VLMEvalKit_ov/``). ``neo_utils(ov)`` executes the
release's ``vlm/neo/utils.py`` (its package-relative imports replaced by the two names it
uses from them: ``DATASET_TYPE``, not reached by the functions tested, and the
release's own ``listinstr`` / ``cn_string`` from ``smp/misc.py``); ``build_prompt(ov)``
is ``NEOChat.build_prompt`` from ``neo_chat.py`` bound to a minimal model object. Both
need what those files import (torch, pandas): the tests skip without them. Where
torchvision cannot be imported, its four transforms the file uses are stated in torch
(``_Transforms``).
"""

from __future__ import annotations

import ast
import os
import string
from typing import Any

import pytest


def root() -> str | None:
  """The folder holding ``VLMEvalKit`` (and ``VLMEvalKit_ov``), or None."""
  d = os.environ.get("NEO_RELEASE_DIR")
  while d and d != os.path.dirname(d):
    if os.path.isdir(os.path.join(d, "VLMEvalKit", "vlmeval")):
      return d
    d = os.path.dirname(d)
  return None


def _tree(ov: bool) -> str:
  r = root()
  if r is None:
    pytest.skip("set NEO_RELEASE_DIR to the release (its to_hf folder or the extraction)")
  tree = os.path.join(r, "VLMEvalKit_ov" if ov else "VLMEvalKit", "vlmeval")
  if not os.path.isdir(tree):
    pytest.skip(f"{tree} is not in this extraction of the release")
  return tree


def _functions(path: str, names: tuple[str, ...]) -> dict[str, Any]:
  """The named top-level functions of a release file, executed from its source."""
  tree = ast.parse(open(path, encoding="utf-8").read())
  keep = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
  ns: dict[str, Any] = {}
  exec(compile(ast.Module(keep, []), path, "exec"), ns)  # pylint: disable=exec-used
  return ns


def functions(relpath: str, names: tuple[str, ...], ov: bool = False, **names_used) -> dict:
  """Plain-Python functions of a release file under ``vlmeval/`` (e.g.
  ``utils/matching_util.py``), with ``names_used`` (and the release's ``listinstr``,
  ``cn_string``, ``istype``, ``process_punctuation``) as their globals."""
  tree = _tree(ov)
  ns = _functions(os.path.join(tree, "smp", "misc.py"),
                  ("listinstr", "cn_string", "istype", "process_punctuation"))
  ns.update(names_used)
  fns = _functions(os.path.join(tree, relpath), names)
  missing = set(names) - set(fns)
  assert not missing, f"{relpath} has no {missing}"
  fns.update(ns)          # the functions' globals are this namespace
  return fns


class _Transforms:
  """torchvision.transforms' ``Compose``, ``Lambda``, ``ToTensor``, ``Normalize`` in torch,
  for environments whose torchvision cannot load (a CUDA wheel next to the CPU torch):
  ToTensor is the ``[H, W, C]`` uint8 image as ``[C, H, W]`` float / 255, Normalize
  ``(x - mean) / std`` per channel."""

  @staticmethod
  def Compose(fns):  # pylint: disable=invalid-name
    def run(x):
      for f in fns:
        x = f(x)
      return x
    return run

  @staticmethod
  def Lambda(f):  # pylint: disable=invalid-name
    return f

  @staticmethod
  def ToTensor():  # pylint: disable=invalid-name
    import numpy as np  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
    return lambda img: torch.from_numpy(np.array(img, np.float32) / 255.0).permute(2, 0, 1)

  @staticmethod
  def Normalize(mean, std):  # pylint: disable=invalid-name
    import torch  # pylint: disable=import-outside-toplevel
    m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    return lambda x: (x - m) / s


def neo_utils(ov: bool = False) -> dict[str, Any]:
  """The namespace of the release's ``vlm/neo/utils.py`` (NEO, or NEO-ov with ``ov``)."""
  tree = _tree(ov)
  for mod in ("torch", "pandas"):
    pytest.importorskip(mod)
  path = os.path.join(tree, "vlm", "neo", "utils.py")
  src = open(path, encoding="utf-8").read()
  ns = dict(_functions(os.path.join(tree, "smp", "misc.py"), ("listinstr", "cn_string")),
            os=os, DATASET_TYPE=lambda *_: pytest.fail("DATASET_TYPE reached"))
  try:
    import torchvision.transforms  # noqa: F401  pylint: disable=import-outside-toplevel
  except (ImportError, RuntimeError):
    ns["T"] = _Transforms
    src = src.replace("import torchvision.transforms as T", "")
  for imp in ("from ...dataset import DATASET_TYPE", "from ...smp import *"):
    assert imp in src, f"{path} no longer has {imp!r}"
    src = src.replace(imp, "")
  exec(compile(src, path, "exec"), ns)  # pylint: disable=exec-used
  return ns


class _Model:
  """What ``build_prompt`` reads of ``NEOChat``: no MPO / CoT prompts, images already on disk."""
  use_mpo_prompt = False
  use_cot = False

  def __init__(self, paths):
    self.kwargs = {}
    self._paths = paths

  def use_custom_prompt(self, dataset):
    del dataset
    return True

  def dump_image(self, line, dataset):
    del line, dataset
    return list(self._paths)


def build_prompt(ov: bool, dataset_type: str):
  """``(row dict, dataset, image paths) -> message list`` of the release's
  ``NEOChat.build_prompt`` with VLMEvalKit's ``DATASET_TYPE`` answering ``dataset_type``."""
  utils = neo_utils(ov)
  import pandas as pd  # pylint: disable=import-outside-toplevel
  path = os.path.join(_tree(ov), "vlm", "neo", "neo_chat.py")
  tree = ast.parse(open(path, encoding="utf-8").read())
  cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "NEOChat")
  fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "build_prompt")
  ns = dict(utils, pd=pd, string=string, DATASET_TYPE=lambda *_, **__: dataset_type)
  exec(compile(ast.Module([fn], []), path, "exec"), ns)  # pylint: disable=exec-used

  def run(row: dict, dataset: str, paths: list[str]):
    line = pd.Series({k: (float("nan") if v is None else v) for k, v in row.items()})
    return ns["build_prompt"](_Model(paths), line, dataset)
  return run


def vlmeval_dataset_modules() -> dict[str, Any]:
  """VLMEvalKit's ``image_mcq``, ``image_yorn`` and ``image_vqa`` dataset modules, imported
  from the release (``vlmeval`` and ``vlmeval.dataset`` stand as bare packages, so only
  these modules and ``vlmeval.smp`` run, not every model and data set of the package).
  Skips without what they import (pandas, openpyxl, xlsxwriter, validators, sty,
  matplotlib, portalocker, huggingface_hub)."""
  import sys  # pylint: disable=import-outside-toplevel
  import types  # pylint: disable=import-outside-toplevel
  tree = _tree(False)
  for mod in ("pandas", "openpyxl", "xlsxwriter", "validators", "sty", "matplotlib",
              "portalocker", "huggingface_hub"):
    pytest.importorskip(mod)
  for name, path in (("vlmeval", tree), ("vlmeval.dataset", os.path.join(tree, "dataset"))):
    if name not in sys.modules:
      pkg = types.ModuleType(name)
      pkg.__path__ = [path]
      sys.modules[name] = pkg
  import importlib  # pylint: disable=import-outside-toplevel
  out = {n: importlib.import_module(f"vlmeval.dataset.{n}")
         for n in ("image_mcq", "image_yorn", "image_vqa")}
  return out
