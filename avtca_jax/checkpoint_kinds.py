"""Every kind of checkpoint a user may hold, loaded the same way for `predict`, `evaluate` and `export`.

  training workdir          WORKDIR (config.json + checkpoints/ or best/): the best-validation checkpoint,
                            else the latest
  checkpoint step           WORKDIR/checkpoints/STEP or WORKDIR/best/STEP
  converted checkpoint      DIR written by `python -m avtca_jax.convert --kind avtca` (conversion.json)
  the original's PyTorch    FILE.pth / .pth.tar / .pt of a whole AVT-CA model, converted on the fly with the
  checkpoint                strict conversion (weights_only load, every key used or named as ignored)

`load(path)` gives a `LoadedModel`: the model's config (for a workdir the run's own; for a converted or
PyTorch checkpoint the original's input contract: 224 px BGR frames in [0, 1], raw MFCCs), the names of its
classes in label order (`class_names`: a workdir's model.json, written by the trainer from the run's dataset;
for a workdir written before that, the dataset its config names; else RAVDESS's, the original's dataset),
its variables as host numpy arrays, and `forward()`, the pure function from raw inputs (MFCC, uint8 RGB crops) to logits
that prediction runs and `export` serialises. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import ml_collections
import numpy as np
from etils import epath

CROP_SIZE = 224  # what avtca_jax.preprocessing writes (PreprocessConfig.crop_size)
PYTORCH_SUFFIXES = (".pth", ".pth.tar", ".pt", ".tar")


class CheckpointError(ValueError):
  """A path that is not a usable checkpoint; the message names it and says what would work."""


@dataclasses.dataclass
class LoadedModel:
  kind: str  # 'workdir', 'converted' or 'pytorch'
  path: str  # what the user gave
  checkpoint: str  # the step directory, converted directory or .pth file the variables came from
  config: ml_collections.ConfigDict
  variables: Dict[str, Any]  # {'params', 'batch_stats'}, numpy
  step: Optional[int] = None
  workdir: Optional[str] = None
  class_names: Tuple[str, ...] = ()  # label order; set by `load` (see `class_names_of`)

  @property
  def audio_only(self) -> bool:
    return self.config.model == "audio"

  def warnings(self) -> List[str]:
    """What a user must know before trusting its answers on real clips."""
    out = []
    data = self.config.data
    generated = data.source == "synthetic" or (data.source == "tfds" and str(data.builder_config).startswith("generated"))
    if generated:
      out.append(f"{self.path} was trained on generated data (drawn faces and tones, not real people): its "
                 "probabilities on real clips mean nothing. Train on RAVDESS or use a converted checkpoint.")
    if not self.audio_only and self.config.image_size != CROP_SIZE:
      out.append(f"{self.path} takes {self.config.image_size} px faces: the {CROP_SIZE} px crops are shrunk to "
                 f"{self.config.image_size} px, the size it was trained at, and lose most of the face's detail.")
    return out

  def mfcc_normalization(self) -> Dict[str, Any]:
    """The run's MFCC normalisation of one clip ({'mode': 'none'} for converted checkpoints)."""
    if self.workdir is None:
      return {"mode": "none"}
    return mfcc_normalization(self.workdir, self.config)

  def forward(self) -> Callable:
    """f(mfcc (B, 156, 10) float32 raw MFCCs, frames (B, 15, H, W, 3) uint8 RGB or None) -> logits (B, C).

    The run's MFCC normalisation, the channel order and the resize to the model's input size happen
    inside, exactly as in evaluation (steps.model_inputs), so the function is the whole numeric path after
    preprocessing. The variables are closed over (constants of an export)."""
    import jax.numpy as jnp
    from avtca_jax import audio_data, steps as steps_lib
    config, variables = self.config, self.variables
    model = steps_lib.create_model(config)
    stats = self.mfcc_normalization()
    mode = stats["mode"]

    def forward(mfcc, frames=None):
      mfcc = audio_data.normalize_clips(jnp.asarray(mfcc, jnp.float32), mode, stats)
      batch = {"mfcc": mfcc, "label": jnp.zeros(mfcc.shape[:1], jnp.int32)}
      if frames is not None:
        batch["frames"] = frames
      mfcc, frames, _, _ = steps_lib.model_inputs(config, batch)
      return model.apply(variables, mfcc, frames, train=False).astype(jnp.float32)

    return forward


# ---- Configs -------------------------------------------------------------------------------------------


