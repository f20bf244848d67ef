"""orbax checkpoints of a training run: periodic (keep N, for resume) and best-by-validation (keep 1).

Layout in the workdir:
  checkpoints/<step>/{state,meta}   the latest N: TrainState + JSON (step, epoch, position, model)
  best/<step>/{state,meta}          the one with the highest validation accuracy
  checkpoints/<step>.damaged/       a checkpoint that did not restore on resume, set aside (never deleted)
  model.json                        what the run trains (model, fusion, shapes) and the names of its
                                    classes (predict, evaluate and export read them)
  mfcc_normalization.json           the MFCC statistics of an audio run normalised with them (predict
                                    applies them to new clips)
  config.json, fingerprint.json     the whole resolved config and the sha256 of its run identity (all
                                    but logging/saving/distribution keys): resuming with another config
                                    is refused before anything is compiled, naming the differing keys
The data position and the RNG need no state of their own: the batch order is a function of
(seed, epoch) and every random draw of step s is keyed by (seed, s), so the step restores both.
Paths are etils.epath paths (orbax's own path layer), so a workdir may be gs://bucket/run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging as python_logging
import re
import sys
from typing import Any, Dict, List, Optional, Tuple, Union

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


class CheckpointReadError(ValueError):
  """No checkpoint of the workdir restores."""


def absolute(path: Union[str, epath.Path]) -> epath.Path:
  """An epath.Path that orbax accepts: URIs (gs://...) as given, local paths made absolute."""
  path = epath.Path(path)
  return path if path.is_absolute() else path.absolute()


def model_descriptor(config) -> Dict[str, Any]:
  """What the checkpoints hold (the model's identity; compared when a workdir is resumed)."""
  out = {k: config[k] for k in MODEL_KEYS}
  if config.model == "audio":  # its parameters do not depend on the video settings
    out = {"model": "audio", "num_classes": config.num_classes}
  return out


def dataset_class_names(config) -> Optional[Tuple[str, ...]]:
  """The class names (in label order) of the dataset `config.data.name` names, when they can be known without
  TensorFlow: a registered dataset's (avtca_jax.datasets), or those a built dataset folder stores (a manifest
  dataset: its metadata.json's 'dataset' classes, else tfds's label.labels.txt). None when neither is at
  hand or their count is not config.num_classes."""
  from avtca_jax import datasets
  name = str(config.data.get("name", "") or "")
  names = None
  try:
    names = tuple(datasets.get(name).class_names) if name else None
  except KeyError:
    folder = epath.Path(name)
    try:
      names = tuple(json.loads((folder / "metadata.json").read_text())["dataset"]["classes"])
    except (OSError, ValueError, KeyError, TypeError):
      try:
        names = tuple(line.strip() for line in (folder / "label.labels.txt").read_text().splitlines()
                      if line.strip())
      except (OSError, ValueError):
        names = None
  if not names or len(names) != config.num_classes:
    return None
  return tuple(str(n) for n in names)


def model_description(config) -> Dict[str, Any]:
  """model.json: the model descriptor plus, when known, the class names of the run's dataset ('class_names'),
  so predict, evaluate and export name the classes without the dataset."""
  out = dict(model_descriptor(config))
  names = dataset_class_names(config)
  if names is not None:
    out["class_names"] = list(names)
  return out


def read_model_json(workdir: str) -> Dict[str, Any]:
  """The workdir's model.json ({} when it has none or it is unreadable)."""
  try:
    return json.loads((epath.Path(workdir) / "model.json").read_text())
  except (OSError, ValueError):
    return {}


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
  stored.pop("class_names", None)  # a description, not part of what the checkpoints hold
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
    (epath.Path(workdir) / "model.json").write_text(json.dumps(model_description(config), indent=1))


def write_normalization(workdir: str, source):
  """The data source's MFCC normalisation (statistics of the training split), when it has one."""
  from avtca_jax import data_sources
  normalization = getattr(source, "mfcc_normalization", {"mode": "none"})
  if jax.process_index() == 0 and normalization["mode"] != "none":
    (epath.Path(workdir) / data_sources.NORMALIZATION_FILE).write_text(json.dumps(normalization, indent=1))


def step_meta(config, step: int, steps_per_epoch: int) -> Dict[str, Any]:
  """What a checkpoint stores beside the state: the step, the data position and the model."""
  epoch, position = divmod(step, steps_per_epoch)
  return {"step": step, "epoch": epoch, "position": position, "model": model_descriptor(config)}


# ---- Damaged checkpoints -------------------------------------------------------------------------------


def read_error_reason(error: BaseException) -> str:
  """One line on why a checkpoint did not restore: the first line of the innermost cause (tensorstore's
  own, e.g. 'OUT_OF_RANGE: ... byte range ... is not valid for value of size 1000') rather than orbax's
  wrapper around it."""
  while error.__cause__ is not None:
    error = error.__cause__
  lines = str(error).strip().splitlines()
  text = lines[0] if lines else type(error).__name__
  return text if len(text) <= 300 else text[:297] + "..."


# tensorstore's own read errors, e.g. 'OUT_OF_RANGE: Error reading "params.x/0.0.0" in OCDBT database ...'.
_TENSORSTORE_READ_ERROR = re.compile(r"^[A-Z_]+: Error (reading|opening) ")


def _is_failed_read_leftover(error: Optional[BaseException]) -> bool:
  if error is None:
    return False
  text = str(error)
  return (text == "Event loop is closed" or text.startswith("Encountered error while reading array index")
          or _TENSORSTORE_READ_ERROR.match(text) is not None)


class _DropFailedReadLeftovers(python_logging.Filter):
  def filter(self, record: python_logging.LogRecord) -> bool:
    return not (record.exc_info and _is_failed_read_leftover(record.exc_info[1]))


_QUIET = False


def quiet_failed_reads() -> None:
  """Keeps a failed restore to the one error it raises.

  orbax reads a checkpoint's arrays in concurrent tasks; the first failed read ends the restore, and the
  others end afterwards, on an event loop that is closed by then ('Event loop is closed' from
  tensorstore's threads) or unfinished when Python collects them ('Encountered error while reading array
  index' at exit; 'Task exception was never retrieved' or 'Future exception was never retrieved' with
  tensorstore's own read error, whichever reads were still pending, so it varies from run to run).
  Python would print a traceback for each; those errors only are dropped (from sys.unraisablehook and the
  asyncio logger), everything else still prints. Safe to call more than once."""
  global _QUIET
  if _QUIET:
    return
  _QUIET = True
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _is_failed_read_leftover(unraisable.exc_value):
      previous(unraisable)

  sys.unraisablehook = hook
  python_logging.getLogger(asyncio.__name__).addFilter(_DropFailedReadLeftovers())


class Checkpoints:
  """The periodic and the best checkpoints of a workdir; as a context manager, it waits for the saves in
  flight and closes on exit."""

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
      # is already ongoing"): finish this one first. At most once per epoch.
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

  def restore_latest(self, abstract_state) -> Optional[Tuple[Any, Dict[str, Any]]]:
    """(state, meta) of the newest checkpoint that restores; None when there is none.

    A checkpoint that does not restore (a full disk, a half-copied workdir) costs one warning line that
    names its step and why. It is set aside as `<step>.damaged` in the same folder, never deleted, so that
    the run saves that step again when it gets there, and the one before it is tried. CheckpointReadError
    when none restores (then nothing is moved)."""
    quiet_failed_reads()
    failed: List[Tuple[int, str]] = []
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        state, meta = self.restore(abstract_state, step)
      except Exception as error:  # orbax and tensorstore raise plain Exception, ValueError, OSError, ...
        failed.append((step, read_error_reason(error)))
        continue
      for bad_step, reason in failed:
        kept = self._set_aside(bad_step, reason)
        logging.warning("checkpoint step %d does not restore (%s); kept as %s, resuming from step %d",
                        bad_step, reason, kept, step)
      return state, meta
    if failed:
      raise CheckpointReadError(
          f"no checkpoint in {self.latest.directory} restores: " +
          "; ".join(f"step {step}: {reason}" for step, reason in failed))
    return None

  def _set_aside(self, step: int, reason: str) -> epath.Path:
    """Renames checkpoints/<step> to checkpoints/<step>.damaged (or .damaged2, ...), out of orbax's view
    (orbax would otherwise refuse to save that step again, and count it among the checkpoints it keeps)."""
    directory = epath.Path(self.latest.directory)
    source, target, n = directory / str(step), directory / f"{step}.damaged", 1
    while target.exists():
      n += 1
      target = directory / f"{step}.damaged{n}"
    self._sync(f"checkpoint_set_aside_{step}")  # every process has finished reading it
    if jax.process_index() == 0:
      try:
        source.rename(target)
      except Exception:  # a store without directory renames: the check below says what to do, on every process
        pass
    self._sync(f"checkpoint_set_aside_{step}_done")
    if source.exists():
      raise CheckpointReadError(f"checkpoint step {step} does not restore ({reason}) and cannot be moved aside: "
                                f"move {source} out of {directory} and rerun")
    self.latest.reload()
    return target

  @staticmethod
  def _sync(name: str) -> None:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(name)

  def wait(self):
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    self.best.close()

  def __enter__(self) -> "Checkpoints":
    return self

  def __exit__(self, *exc_info):
    self.wait()
    self.close()


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
