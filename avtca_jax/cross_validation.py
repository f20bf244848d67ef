"""Cross-validation over folds x seeds with the one trainer, and nested cross-validation for recipe choices.

    python -m avtca_jax.cross_validation --config=configs/ravdess.py:fold1 --workdir=DIR
    python -m avtca_jax.cross_validation --config=configs/ravdess.py:audio_only --workdir=DIR --seeds=0,1,2
    python -m avtca_jax.cross_validation --config=configs/ravdess.py:audio_only --workdir=DIR --fold_set=all24
    python -m avtca_jax.cross_validation --config=configs/ravdess.py:audio_only --workdir=DIR \
        --nested='{"lr0.03": {"learning_rate": 0.03}, "lr0.06": {}}'

Each (fold, seed) trains in DIR/<protocol>/seed<s> with `config.data.protocol` and `config.seed` set (the rest
of the config as given, `--config.x=y` overrides included) and is tested with the trainer's rule
(the best-validation checkpoint, or the final parameters where the protocol has no validation part).
`--fold_set` picks the folds: `chumachenko5` (fold1..fold5, test actors 1-20) or `all24` (six folds whose
test actors cover 1-24); `--folds=1,3` runs a subset. Every table names the actors tested.

Runs go strictly in order: a (fold, seed) starts only when the previous one has finished. A run stopped by
SIGTERM ('preempted') stops the whole cross-validation without evaluating it; rerunning the same command
resumes it, re-reads the finished runs' test metrics, and goes on.

Results (DIR/cross_validation.json and .md): every run's accuracy, UAR and macro-F1 (and seconds), each
fold's mean over seeds, the overall mean, the fold-to-fold spread (sample std over folds of the per-fold
seed means) and the seed-to-seed spread (sample std over seeds of the per-seed fold means).

Nested cross-validation (`--nested`, a JSON object {candidate: config overrides}): for each outer fold,
every candidate trains on the inner folds of that fold's training actors (`splits.inner_protocol`: 4 groups
of 4 of the 16 training actors, each held out once; the outer validation and test actors are in no part)
with the first seed, and the candidate with the best mean inner held-out accuracy is then trained and
tested on the outer fold. So a recipe choice never sees an actor that any outer fold validates or tests on
(in the 5-fold protocol, fold k's validation actors are fold k+1's test actors).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging
import numpy as np
from etils import epath
from ml_collections import config_flags

from avtca_jax import checkpointing, console, datasets, evaluate as evaluate_lib, splits
from avtca_jax import train as train_lib

METRICS = ("accuracy", "uar", "macro_f1")


def _std(values) -> float:
  values = np.asarray(values, np.float64)
  return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summarize(runs: Dict[str, Dict[str, Dict[str, Dict[str, float]]]]) -> Dict[str, Dict[str, Dict[str, float]]]:
  """{mode: {metric: {'mean', 'fold_std', 'seed_std', 'min', 'max', 'folds', 'seeds'}}} from
  runs = {protocol: {seed: {mode: metrics}}}.

  mean: over all runs (every fold has the same seeds); fold_std: sample std over folds of each fold's mean
  over seeds; seed_std: sample std over seeds of each seed's mean over folds (0 with one seed)."""
  protocols = list(runs)
  seeds = sorted({s for per_seed in runs.values() for s in per_seed})
  modes = sorted({m for per_seed in runs.values() for r in per_seed.values() for m in r},
                 key=lambda m: (m != "both", m))
  out = {}
  for mode in modes:
    out[mode] = {}
    for metric in METRICS:
      table = np.array([[runs[p][s][mode][metric] for s in seeds] for p in protocols], np.float64)  # (F, S)
      out[mode][metric] = {"mean": float(table.mean()), "fold_std": _std(table.mean(axis=1)),
                           "seed_std": _std(table.mean(axis=0)), "min": float(table.min()),
                           "max": float(table.max()), "folds": len(protocols), "seeds": len(seeds)}
  return out


def tested_actors(protocols: Sequence[str], dataset: datasets.Dataset = datasets.RAVDESS) -> List[int]:
  return sorted({a for p in protocols for a in dataset.parts(p)["test"]})


def _ranges(actors: Sequence[int]) -> str:
  """[1, 2, 3, 5] -> '1-3, 5'."""
  out, start = [], None
  for i, a in enumerate(actors):
    if start is None:
      start = a
    if i + 1 == len(actors) or actors[i + 1] != a + 1:
      out.append(f"{start}-{a}" if a != start else f"{a}")
      start = None
  return ", ".join(out)


