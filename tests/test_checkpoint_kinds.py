"""Every checkpoint kind loads the same way (avtca_jax.checkpoint_kinds), and `evaluate` takes them all."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def original_pth(tmp_path_factory):
  """The original's training output: {'state_dict': DataParallel keys} of a randomised MultiModalCNN 'lt'."""
  from avtca_jax.reference import torch_avtca
  torch.manual_seed(1)
  model = torch_avtca.randomize_(torch_avtca.MultiModalCNN(fusion="lt"), seed=1)
  path = tmp_path_factory.mktemp("pth") / "RAVDESS_multimodalcnn_15_best0.pth"
  torch.save({"epoch": 2, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
  return path


def _leaves(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _leaves(value, prefix + (key,))
    else:
      yield prefix + (key,), np.asarray(value)


def test_pth_and_its_conversion_load_to_the_same_model(original_pth, tmp_path):
  from avtca_jax import checkpoint_kinds, convert
  converted = tmp_path / "converted"
  assert convert.main(["--checkpoint", str(original_pth), "--kind", "avtca", "--fusion", "lt",
                       "--output", str(converted)]) == 0
  from_pth, from_dir = checkpoint_kinds.load(str(original_pth)), checkpoint_kinds.load(str(converted))
  assert (from_pth.kind, from_dir.kind) == ("pytorch", "converted")
  for loaded in (from_pth, from_dir):
    assert loaded.config.fusion == "lt" and loaded.config.image_size == 224
    assert loaded.config.channel_order == "bgr" and loaded.config.num_classes == 8
    assert loaded.warnings() == [] and loaded.mfcc_normalization() == {"mode": "none"}
  a, b = dict(_leaves(from_pth.variables)), dict(_leaves(from_dir.variables))
  assert a.keys() == b.keys() and len(a) > 400
  for path in a:
    np.testing.assert_array_equal(a[path], b[path], err_msg="/".join(path))


def test_workdir_and_its_steps(small_avtca_workdir):
  from avtca_jax import checkpoint_kinds
  whole = checkpoint_kinds.load(str(small_avtca_workdir))
  step = checkpoint_kinds.load(str(small_avtca_workdir / "checkpoints" / "0"))
  assert whole.kind == step.kind == "workdir" and whole.step == step.step == 0
  assert whole.checkpoint == step.checkpoint and whole.workdir == str(small_avtca_workdir)
  warnings = " ".join(whole.warnings())
  assert "generated data" in warnings and "takes 32 px faces" in warnings


@pytest.mark.slow
def test_evaluate_the_originals_pth(original_pth, tmp_path):
  """`evaluate --checkpoint=X.pth --config=...`: the .pth's model (224 px, BGR) on the config's dataset."""
  from avtca_jax import evaluate
  from configs import ravdess
  data_config = ravdess.get_config("smoke")
  data_config.data.source = "synthetic"
  data_config.data.num_examples = 8
  out = tmp_path / "eval"
  results = evaluate.evaluate(checkpoint=str(original_pth), split="test", removals=["video_zeros"],
                              output_dir=str(out), data_config=data_config)
  assert list(results) == ["both", "video_zeros"] and results["both"]["count"] == 8
  summary = json.loads((out / "test_summary.json").read_text())
  assert summary["checkpoint"] == str(original_pth) and summary["step"] == 0
  with pytest.raises(ValueError, match="give --config=configs/ravdess.py:foldK"):
    evaluate.evaluate(checkpoint=str(original_pth), output_dir=str(out))
