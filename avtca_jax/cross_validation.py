"""All folds of the actor-independent protocol: train each (its own workdir), evaluate its test actors with the
best-validation checkpoint, and write per-fold metrics with mean and standard deviation over folds.

    python -m avtca_jax.cross_validation --config=configs/ravdess.py:fold1 --workdir=DIR
    python -m avtca_jax.cross_validation --config=configs/ravdess.py:audio_only --workdir=DIR --folds=1,2

Fold k trains in DIR/foldK with `config.data.protocol = 'foldK'` (the rest of the config as given, including
`--config.x=y` overrides). Rerunning resumes unfinished folds and re-evaluates finished ones. Writes
DIR/cross_validation.json and DIR/cross_validation.md. The standard deviation is the sample one (ddof=1).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Dict, List, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging
import numpy as np
from ml_collections import config_flags

from avtca_jax import checkpointing, evaluate as evaluate_lib
from avtca_jax import train as train_lib

METRICS = ("accuracy", "uar", "macro_f1")


def summarize(per_fold: Dict[str, Dict[str, Dict[str, float]]]) -> Dict[str, Dict[str, Dict[str, float]]]:
  """{mode: {metric: {'mean', 'std', 'min', 'max'}}} over folds; per_fold is {fold: {mode: metrics}}."""
  modes = sorted({m for results in per_fold.values() for m in results}, key=lambda m: (m != "both", m))
  out = {}
  for mode in modes:
    out[mode] = {}
    for metric in METRICS:
      values = np.array([r[mode][metric] for r in per_fold.values() if mode in r], np.float64)
      out[mode][metric] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                           "min": float(values.min()), "max": float(values.max()), "folds": len(values)}
  return out


def markdown(per_fold, summary) -> str:
  lines = ["| fold | mode | accuracy | UAR | macro-F1 | test clips |", "|---|---|---|---|---|---|"]
  for fold, results in per_fold.items():
    for mode, r in results.items():
      lines.append(f"| {fold} | {mode} | {100 * r['accuracy']:.2f} | {100 * r['uar']:.2f} | "
                   f"{100 * r['macro_f1']:.2f} | {r['count']} |")
  for mode, stats in summary.items():
    cells = " | ".join(f"{100 * stats[m]['mean']:.2f} ± {100 * stats[m]['std']:.2f}" for m in METRICS)
    lines.append(f"| **mean ± std** | {mode} | {cells} | |")
  return "\n".join(lines) + "\n"


def run(config, workdir: str, folds: Sequence[int] = (1, 2, 3, 4, 5),
        removals: Sequence[str] = ("audio_zeros", "video_zeros")) -> Dict:
  workdir = checkpointing.absolute(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  per_fold: Dict[str, Dict] = {}
  for k in folds:
    fold_config = config.copy_and_resolve_references()
    fold_config.unlock()
    fold_config.data.protocol = f"fold{k}"
    fold_workdir = str(workdir / f"fold{k}")
    logging.info("fold %d -> %s", k, fold_workdir)
    train_lib.train_and_evaluate(fold_config, fold_workdir)
    results = evaluate_lib.evaluate(fold_workdir, split="test", removals=removals)
    per_fold[f"fold{k}"] = {mode: {m: r[m] for m in METRICS + ("loss", "count", "step")}
                            for mode, r in results.items()}
  summary = summarize(per_fold)
  report = {"per_fold": per_fold, "summary": summary, "folds": list(folds)}
  (workdir / "cross_validation.json").write_text(json.dumps(report, indent=1))
  (workdir / "cross_validation.md").write_text(markdown(per_fold, summary))
  return report


FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so the module can be imported anywhere)."""
  flags.DEFINE_string("workdir", None, "Parent directory; fold k trains in WORKDIR/foldk.")
  flags.DEFINE_list("folds", ["1", "2", "3", "4", "5"], "Folds to run.")
  flags.DEFINE_list("remove", ["audio_zeros", "video_zeros"], "Stream removals evaluated on each fold's test split.")
  config_flags.DEFINE_config_file("config", None, "Training config (configs/ravdess.py:foldK or :audio_only).",
                                  lock_config=True)



def main(argv):
  del argv
  try:
    report = run(FLAGS.config, FLAGS.workdir, [int(k) for k in FLAGS.folds], [r for r in FLAGS.remove if r])
  except (train_lib.ConfigError, ValueError, FileNotFoundError) as error:
    sys.exit(f"error: {error}")
  print(markdown(report["per_fold"], report["summary"]))


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
