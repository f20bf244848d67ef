"""orbax checkpoints of a training run: periodic (keep N, for resume) and best-by-validation (keep 1).

Layout in the workdir:
  checkpoints/<step>/{state,meta}   the latest N: TrainState + JSON (step, epoch, position, model)
  best/<step>/{state,meta}          the one with the highest validation accuracy
  model.json                        what the run trains (model, fusion, shapes)
  config.json, fingerprint.json     the whole resolved config and the sha256 of its run identity (all
                                    but logging/saving/distribution keys): resuming with another config
                                    is refused before anything is compiled, naming the differing keys
The data position and the RNG need no state of their own: the batch order is a function of
(seed, epoch) and every random draw of step s is keyed by (seed, s), so the step restores both.
Paths are etils.epath paths (orbax's own path layer), so a workdir may be gs://bucket/run.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, Optional, Union

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

MODEL_KEYS = ("model", "fusion", "num_heads", "num_classes", "num_frames", "image_size")
CONFIG_FILE = "config.json"
FINGERPRINT_FILE = "fingerprint.json"
# Keys that change how a run is logged, saved or spread over machines, not what it computes: they may differ
# between a run and its resumption. Everything else (data, protocol, optimiser, schedule, model, seed) is the
# run's identity.
RUN_INDEPENDENT_KEYS = ("log_every_steps", "progress_bar", "keep_checkpoints", "checkpoint_every_steps",
                        "eval_batch_size", "evaluate_test", "data.cache", "compilation_cache_dir")
RUN_INDEPENDENT_PREFIXES = ("distributed.",)


class CheckpointMismatchError(ValueError):
  """The workdir holds a run of another model or config."""


def absolute(path: Union[str, epath.Path]) -> epath.Path:
  """An epath.Path that orbax accepts: URIs (gs://...) as given, local paths made absolute."""
  path = epath.Path(path)
  return path if path.is_absolute() else path.absolute()


def model_descriptor(config) -> Dict[str, Any]:
  out = {k: config[k] for k in MODEL_KEYS}
  if config.model == "audio":  # its parameters do not depend on the video settings
    out = {"model": "audio", "num_classes": config.num_classes}
  return out


def flatten(tree, prefix: str = "", lists_as_tuples: bool = False) -> Dict[str, Any]:
  """{'a.b': value} of a nested config dict (its JSON form). `lists_as_tuples` turns JSON lists back into
  the tuples a ConfigDict holds, for `update_from_flattened_dict`."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}.", lists_as_tuples))
    else:
      out[prefix + key] = tuple(value) if lists_as_tuples and isinstance(value, list) else value
  return out


def run_identity(config_json: Dict[str, Any]) -> Dict[str, Any]:
  """The flattened resolved config (as JSON: tuples are lists) without the run-independent keys."""
  return {k: v for k, v in sorted(flatten(config_json).items())
          if k not in RUN_INDEPENDENT_KEYS and not k.startswith(RUN_INDEPENDENT_PREFIXES)}


def config_as_json(config) -> Dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def fingerprint(config) -> str:
  """sha256 of the run identity of a config (ConfigDict or its JSON dict)."""
  tree = config if isinstance(config, dict) else config_as_json(config)
  return hashlib.sha256(json.dumps(run_identity(tree), sort_keys=True).encode()).hexdigest()


def _difference(stored: Dict[str, Any], wanted: Dict[str, Any]) -> str:
  missing = object()
  keys = sorted(k for k in set(stored) | set(wanted) if stored.get(k, missing) != wanted.get(k, missing))
  show = lambda d, k: repr(d[k]) if k in d else "(absent)"
  return ", ".join(f"{k}: workdir {show(stored, k)} vs config {show(wanted, k)}" for k in keys)


def check_workdir(workdir: str, config, allow_change: bool = False) -> bool:
  """True if the workdir already holds this run; False for a new workdir. Runs before any compilation.

  The workdir's config.json (written when the run started) must have the same run identity as `config`;
  otherwise CheckpointMismatchError names the differing keys, unless `allow_change` (then the stored config
  is kept as config.previous.json and config.json is rewritten by `write_config`). A workdir written
  before config fingerprints has only its model.json checked."""
  root = epath.Path(workdir)
  stored_path, model_path = root / CONFIG_FILE, root / "model.json"
  if stored_path.exists():
    stored = run_identity(json.loads(stored_path.read_text()))
    wanted = run_identity(config_as_json(config))
    if stored == wanted:
      return True
    diff = _difference(stored, wanted)
    if not allow_change:
      raise CheckpointMismatchError(
          f"workdir {workdir} holds a run with another config ({diff}). Use a new --workdir, the config that "
          "wrote it, or --resume_with_changed_config to continue this run with the new config.")
    logging.warning("resuming %s with a changed config (%s)", workdir, diff)
    if jax.process_index() == 0:
      (root / "config.previous.json").write_text(stored_path.read_text())
    return True
  if not model_path.exists():
    return False
  stored = json.loads(model_path.read_text())
  wanted = model_descriptor(config)
  if stored != wanted:
    raise CheckpointMismatchError(
        f"workdir {workdir} holds checkpoints of another model ({_difference(stored, wanted)}). Use a new "
        "--workdir, or the config that wrote it.")
  return True


def write_config(workdir: str, config):
  """config.json (the whole resolved config: `evaluate` and `predict` read it) and fingerprint.json."""
  if jax.process_index() != 0:
    return
  root = epath.Path(workdir)
  tree = config_as_json(config)
  (root / CONFIG_FILE).write_text(json.dumps(tree, indent=1))
  (root / FINGERPRINT_FILE).write_text(json.dumps({"sha256": fingerprint(tree),
                                                    "identity": run_identity(tree)}, indent=1))


def write_model_json(workdir: str, config):
  if jax.process_index() == 0:
    (epath.Path(workdir) / "model.json").write_text(json.dumps(model_descriptor(config), indent=1))


class Checkpoints:
  def __init__(self, workdir: str, keep: int = 2, async_save: bool = True):
    workdir = absolute(workdir)
    self.latest = ocp.CheckpointManager(
        workdir / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save))
    self.best = ocp.CheckpointManager(
        workdir / "best",
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True, best_fn=lambda m: m["accuracy"],
                                             best_mode="max", enable_async_checkpointing=async_save))

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def save(self, state, meta: Dict[str, Any], force: bool = True):
    step = int(meta["step"])
    if self.latest.latest_step() == step:
      return
    self.latest.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)), force=force)

  def save_best(self, state, meta: Dict[str, Any], accuracy: float):
    """Keeps the checkpoint only if `accuracy` beats the kept one (a strict '>', as the original)."""
    if not hasattr(self, "_best_accuracy"):  # read once, before any save of this run is in flight
      best = self.best_metrics()
      self._best_accuracy = None if best is None else best["accuracy"]
    if self._best_accuracy is not None and accuracy <= self._best_accuracy:
      return False
    step = int(meta["step"])
    if step in self.best.all_steps():
      return False
    self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                  meta=ocp.args.JsonSave(dict(meta, accuracy=accuracy))),
                   metrics={"accuracy": float(accuracy)}, force=True)
    if jax.process_count() > 1:
      # orbax names its cross-process commit barrier after the step alone, so an asynchronous best save and
      # the periodic save of the same step (every epoch end) collide ("Barrier _async_commit_complete.<step>
      # is already ongoing", seen on 2 processes): finish this one first. At most once per epoch.
      self.best.wait_until_finished()
    self._best_accuracy = float(accuracy)
    return True

  def best_metrics(self) -> Optional[Dict[str, Any]]:
    """The kept best checkpoint's meta (with 'accuracy'), or None."""
    step = self.best.best_step()
    if step is None:
      return None
    return self.restore_meta(step, best=True)

  def restore_meta(self, step: int, best: bool = False) -> Dict[str, Any]:
    manager = self.best if best else self.latest
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, abstract_state, step: Optional[int] = None, best: bool = False):
    """(state, meta) of `step` (default: the latest, or the best with best=True)."""
    manager = self.best if best else self.latest
    if step is None:
      step = manager.best_step() if best else manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                              meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def wait(self):
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    self.best.close()


def checkpoint_dir(workdir: str, best: bool = False, step: Optional[int] = None) -> str:
  """The directory of a step (default: the best, or the latest) of a workdir's checkpoints."""
  root = absolute(workdir) / ("best" if best else "checkpoints")
  if step is None:
    steps = sorted(int(d.name) for d in root.iterdir() if d.name.isdigit()) if root.is_dir() else []
    if not steps:
      raise FileNotFoundError(f"no {'best ' if best else ''}checkpoint in {root}")
    step = steps[-1]  # `best/` keeps one
  return str(root / str(step))


def restore_numpy(directory: str) -> Dict[str, Any]:
  """A checkpoint's TrainState items as host numpy arrays, on any number of devices (evaluation,
  prediction, tests): {'step', 'params', 'batch_stats', 'opt_state', 'rng'}."""
  path = absolute(directory) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path)
  tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata.tree
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))


def read_meta(directory: str) -> Dict[str, Any]:
  return json.loads((absolute(directory) / "meta" / "metadata").read_text())
