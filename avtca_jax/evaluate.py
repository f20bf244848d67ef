"""Evaluate a trained run: accuracy, UAR, macro-F1, per-class report and confusion matrix, with both
streams and with the audio or the video stream removed.

    python -m avtca_jax.evaluate --workdir=DIR                  # best-validation checkpoint, test split
    python -m avtca_jax.evaluate --workdir=DIR --checkpoint=DIR/checkpoints/640 --split=validation
    python -m avtca_jax.evaluate --workdir=DIR --remove=audio_zeros,video_zeros,audio_noise,video_noise
    python -m avtca_jax.evaluate --checkpoint=model.pth --config=configs/ravdess.py:fold1 --output_dir=OUT

The run's config comes from DIR/config.json (written by the trainer). `--checkpoint` takes every kind of
avtca_jax.checkpoint_kinds: a step of the workdir, a converted checkpoint or the original's PyTorch .pth
(converted on the fly, strictly); those last two carry no dataset settings, so `--config` names the
dataset and split protocol (its data block is used; the model is the checkpoint's). Removing a stream follows the
original's single-modality evaluation (docs/training.md): 'zeros' replaces it by zeros (what softhard-trained
models saw), 'noise' by N(0, 1) (what noise-trained models saw). Writes to DIR/eval/ (or --output_dir):
<split>_<mode>.json, <split>_<mode>_report.txt, <split>_<mode>_confusion.png, and <split>_summary.json.

The trainer's evaluations live here too: `evaluate_split` (the validation split after an epoch) and
`test_split` (the test split with the best-validation checkpoint at the end of a run).
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging
from etils import epath
import jax
import numpy as np
from ml_collections import config_flags
from jax.sharding import NamedSharding, PartitionSpec as P

from avtca_jax import checkpointing, compilation_cache, checkpoint_kinds, console, data_sources, metrics as metrics_lib
from avtca_jax import steps as steps_lib
from avtca_jax.checkpoint_kinds import default_checkpoint, load_config  # noqa: F401  (public here too)

Array = jax.Array

# (audio kept, audio noise, video kept, video noise) of each evaluation mode: the original's single-modality
# evaluation replaces a stream by zeros or by N(0, 1) noise (docs/training.md).
REMOVAL_WEIGHTS = {"both": (1, 0, 1, 0), "audio_zeros": (0, 0, 1, 0), "audio_noise": (0, 1, 1, 0),
                   "video_zeros": (1, 0, 0, 0), "video_noise": (1, 0, 0, 1)}
REMOVALS = tuple(mode for mode in REMOVAL_WEIGHTS if mode != "both")


def removal_weights(remove: Optional[str]) -> np.ndarray:
  """The predict step's removal weights for a mode (None: both streams)."""
  remove = remove or "both"
  if remove not in REMOVAL_WEIGHTS:
    raise ValueError(f"unknown stream removal {remove!r}; expected one of {sorted(REMOVALS)}")
  return np.asarray(REMOVAL_WEIGHTS[remove], np.float32)


def _to_host(x: Array) -> np.ndarray:
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def predict(predict_step, state, source, split: str, batch_size: int, mesh, remove: Optional[str] = None):
  """Logits (N, C) and labels (N,) of a whole split, padding removed, on every host."""
  logits, labels = [], []
  weights = jax.device_put(removal_weights(remove), NamedSharding(mesh, P()))
  for batch in source.eval_batches(split, batch_size):
    out_logits, out_labels, mask = predict_step(state, steps_lib.to_devices(batch, mesh), weights)
    mask = _to_host(mask).astype(bool)
    logits.append(_to_host(out_logits)[mask])
    labels.append(_to_host(out_labels)[mask])
  return np.concatenate(logits), np.concatenate(labels)


def evaluate_split(predict_step, state, source, split, batch_size, mesh, num_classes) -> Dict[str, float]:
  logits, labels = predict(predict_step, state, source, split, batch_size, mesh)
  return metrics_lib.classification_metrics(logits, labels, num_classes)


