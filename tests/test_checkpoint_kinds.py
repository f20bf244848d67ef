"""Every checkpoint kind loads the same way (avtca_jax.checkpoint_kinds), and `evaluate` takes them all; each
names its classes (model.json's, the dataset's, or RAVDESS's for a model that carries none)."""

from __future__ import annotations

import json
import shutil

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


RAVDESS_CLASSES = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")


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
    assert loaded.class_names == RAVDESS_CLASSES  # the original's dataset
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


def test_class_names_from_model_json_the_dataset_or_ravdess(small_avtca_workdir, tmp_path, tmp_path_factory):
  """model.json carries the run's class names (the trainer's write_model_json); a workdir written before that
  (no class_names) takes those of the dataset its config names, else RAVDESS's; a built dataset folder (a
  manifest's data.name) gives its stored names."""
  from avtca_jax import checkpoint_kinds, checkpointing
  from test_predict import CREMA_D_CLASSES, crema_d_workdir
  assert json.loads((small_avtca_workdir / "model.json").read_text())["class_names"] == list(RAVDESS_CLASSES)
  assert checkpoint_kinds.load(str(small_avtca_workdir)).class_names == RAVDESS_CLASSES
  crema_d = crema_d_workdir(tmp_path_factory)
  assert checkpoint_kinds.load(checkpointing.checkpoint_dir(str(crema_d))).class_names == CREMA_D_CLASSES

  old = tmp_path / "old"  # written before model.json had class names
  shutil.copytree(crema_d, old)
  description = json.loads((old / "model.json").read_text())
  del description["class_names"]
  (old / "model.json").write_text(json.dumps(description))
  assert checkpoint_kinds.load(str(old)).class_names == CREMA_D_CLASSES  # config.data.name='crema_d'
  config = checkpoint_kinds.load_config(str(old))
  config.data.name = str(tmp_path / "gone")
  assert checkpoint_kinds.class_names_of(config, str(old)) == RAVDESS_CLASSES[:6]  # nothing else to go on

  built = tmp_path / "manifest" / "mine" / "1.0.0"  # a manifest dataset as data/manifest builds it
  built.mkdir(parents=True)
  config.num_classes = 2
  config.data.name = str(built)
  (built / "label.labels.txt").write_text("dark\nbright\n")
  assert checkpointing.dataset_class_names(config) == ("dark", "bright")
  (built / "metadata.json").write_text(json.dumps({"dataset": {"classes": ["sad", "glad"]}}))
  assert checkpointing.dataset_class_names(config) == ("sad", "glad")
  assert checkpointing.model_description(config)["class_names"] == ["sad", "glad"]
  config.num_classes = 3  # names that do not fit the model are not its names
  assert checkpointing.dataset_class_names(config) is None and "class_names" not in checkpointing.model_description(config)


def test_a_workdir_without_config_json_still_compares_only_the_model(tmp_path):
  """A workdir written before config.json: its model.json (now with class names) is compared as the model
  descriptor alone."""
  from avtca_jax import checkpointing
  from test_evaluate import _config
  config = _config(**{"data.source": "synthetic"})
  checkpointing.write_model_json(str(tmp_path), config)
  assert "class_names" in json.loads((tmp_path / "model.json").read_text())
  assert checkpointing.check_workdir(str(tmp_path), config) is True
  config.fusion = "ia"
  with pytest.raises(checkpointing.CheckpointMismatchError, match="another model"):
    checkpointing.check_workdir(str(tmp_path), config)


@pytest.mark.slow
def test_evaluate_names_the_models_classes(tmp_path_factory, tmp_path):
  """evaluate's per-class report, JSON and plot use the run's classes (CREMA-D's six here), not RAVDESS's."""
  from avtca_jax import evaluate
  from test_predict import CREMA_D_CLASSES, crema_d_workdir
  results = evaluate.evaluate(str(crema_d_workdir(tmp_path_factory)), split="test", removals=[],
                              output_dir=str(tmp_path / "eval"))
  assert list(results["both"]["per_class"]) == list(CREMA_D_CLASSES) == results["both"]["class_names"]
  report = (tmp_path / "eval" / "test_both_report.txt").read_text()
  assert [line.split()[0] for line in report.splitlines()[1:7]] == list(CREMA_D_CLASSES)