def load_config(workdir: str, overrides: Optional[Dict] = None) -> ml_collections.ConfigDict:
  """The run's config: its variant's defaults updated with the stored config.json (so types stay right)."""
  from avtca_jax import checkpointing, config_validation
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: is {workdir} a training workdir?")
  try:
    stored = json.loads(path.read_text())
  except ValueError as error:
    raise CheckpointError(f"{path} is not valid JSON ({error}): restore it from the run that wrote it") from error
  config = config_validation.default_config(stored.get("variant", "default"))
  try:
    config.update_from_flattened_dict(checkpointing.flatten(stored, lists_as_tuples=True))
    for key, value in (overrides or {}).items():
      config.update_from_flattened_dict({key: value})
  except (KeyError, AttributeError) as error:
    raise CheckpointError(f"{path}: key {error} is not a config key of this version: the run was written by "
                          "another version of avtca_jax") from error
  return config


def original_config(fusion: str, num_classes: int) -> ml_collections.ConfigDict:
  """The original's model and input contract for a converted AVT-CA checkpoint (configs/ravdess.py:original)."""
  from avtca_jax import config_validation
  config = config_validation.default_config("original")
  config.fusion = fusion
  config.num_classes = num_classes
  config.image_size = CROP_SIZE
  config.channel_order = "bgr"  # the original's frames were BGR in [0, 1]
  return config


# ---- Loading -------------------------------------------------------------------------------------------


def default_checkpoint(workdir: str) -> str:
  """The best-validation checkpoint when there is one, else the latest."""
  from avtca_jax import checkpointing
  try:
    return checkpointing.checkpoint_dir(workdir, best=True)
  except FileNotFoundError:
    try:
      return checkpointing.checkpoint_dir(workdir)
    except FileNotFoundError:
      raise CheckpointError(f"{workdir} holds no checkpoint (checkpoints/ and best/ are empty): train first, "
                            "or give a converted checkpoint") from None


def _step_of(directory: str) -> Optional[int]:
  name = epath.Path(directory).name  # local or gs://
  return int(name) if name.isdigit() else None


def restore_variables(checkpoint_dir: str) -> Dict[str, Any]:
  """{'step', 'params', 'batch_stats'} of a training checkpoint step, as numpy; a clear error when the step
  is missing or incomplete."""
  from avtca_jax import checkpointing
  directory = epath.Path(checkpoint_dir)
  parent = directory.parent
  steps = sorted(int(p.name) for p in parent.iterdir() if p.name.isdigit()) if parent.is_dir() else []
  if not directory.is_dir():
    raise CheckpointError(f"{directory}: no such checkpoint step; {parent} holds steps {steps or 'none'}")
  if not (directory / "state").is_dir():
    raise CheckpointError(f"{directory}: checkpoint step is incomplete (no state/ folder; interrupted save or "
                          f"deleted files): use another step of {parent} ({steps}) or the workdir itself")
  checkpointing.quiet_failed_reads()
  try:
    restored = checkpointing.restore_numpy(str(directory))
  except Exception as error:  # orbax and tensorstore raise plain Exception, ValueError, OSError, ...
    raise CheckpointError(f"{directory}: the checkpoint cannot be read ({checkpointing.read_error_reason(error)}): "
                          f"use another step of {parent}") from error
  return {"step": int(np.asarray(restored["step"])), "params": restored["params"],
          "batch_stats": restored.get("batch_stats", {})}


def mfcc_normalization(workdir: str, config) -> Dict[str, Any]:
  """{'mode', and for 'train' the 'mean'/'std' the trainer saved}: the run's MFCC normalisation of one clip."""
  from avtca_jax import data_sources
  mode = config.data.get("normalize", "none") if config.data.source == "audio_folder" else "none"
  if mode == "speaker":
    raise CheckpointError(f"{workdir}: the run used data.normalize='speaker', which needs all clips of the "
                          "speaker; a single clip can only use 'none', 'train' or 'clip'")
  if mode != "train":
    return {"mode": mode}
  path = epath.Path(workdir) / data_sources.NORMALIZATION_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} is missing: the run used data.normalize='train' and its statistics "
                            "are needed to normalise a new clip")
  return dict(json.loads(path.read_text()), mode="train")


def _check_workdir_model(workdir: str, config) -> None:
  """The workdir's model.json (what its checkpoints hold) must be the model of its config.json."""
  from avtca_jax import checkpointing
  try:
    checkpointing.check_workdir(workdir, config)
  except checkpointing.CheckpointMismatchError as error:
    raise CheckpointError(str(error)) from None


def _load_workdir(path: str, workdir: str, checkpoint_dir: str) -> LoadedModel:
  config = load_config(workdir)
  _check_workdir_model(workdir, config)
  restored = restore_variables(checkpoint_dir)
  variables = {"params": restored["params"], "batch_stats": restored["batch_stats"]}
  return LoadedModel("workdir", path, checkpoint_dir, config, variables, step=restored["step"], workdir=workdir)