def test_split(steps: steps_lib.Steps, state, source, checkpoints, batch_size: int, final_step: int, workdir,
               write) -> Optional[Dict[str, float]]:
  """The trainer's test: the test split with the best-validation checkpoint (the original's protocol), or
  the final parameters `state` when nothing was validated. Logged, written with `write(step, record)` and
  to WORKDIR/test_metrics.json; None when the config skips the test or the split is empty."""
  config = steps.config
  if not config.evaluate_test or source.num_examples(config.data.test_split) == 0:
    return None
  best_step = checkpoints.best.best_step()
  if best_step is not None:
    state = checkpoints.restore(steps.abstract_state, best=True)[0]
  test = evaluate_split(steps.predict_step, state, source, config.data.test_split, batch_size, steps.mesh,
                        config.num_classes)
  test["checkpoint_step"] = int(final_step if best_step is None else best_step)
  write(final_step, {f"test/{k}": v for k, v in test.items()})
  if jax.process_index() == 0:
    logging.info("test (%s, step %d): accuracy %.4f UAR %.4f macro-F1 %.4f",
                 "final parameters" if best_step is None else "best validation checkpoint",
                 test["checkpoint_step"], test["accuracy"], test["uar"], test["macro_f1"])
    (epath.Path(workdir) / "test_metrics.json").write_text(json.dumps(test, indent=1))
  return test


def _replicated_state(variables, step, mesh) -> steps_lib.TrainState:
  state = steps_lib.TrainState(step=np.asarray(step or 0), params=variables["params"],
                               batch_stats=variables.get("batch_stats", {}), opt_state=None, rng=None)
  return jax.device_put(state, NamedSharding(mesh, P()))


def _model_and_config(workdir, checkpoint, overrides, data_config):
  """(LoadedModel, config): the checkpoint's model with the data settings of `data_config` (when given),
  else of the run that wrote it."""
  loaded = checkpoint_kinds.load(checkpoint or workdir)
  if (workdir is not None and loaded.kind == "workdir"
      and str(checkpointing.absolute(loaded.workdir)) != str(checkpointing.absolute(workdir))):
    raise ValueError(f"--checkpoint {checkpoint} belongs to {loaded.workdir}, not to --workdir {workdir}")
  config = loaded.config.copy_and_resolve_references()
  if data_config is not None:
    config.data = data_config.data.copy_and_resolve_references()
  elif loaded.kind != "workdir":
    raise ValueError(f"{checkpoint} is a {loaded.kind} checkpoint without dataset settings: give "
                     "--config=configs/ravdess.py:foldK (its data block names the dataset and the split protocol)")
  for key, value in (overrides or {}).items():
    config.update_from_flattened_dict({key: value})
  return loaded, config