def markdown(runs, summary, seconds=None, chosen=None, dataset: datasets.Dataset = datasets.RAVDESS) -> str:
  """Per-run rows, per-fold means over seeds, and the mean with both spreads (percentages)."""
  protocols, seeds = list(runs), sorted({s for r in runs.values() for s in r})
  actors = tested_actors(protocols, dataset)
  lines = [f"Test actors: {_ranges(actors)} ({len(actors)} of {len(dataset.groups)}; folds {', '.join(protocols)}; seeds "
           f"{', '.join(str(s) for s in seeds)}).", "",
           "| fold | seed | mode | accuracy | UAR | macro-F1 | test clips | seconds |",
           "|---|---|---|---|---|---|---|---|"]
  for protocol, per_seed in runs.items():
    for seed, results in sorted(per_seed.items()):
      for mode, r in results.items():
        sec = f"{seconds[protocol][seed]:.0f}" if seconds and seed in seconds.get(protocol, {}) else ""
        lines.append(f"| {protocol} | {seed} | {mode} | {100 * r['accuracy']:.2f} | {100 * r['uar']:.2f} | "
                     f"{100 * r['macro_f1']:.2f} | {r['count']} | {sec} |")
    if len(per_seed) > 1:
      for mode in next(iter(per_seed.values())):
        cells = " | ".join(f"{100 * np.mean([r[mode][m] for r in per_seed.values()]):.2f}" for m in METRICS)
        lines.append(f"| {protocol} | mean | {mode} | {cells} | | |")
  for mode, stats in summary.items():
    cells = " | ".join(f"{100 * stats[m]['mean']:.2f} ± {100 * stats[m]['fold_std']:.2f} (folds) ± "
                       f"{100 * stats[m]['seed_std']:.2f} (seeds)" for m in METRICS)
    all_seconds = [v for per in (seconds or {}).values() for v in per.values()]
    sec = f"{np.mean(all_seconds):.0f}" if all_seconds else ""
    lines.append(f"| **mean ± spreads** | | {mode} | {cells} | | {sec} |")
  if chosen:
    lines += ["", "Nested selection (inner held-out accuracy, %, per candidate):", ""]
    for protocol, c in chosen.items():
      scores = ", ".join(f"{name} {100 * v:.2f}" for name, v in c["scores"].items())
      lines.append(f"- {protocol}: chose `{c['chosen']}` ({scores})")
  return "\n".join(lines) + "\n"


def _protocols(fold_set: str, folds: Optional[Sequence[int]]) -> List[str]:
  if fold_set not in splits.FOLD_SETS:
    raise ValueError(f"unknown fold set {fold_set!r}; expected one of {sorted(splits.FOLD_SETS)}")
  every = splits.FOLD_SETS[fold_set]
  if not folds:
    return list(every)
  bad = [k for k in folds if not 1 <= k <= len(every)]
  if bad:
    raise ValueError(f"folds {bad} do not exist in fold set {fold_set!r} (1..{len(every)})")
  return [every[k - 1] for k in folds]


def _run_config(config, protocol: str, seed: int, overrides: Optional[Dict[str, Any]] = None):
  run_config = config.copy_and_resolve_references()
  run_config.unlock()
  run_config.data.protocol = protocol
  run_config.seed = int(seed)
  for key, value in (overrides or {}).items():
    run_config.update_from_flattened_dict({key: tuple(value) if isinstance(value, list) else value})
  return run_config


class Preempted(Exception):
  """A run stopped on SIGTERM: the cross-validation stops too; rerunning resumes it."""


SECONDS_FILE = "cross_validation_seconds.json"


def _train_and_test(config, workdir: str, removals: Sequence[str], allow_config_change: bool):
  """({mode: metrics} on the test split, seconds) of one run, trained (or resumed) in `workdir`.

  Seconds are the wall time of the calls that trained (compilation and the final test included), summed
  over resumptions and kept in the run's SECONDS_FILE, so re-reading a finished run reports its training
  time, not the time to re-read it."""
  record = epath.Path(workdir) / SECONDS_FILE
  finished_before = (epath.Path(workdir) / "test_metrics.json").exists()
  seconds = json.loads(record.read_text())["seconds"] if record.exists() else 0.0
  start = time.perf_counter()
  summary = train_lib.train_and_evaluate(config, workdir, allow_config_change=allow_config_change)
  if not finished_before or not record.exists():
    seconds += time.perf_counter() - start
    record.write_text(json.dumps({"seconds": seconds}))
  if summary["status"] != "finished":
    raise Preempted(f"{workdir} stopped ({summary['status']}) before its last step; rerun the same command "
                    "to resume it")
  results = {"both": summary["test"]}
  if removals and config.model != "audio":
    results = evaluate_lib.evaluate(workdir, split="test", removals=removals)
  keep = METRICS + ("loss", "count", "step", "checkpoint_step")
  return {mode: {m: r[m] for m in keep if m in r} for mode, r in results.items()}, seconds


def nested_select(config, workdir: str, protocol: str, candidates: Dict[str, Dict[str, Any]], seed: int,
                  allow_config_change: bool = False) -> Dict[str, Any]:
  """The candidate (config overrides) with the best mean held-out accuracy over the inner folds of
  `protocol`'s training actors; {'chosen', 'scores'}."""
  scores = {}
  for name, overrides in candidates.items():
    accuracies = []
    for j in range(1, splits.INNER_FOLDS + 1):
      inner = splits.inner_protocol(protocol, j)
      inner_config = _run_config(config, inner, seed, overrides)
      inner_dir = str(epath.Path(workdir) / protocol / "inner" / name / inner)
      logging.info("nested: %s candidate %s -> %s", protocol, name, inner_dir)
      results, _ = _train_and_test(inner_config, inner_dir, (), allow_config_change)
      accuracies.append(results["both"]["accuracy"])
    scores[name] = float(np.mean(accuracies))
  chosen = max(scores, key=lambda n: (scores[n], -list(candidates).index(n)))  # ties: the first listed
  return {"chosen": chosen, "scores": scores}