def _num_classes(variables) -> int:
  return int(np.shape(variables["params"]["classifier"]["bias"])[0])


def _load_converted(path: str) -> LoadedModel:
  from avtca_jax import convert
  info = json.loads((epath.Path(path) / "conversion.json").read_text())
  if info.get("kind") != "avtca":
    raise CheckpointError(f"{path} is a converted {info.get('kind')} backbone, not a whole AVT-CA model: train "
                          f"from it (--config.init_checkpoint={path}), then predict with the trained workdir")
  variables = convert.load_init_checkpoint(path)
  config = original_config(info["fusion"], _num_classes(variables))
  return LoadedModel("converted", path, path, config, variables)


def _load_pytorch(path: str) -> LoadedModel:
  from avtca_jax import convert
  checkpoint = convert.load_torch_checkpoint(path)  # weights_only: never runs code from the file
  state = convert.unwrap_state_dict(checkpoint)
  fusion = convert.detect_fusion(state)
  if fusion is None:
    raise CheckpointError(f"{path}: not a whole AVT-CA checkpoint (no fusion module keys 'av1.*' or 'av.*'); "
                          "an EfficientFace backbone is converted with `python -m avtca_jax.convert --kind "
                          "efficientface` and trained from")
  num_classes = int(np.shape(state["classifier_1.0.bias"])[0]) if "classifier_1.0.bias" in state else 8
  variables, _ = convert.convert_avtca(state, fusion, num_classes)
  return LoadedModel("pytorch", path, path, original_config(fusion, num_classes), variables)


def fallback_class_names(num_classes: int) -> Tuple[str, ...]:
  """RAVDESS's names (the original's dataset) for a model that carries none; numbered past its eight."""
  from avtca_jax.preprocessing.names import EMOTIONS
  if num_classes <= len(EMOTIONS):
    return tuple(EMOTIONS[:num_classes])
  return tuple(f"class_{i}" for i in range(num_classes))


def _valid_names(names: Optional[Sequence], num_classes: int) -> Optional[Tuple[str, ...]]:
  if not isinstance(names, (list, tuple)) or len(names) != num_classes or len(set(map(str, names))) != num_classes:
    return None
  return tuple(str(n) for n in names)


def class_names_of(config, workdir: Optional[str] = None) -> Tuple[str, ...]:
  """The model's class names in label order: the workdir's model.json (the trainer writes them), else the
  dataset `config.data.name` names (registered, or a built folder's stored names), else RAVDESS's."""
  from avtca_jax import checkpointing
  n = int(config.num_classes)
  if workdir is not None:
    stored = _valid_names(checkpointing.read_model_json(workdir).get("class_names"), n)
    if stored is not None:
      return stored
  return checkpointing.dataset_class_names(config) or fallback_class_names(n)


def _absolute(path) -> str:
  from avtca_jax import checkpointing
  return str(checkpointing.absolute(path))  # gs://... as given, local paths made absolute


def load(path: str) -> LoadedModel:
  """Any checkpoint kind of the module docstring; CheckpointError/FileNotFoundError name the path."""
  loaded = _load(os.fspath(path))
  loaded.class_names = class_names_of(loaded.config, loaded.workdir)
  return loaded


def _load(path: str) -> LoadedModel:
  p = epath.Path(path)
  workdir = p.parent.parent  # WORKDIR/checkpoints/STEP or WORKDIR/best/STEP
  in_workdir = p.parent.name in ("checkpoints", "best") and (workdir / "config.json").exists()
  if in_workdir and not (p / "conversion.json").exists():  # a step, present or not (the error lists the steps)
    return _load_workdir(path, _absolute(workdir), _absolute(path))
  if not p.exists():
    raise FileNotFoundError(f"{path}: no such checkpoint (expected a training workdir, a checkpoint step, a "
                            "converted checkpoint folder or a PyTorch .pth file)")
  if p.is_file():
    if not path.lower().endswith(PYTORCH_SUFFIXES):
      raise CheckpointError(f"{path}: a file that is not a PyTorch checkpoint (.pth, .pth.tar, .pt); give a "
                            "training workdir, a checkpoint step, a converted checkpoint or a .pth file")
    return _load_pytorch(path)
  if (p / "conversion.json").exists():
    return _load_converted(path)
  if (p / "config.json").exists():
    return _load_workdir(path, _absolute(path), default_checkpoint(path))
  raise CheckpointError(f"{path} is neither a training workdir (no config.json), a checkpoint step inside "
                        "one (WORKDIR/checkpoints/STEP), a converted checkpoint (no conversion.json) nor a "
                        "PyTorch .pth file")