def evaluate(workdir: Optional[str] = None, checkpoint: Optional[str] = None, split: str = "test",
             removals: Sequence[str] = ("audio_zeros", "video_zeros"), output_dir: Optional[str] = None,
             overrides: Optional[Dict] = None, data_config=None) -> Dict[str, Dict]:
  """{mode: metrics} for mode in ('both', *removals); writes the files listed in the module docstring.

  `checkpoint` (any checkpoint kind) defaults to the workdir's best, else latest; `data_config` (a config
  whose data block is used) is needed for a converted or PyTorch checkpoint."""
  if workdir is None and checkpoint is None:
    raise ValueError("give --workdir (a training run) or --checkpoint (any checkpoint kind)")
  loaded, config = _model_and_config(workdir, checkpoint, overrides, data_config)
  workdir = loaded.workdir
  checkpoint = loaded.checkpoint
  if output_dir is None and workdir is None:
    raise ValueError(f"{checkpoint} is not inside a training workdir: give --output_dir for the results")
  output_dir = epath.Path(output_dir) if output_dir else checkpointing.absolute(workdir) / "eval"
  if config.model == "audio":
    removals = []  # an audio model has no second stream to fall back on
  for removal in removals:
    if removal not in REMOVALS:
      raise ValueError(f"unknown removal {removal!r}; expected some of {REMOVALS}")
  mesh = steps_lib.create_mesh()
  batch_size = config.eval_batch_size or config.batch_size
  batch_size = -(-batch_size // jax.device_count()) * jax.device_count()
  source = data_sources.create_source(config, jax.process_index(), jax.process_count())
  split_key = {"train": config.data.train_split, "validation": config.data.eval_split,
               "test": config.data.test_split}.get(split, split)
  if source.num_examples(split_key) == 0:
    raise ValueError(f"the {split!r} split of protocol {config.data.protocol} is empty in this dataset")
  predict_step = steps_lib.build(config, mesh).predict_step
  state = _replicated_state(loaded.variables, loaded.step, mesh)
  # The model's classes (model.json), or those of the dataset a --config names for a converted checkpoint.
  class_names = list((checkpointing.dataset_class_names(config) if data_config is not None else None)
                     or loaded.class_names)
  step = int(np.asarray(state.step))

  results = {}
  if jax.process_index() == 0:
    output_dir.mkdir(parents=True, exist_ok=True)
  for mode in ("both", *removals):
    logits, labels = predict(predict_step, state, source, split_key, batch_size, mesh, remove=mode)
    result = metrics_lib.classification_metrics(logits, labels, config.num_classes)
    matrix = metrics_lib.confusion_matrix(labels, np.argmax(logits, 1), config.num_classes)
    stats = metrics_lib.per_class(matrix)
    result.update(checkpoint=checkpoint, step=step, split=split, protocol=config.data.protocol, mode=mode,
                  confusion_matrix=matrix.tolist(), class_names=class_names,
                  per_class={name: {k: (None if np.isnan(v[i]) else float(v[i])) for k, v in stats.items()}
                             for i, name in enumerate(class_names)})
    results[mode] = result
    if jax.process_index() == 0:
      stem = f"{split}_{mode}"
      (output_dir / f"{stem}.json").write_text(json.dumps(result, indent=1))
      (output_dir / f"{stem}_report.txt").write_text(metrics_lib.report(matrix, class_names) + "\n")
      metrics_lib.plot_confusion_matrix(
          matrix, output_dir / f"{stem}_confusion.png", class_names,
          title=f"{config.data.protocol} {split}, {mode} (step {step}): acc {result['accuracy']:.3f}")
  if jax.process_index() == 0:
    summary = {mode: {k: r[k] for k in ("accuracy", "uar", "macro_f1", "loss", "count")} for mode, r in results.items()}
    (output_dir / f"{split}_summary.json").write_text(json.dumps(dict(summary, checkpoint=checkpoint, step=step),
                                                                 indent=1))
  return results


def format_results(results: Dict[str, Dict]) -> str:
  lines = [f"{'mode':<12} {'accuracy':>8} {'UAR':>8} {'macro-F1':>8} {'n':>6}"]
  for mode, r in results.items():
    lines.append(f"{mode:<12} {r['accuracy']:8.4f} {r['uar']:8.4f} {r['macro_f1']:8.4f} {r['count']:6d}")
  return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so the module can be imported anywhere)."""
  flags.DEFINE_string("workdir", None, "Training workdir (holds config.json and checkpoints).")
  flags.DEFINE_string("checkpoint", None, "A checkpoint step directory (default: the best, else the latest), a "
                      "converted checkpoint or a PyTorch .pth (these two need --config).")
  config_flags.DEFINE_config_file("config", None, "Dataset settings (configs/ravdess.py:foldK) for a converted "
                                  "or PyTorch checkpoint; its data block is used.", lock_config=False)
  flags.DEFINE_bool("verbose", False, "Library log messages and full error tracebacks.")
  flags.DEFINE_string("compilation_cache", "", "JAX's persistent compilation cache folder (default $AVTCA_COMPILATION_CACHE or ~/.cache/avtca_jax/jax; none: off)")
  flags.DEFINE_string("split", "test", "train, validation or test (of the run's protocol).")
  flags.DEFINE_list("remove", ["audio_zeros", "video_zeros"], f"Streams to remove, from {REMOVALS}; '' for none.")
  flags.DEFINE_string("output_dir", None, "Default: WORKDIR/eval.")
  flags.DEFINE_string("data_dir", None, "Override the tfds data_dir of the run.")


def main(argv):
  del argv
  console.configure_logging(FLAGS.verbose)
  compilation_cache.enable(FLAGS.compilation_cache)
  overrides = {"data.data_dir": FLAGS.data_dir} if FLAGS.data_dir else None
  try:
    results = evaluate(FLAGS.workdir, FLAGS.checkpoint, FLAGS.split, [r for r in FLAGS.remove if r],
                       FLAGS.output_dir, overrides, FLAGS.config)
  except Exception as error:  # a user error is one line; a bug keeps its traceback
    console.exit_on_user_error(error, FLAGS.verbose)
  first = next(iter(results.values()))
  print(f"{FLAGS.split} split, checkpoint {first['checkpoint']} (step {first['step']})")
  print(format_results(results))
  print()
  print(metrics_lib.report(np.asarray(results["both"]["confusion_matrix"]), results["both"]["class_names"]))
  print(f"\nwritten to {FLAGS.output_dir or epath.Path(first['checkpoint']).parent.parent / 'eval'}")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=console.parse_flags)
