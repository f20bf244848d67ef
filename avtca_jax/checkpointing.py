"""orbax checkpoints of a training run: periodic (keep N, for resume) and best-by-validation (keep 1).

Layout in the workdir:
  checkpoints/<step>/{state,meta}   the latest N: TrainState + JSON (step, epoch, position, model)
  best/<step>/{state,meta}          the one with the highest validation accuracy
  model.json                        what the run trains (model, fusion, shapes); a workdir of another
                                    model is refused before anything is compiled
The data position and the RNG need no state of their own: the batch order is a function of
(seed, epoch) and every random draw of step s is keyed by (seed, s), so the step restores both.
Paths are etils.epath paths (orbax's own path layer), so a workdir may be gs://bucket/run.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Union

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

MODEL_KEYS = ("model", "fusion", "num_heads", "num_classes", "num_frames", "image_size")


class CheckpointMismatchError(ValueError):
  """The workdir holds a run of another model."""


def absolute(path: Union[str, epath.Path]) -> epath.Path:
  """An epath.Path that orbax accepts: URIs (gs://...) as given, local paths made absolute."""
  path = epath.Path(path)
  return path if path.is_absolute() else path.absolute()


def model_descriptor(config) -> Dict[str, Any]:
  out = {k: config[k] for k in MODEL_KEYS}
  if config.model == "audio":  # its parameters do not depend on the video settings
    out = {"model": "audio", "num_classes": config.num_classes}
  return out


def check_workdir(workdir: str, config) -> bool:
  """True if the workdir already holds this model's run; raises CheckpointMismatchError for another model."""
  path = epath.Path(workdir) / "model.json"
  if not path.exists():
    return False
  stored = json.loads(path.read_text())
  wanted = model_descriptor(config)
  if stored != wanted:
    diff = ", ".join(f"{k}: checkpoint {stored.get(k)!r} vs config {wanted.get(k)!r}"
                     for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k))
    raise CheckpointMismatchError(
        f"workdir {workdir} holds checkpoints of another model ({diff}). Use a new --workdir, or the "
        "config that wrote it.")
  return True


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