def run(config, workdir: str, folds: Optional[Sequence[int]] = None, seeds: Optional[Sequence[int]] = None,
        removals: Sequence[str] = ("audio_zeros", "video_zeros"), fold_set: str = "chumachenko5",
        nested: Optional[Dict[str, Dict[str, Any]]] = None, allow_config_change: bool = False) -> Dict:
  """Trains and tests every (fold, seed) in order; returns (and writes) the report. Raises Preempted when a
  run was stopped by SIGTERM (the report then holds the runs finished so far)."""
  root = checkpointing.absolute(workdir)  # local or gs://
  root.mkdir(parents=True, exist_ok=True)
  workdir = str(root)
  protocols = _protocols(fold_set, folds)
  dataset = datasets.of_config(config)
  seeds = [int(s) for s in (seeds if seeds else [config.seed])]
  runs: Dict[str, Dict[int, Dict]] = {}
  seconds: Dict[str, Dict[int, float]] = {}
  chosen: Dict[str, Dict[str, Any]] = {}

  def write_report(status):
    summary = summarize(runs) if runs and all(len(v) == len(seeds) for v in runs.values()) else {}
    report = {"status": status, "fold_set": fold_set, "folds": protocols, "seeds": seeds,
              "tested_actors": tested_actors(list(runs) or protocols, dataset), "runs": runs, "seconds": seconds,
              "summary": summary, "nested": chosen or None}
    (epath.Path(workdir) / "cross_validation.json").write_text(json.dumps(report, indent=1))
    if summary:
      (epath.Path(workdir) / "cross_validation.md").write_text(markdown(runs, summary, seconds, chosen, dataset))
    return report

  try:
    for protocol in protocols:
      overrides = {}
      if nested:
        chosen[protocol] = nested_select(config, workdir, protocol, nested, seeds[0], allow_config_change)
        overrides = nested[chosen[protocol]["chosen"]]
        logging.info("nested: %s chose %s (%s)", protocol, chosen[protocol]["chosen"], chosen[protocol]["scores"])
      for seed in seeds:
        run_dir = str(epath.Path(workdir) / protocol / f"seed{seed}")
        logging.info("%s seed %d -> %s", protocol, seed, run_dir)
        results, sec = _train_and_test(_run_config(config, protocol, seed, overrides), run_dir, removals,
                                       allow_config_change)
        runs.setdefault(protocol, {})[seed] = results
        seconds.setdefault(protocol, {})[seed] = sec
        write_report("running")
  except Preempted:
    write_report("preempted")
    raise
  return write_report("finished")


FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so the module can be imported anywhere)."""
  flags.DEFINE_string("workdir", None, "Parent directory; fold PROTOCOL, seed S trains in WORKDIR/PROTOCOL/seedS.")
  flags.DEFINE_string("fold_set", "chumachenko5", f"Folds: one of {sorted(splits.FOLD_SETS)}.")
  flags.DEFINE_list("folds", [], "Fold numbers of the fold set to run (default: all).")
  flags.DEFINE_list("seeds", [], "Seeds (default: config.seed).")
  flags.DEFINE_list("remove", ["audio_zeros", "video_zeros"], "Stream removals evaluated on each fold's test split.")
  flags.DEFINE_string("nested", "", "JSON {candidate: {config key: value}}: pick per fold by nested CV.")
  flags.DEFINE_bool("resume_with_changed_config", False,
                    "Resume workdirs whose stored config differs from this one (normally refused).")
  config_flags.DEFINE_config_file("config", None, "Training config (configs/ravdess.py:foldK or :audio_only).",
                                  lock_config=True)
  flags.DEFINE_bool("verbose", False, "Library log messages and full error tracebacks.")



def main(argv):
  del argv
  console.configure_logging(FLAGS.verbose)
  try:
    nested = json.loads(FLAGS.nested) if FLAGS.nested else None
    report = run(FLAGS.config, FLAGS.workdir, [int(k) for k in FLAGS.folds], [int(s) for s in FLAGS.seeds],
                 [r for r in FLAGS.remove if r], FLAGS.fold_set, nested, FLAGS.resume_with_changed_config)
  except Preempted as stopped:
    print(f"preempted: {stopped}")
    return
  except train_lib.NonFiniteLossError as error:
    sys.exit(f"error: {error}")
  except Exception as error:  # a user error is one line; a bug keeps its traceback
    console.exit_on_user_error(error, FLAGS.verbose)
  print(markdown(report["runs"], report["summary"], report["seconds"], report["nested"],
                 datasets.of_config(FLAGS.config)))


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=console.parse_flags)
