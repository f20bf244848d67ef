"""The PyTorch original's audio-only training loop on whole folds x seeds: the reference for our trainer.

    python -m benchmarks.audio_fold --fold_set=chumachenko5 --seeds=0,1,2 --json=runs/torch_folds.json

For each actor-independent fold (`avtca_jax.splits`, the same fold sets as `avtca_jax.cross_validation`)
of the 1440 real RAVDESS speech files (`--audio_dir`, default $AVTCA_RAVDESS_DIR/audio_speech_22k), on the
MFCCs our trainer reads (`audio_data.load_ravdess_audio`, the original's librosa features):
the original's audio branch (`reference.torch_avtca.AudioCNNPool`: stage 1 + 2, mean over time, linear head)
trained with the original's code path and recipe (docs/original.md): raw MFCCs, SGD 0.06, momentum 0.9, dampening 0.9,
L2 1e-3, batch 8 shuffled, 100 epochs, `adjust_learning_rate` (x0.1 from epoch 40, 55, 65, 70, epochs
counted from 1), validation after every epoch, the best epoch's parameters (strict '>') run on the test
actors. `torch.manual_seed(seed)` as the original. Metrics are `avtca_jax.metrics.classification_metrics`
(fractions), as for our runs.

Time: the MFCCs are held in memory (the bare loop). The original as it ships computes every clip's MFCCs
with librosa in each `__getitem__`; `--per_clip_features=N` times that on N clips and reports the estimate
bare loop + 100 epochs x (train + validation clips) x seconds per clip ('as it ships', an estimate).

Our side runs separately through the one trainer (`python -m avtca_jax.cross_validation`, same folds and
seeds); `--compare=NAME=DIR,...` prints the side-by-side table over the runs all of them finished:

    python -m benchmarks.audio_fold --json=runs/torch_folds.json --compare=fast=runs/audio_cv,original=runs/audio_orig \
        [--fold_set=all24]

Every finished run is written to `--json` at once, and rerunning with the same `--json` skips the runs
already there. Runs split over several processes write one file each; `--compare` takes them as a
comma-separated `--json` list.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ORIGINAL_LR_STEPS = (40, 55, 65, 70, 200, 250)  # opts.py lr_steps; adjust_learning_rate at each epoch start


def original_learning_rate(epoch: int, base: float = 0.06) -> float:
  """The original's `adjust_learning_rate(optimizer, epoch, opt)` for epochs counted from 1."""
  return base * 0.1 ** int(sum(epoch >= s for s in ORIGINAL_LR_STEPS))


def train_fold_torch(parts, epochs: int = 100, seed: int = 1, batch_size: int = 8, learning_rate: float = 0.06):
  """The original's audio-only training on one fold's {'train','validation','test'} arrays (raw MFCCs)."""
  import torch

  from avtca_jax import metrics
  from avtca_jax.reference.torch_avtca import AudioCNNPool

  start = time.perf_counter()
  torch.manual_seed(seed)
  model = AudioCNNPool(num_classes=8)
  optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=0.9, dampening=0.9,
                              weight_decay=1e-3)
  loss_fn = torch.nn.CrossEntropyLoss()
  # The original feeds (B, 10, 156): the MFCC coefficients as channels.
  tensors = {name: (torch.from_numpy(np.ascontiguousarray(p["mfcc"].transpose(0, 2, 1))),
                    torch.from_numpy(p["label"].astype(np.int64))) for name, p in parts.items()}
  x_train, y_train = tensors["train"]

  def logits_of(x):
    model.eval()
    with torch.no_grad():
      return torch.cat([model(x[i:i + 64]) for i in range(0, len(x), 64)]).numpy()

  best_accuracy, best_epoch, best_state, history = -1.0, None, None, []
  for epoch in range(1, epochs + 1):
    for group in optimizer.param_groups:
      group["lr"] = original_learning_rate(epoch, learning_rate)
    model.train()
    order = torch.randperm(len(y_train))
    for i in range(0, len(order), batch_size):  # drop_last=False, as the original's loader
      index = order[i:i + batch_size]
      optimizer.zero_grad()
      loss = loss_fn(model(x_train[index]), y_train[index])
      loss.backward()
      optimizer.step()
    accuracy = float(np.mean(logits_of(tensors["validation"][0]).argmax(-1) == parts["validation"]["label"]))
    history.append(accuracy)
    if epoch % 10 == 0:
      print(f"  epoch {epoch}: validation {100 * accuracy:.1f}% ({time.perf_counter() - start:.0f} s)", flush=True)
    if accuracy > best_accuracy:  # the original saves the model on a strictly better validation accuracy
      best_accuracy, best_epoch = accuracy, epoch
      best_state = {k: v.clone() for k, v in model.state_dict().items()}
  model.load_state_dict(best_state)
  result = {"best_epoch": best_epoch, "validation_history": history}
  for split in ("validation", "test"):
    result[split] = metrics.classification_metrics(logits_of(tensors[split][0]), parts[split]["label"], 8)
  result["seconds"] = time.perf_counter() - start
  return result


def per_clip_feature_seconds(audio_dir, num_clips: int) -> float:
  """Seconds to load one clip and compute its MFCCs (what the original does in each `__getitem__`)."""
  from avtca_jax import audio_data

  files = audio_data.list_audio_files(audio_dir)
  picked = [files[i] for i in np.linspace(0, len(files) - 1, num_clips + 1).astype(int)]
  audio_data.clip_features(picked[0])  # librosa's first call compiles numba code: not counted
  start = time.perf_counter()
  for path in picked[1:]:
    audio_data.clip_features(path)
  return (time.perf_counter() - start) / num_clips


def default_audio_dir() -> str:
  root = os.environ.get("AVTCA_RAVDESS_DIR")
  if not root:
    raise SystemExit("error: set --audio_dir or AVTCA_RAVDESS_DIR (the RAVDESS folder holding audio_speech_22k)")
  return os.path.join(root, "audio_speech_22k")


def measure(protocols, seeds, epochs: int = 100, audio_dir=None, json_path: str = "",
            per_clip_features: int = 0, argv=()) -> dict:
  """Trains every (fold, seed) not yet in `json_path`; `argv` is the command line recorded with the results."""
  import torch  # before TensorFlow/JAX threads start, as in benchmarks.audio_step

  from avtca_jax import audio_data, splits

  audio_dir = audio_dir or default_audio_dir()
  data = audio_data.load_ravdess_audio(audio_dir)
  from benchmarks import records
  result = {**records.stamp("benchmarks.audio_fold", argv), "runs": {}, "epochs": epochs, "seeds": list(seeds),
            "folds": list(protocols),
            "tested_actors": sorted({a for p in protocols for a in splits.fold_actors(p)["test"]})}
  result["machine"]["torch_threads"] = torch.get_num_threads()
  if json_path and os.path.exists(json_path):
    with open(json_path) as f:
      result["runs"] = json.load(f).get("runs", {})
  for protocol in protocols:
    parts = audio_data.split_by_protocol(data, protocol)
    parts = {name: {"mfcc": p["mfcc"], "label": p["label"]} for name, p in parts.items()}
    for seed in seeds:
      key = f"{protocol}/seed{seed}"
      if key in result["runs"]:
        continue
      run = train_fold_torch(parts, epochs=epochs, seed=seed)
      result["runs"][key] = run
      test = run["test"]
      print(f"{key}: best epoch {run['best_epoch']}, test acc {100 * test['accuracy']:.2f} UAR "
            f"{100 * test['uar']:.2f} F1 {100 * test['macro_f1']:.2f} in {run['seconds']:.0f} s", flush=True)
      if json_path:
        with open(json_path, "w") as f:
          json.dump(result, f, indent=1)
  if per_clip_features:
    seconds = per_clip_feature_seconds(audio_dir, per_clip_features)
    clips_per_epoch = int(sum(len(p["label"]) for name, p in
                              audio_data.split_by_protocol(data, protocols[0]).items() if name != "test"))
    result["as_it_ships"] = {"seconds_per_clip": seconds, "clips_per_epoch": clips_per_epoch,
                             "added_seconds_per_fold": seconds * clips_per_epoch * epochs}
  if json_path:
    with open(json_path, "w") as f:
      json.dump(result, f, indent=1)
  return result


def summary(result: dict) -> dict:
  """{metric: {'mean', 'fold_std', 'seed_std'}} over complete folds, as `cross_validation.summarize`."""
  from avtca_jax import cross_validation

  runs = {}
  for key, run in result["runs"].items():
    protocol, seed = key.split("/seed")
    runs.setdefault(protocol, {})[int(seed)] = {"both": run["test"]}
  complete = max((len(v) for v in runs.values()), default=0)
  runs = {p: v for p, v in runs.items() if len(v) == complete}
  return cross_validation.summarize(runs)["both"] if runs else {}


def markdown(result: dict) -> str:
  rows = ["| fold | seed | best epoch | test acc | UAR | macro-F1 | seconds |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for key, run in result["runs"].items():
    protocol, seed = key.split("/seed")
    t = run["test"]
    rows.append(f"| {protocol} | {seed} | {run['best_epoch']} | {100 * t['accuracy']:.2f} | {100 * t['uar']:.2f} | "
                f"{100 * t['macro_f1']:.2f} | {run['seconds']:.0f} |")
  stats = summary(result)
  if stats:
    cell = lambda m: (f"{100 * stats[m]['mean']:.2f} ± {100 * stats[m]['fold_std']:.2f} (folds) ± "
                      f"{100 * stats[m]['seed_std']:.2f} (seeds)")
    seconds = np.mean([r["seconds"] for r in result["runs"].values()])
    rows.append(f"| mean ± spreads | | | {cell('accuracy')} | {cell('uar')} | {cell('macro_f1')} | {seconds:.0f} |")
  if "as_it_ships" in result:
    s = result["as_it_ships"]
    rows.append(f"\nAs it ships (estimate): + {s['seconds_per_clip'] * 1000:.1f} ms per clip x "
                f"{s['clips_per_epoch']} clips x {result['epochs']} epochs = + {s['added_seconds_per_fold']:.0f} s "
                "per fold")
  return "\n".join(rows)


def compare(torch_result: dict, ours: dict, protocols=None) -> str:
  """Side by side: the PyTorch loop and our cross_validation reports ({name: cross_validation.json dict}),
  over the (fold, seed) runs that all of them finished, restricted to `protocols` when given (a fold set:
  the same runs summarised over chumachenko5's 5 folds and over all24's 6). Per fold: the mean over seeds of
  test accuracy / UAR / macro-F1; then each one's mean ± fold spread ± seed spread and mean seconds per run."""
  from avtca_jax import cross_validation

  runs = {"PyTorch original loop": {}}
  seconds = {"PyTorch original loop": {}}
  for key, run in torch_result["runs"].items():
    protocol, seed = key.split("/seed")
    runs["PyTorch original loop"].setdefault(protocol, {})[int(seed)] = {"both": run["test"]}
    seconds["PyTorch original loop"][(protocol, int(seed))] = run["seconds"]
  for name, report in ours.items():
    runs[name], seconds[name] = {}, {}
    for protocol, per_seed in report["runs"].items():
      for seed, results in per_seed.items():
        runs[name].setdefault(protocol, {})[int(seed)] = {"both": results["both"]}
        seconds[name][(protocol, int(seed))] = report["seconds"][protocol][seed]
  common = set.intersection(*({(p, s) for p, v in r.items() for s in v} for r in runs.values()))
  if protocols is not None:
    common = {(p, s) for p, s in common if p in set(protocols)}
  protocols = sorted({p for p, _ in common}, key=lambda p: (len(p), p))
  seeds = sorted({s for _, s in common})
  complete = [p for p in protocols if all((p, s) in common for s in seeds)]
  if not complete:
    return "no (fold, seed) run finished by all"
  names = list(runs)
  triple = lambda rs: " / ".join(f"{100 * np.mean([r['both'][m] for r in rs]):.1f}"
                                 for m in ("accuracy", "uar", "macro_f1"))
  lines = [f"Test actors: {cross_validation._ranges(cross_validation.tested_actors(complete))}; seeds "
           f"{', '.join(map(str, seeds))}; test accuracy / UAR / macro-F1 (%), mean over seeds.", "",
           "| fold | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
  for p in complete:
    lines.append(f"| {p} | " + " | ".join(triple([runs[n][p][s] for s in seeds]) for n in names) + " |")
  for metric, label in (("accuracy", "accuracy"), ("uar", "UAR"), ("macro_f1", "macro-F1")):
    cells = []
    for n in names:
      stats = cross_validation.summarize({p: {s: runs[n][p][s] for s in seeds} for p in complete})["both"][metric]
      cells.append(f"{100 * stats['mean']:.1f} ± {100 * stats['fold_std']:.1f} (folds) ± "
                   f"{100 * stats['seed_std']:.1f} (seeds)")
    lines.append(f"| {label}: mean ± spreads | " + " | ".join(cells) + " |")
  # Whether a recipe keeps the original's accuracy "within seed noise": the difference of the two means,
  # paired by fold (fold difficulty cancels), against its seed-noise standard error
  # sigma = sqrt((s_ours^2 + s_torch^2) / (folds x seeds)), where s is a run's seed-to-seed standard deviation
  # within a fold, pooled over folds. Within seed noise when |difference| <= 2 sigma.
  def run_std(n):
    return 100 * float(np.sqrt(np.mean([np.var([runs[n][p][s]["both"]["accuracy"] for s in seeds], ddof=1)
                                        for p in complete]))) if len(seeds) > 1 else float("nan")
  base = "PyTorch original loop"
  cells = ["-"]
  for n in names[1:]:
    delta = 100 * float(np.mean([runs[n][p][s]["both"]["accuracy"] - runs[base][p][s]["both"]["accuracy"]
                                 for p in complete for s in seeds]))
    sigma = float(np.sqrt((run_std(n) ** 2 + run_std(base) ** 2) / (len(complete) * len(seeds))))
    if len(seeds) < 2:  # no seed spread to compare against
      cells.append(f"{delta:+.1f} points (one seed: no seed-noise verdict)")
      continue
    verdict = ("within seed noise" if abs(delta) <= 2 * sigma + 1e-9 else
               "below the original beyond seed noise" if delta < 0 else "above the original beyond seed noise")
    cells.append(f"{delta:+.1f} points, 2 sigma = {2 * sigma:.1f}: {verdict}")
  lines.append("| accuracy minus the PyTorch loop's | " + " | ".join(cells) + " |")
  lines.append("| seconds per fold (mean) | " + " | ".join(
      f"{np.mean([seconds[n][(p, s)] for p in complete for s in seeds]):.0f}" for n in names) + " |")
  return "\n".join(lines)


def main(argv=None):
  from avtca_jax import splits

  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--fold_set", default="chumachenko5", choices=sorted(splits.FOLD_SETS))
  parser.add_argument("--folds", default="", help="fold numbers of the fold set (default: all)")
  parser.add_argument("--seeds", default="1", help="torch.manual_seed values (the original: 1)")
  parser.add_argument("--epochs", type=int, default=100, help="the original's epochs (100)")
  parser.add_argument("--audio_dir", default=None)
  parser.add_argument("--json", default="", help="results file; rerunning skips the runs already in it "
                      "(with --compare: a comma-separated list of them)")
  parser.add_argument("--threads", type=int, default=0,
                      help="torch.set_num_threads (default: torch's own, the machine's cores). Run the loop "
                           "alone: another job on the same cores slows it, whatever the thread count")
  parser.add_argument("--per_clip_features", type=int, default=0,
                      help="time the original's per-clip MFCC on this many clips ('as it ships' estimate)")
  parser.add_argument("--compare", default="",
                      help="NAME=DIR,...: print the side-by-side table of --json (PyTorch) and these "
                           "cross_validation workdirs over the runs all finished, for --fold_set / --folds, "
                           "and train nothing")
  args = parser.parse_args(argv)
  every = splits.FOLD_SETS[args.fold_set]
  protocols = [every[int(k) - 1] for k in args.folds.split(",")] if args.folds else list(every)
  if args.compare:
    torch_result = {"runs": {}}
    for path in args.json.split(","):  # several PyTorch result files (runs split over processes) are merged
      with open(path) as f:
        torch_result["runs"].update(json.load(f)["runs"])
    ours = {}
    for item in args.compare.split(","):
      name, directory = item.split("=", 1)
      with open(os.path.join(directory, "cross_validation.json")) as f:
        ours[name] = json.load(f)
    print(compare(torch_result, ours, protocols))
    return
  if args.threads:
    import torch
    torch.set_num_threads(args.threads)
  result = measure(protocols, [int(s) for s in args.seeds.split(",")], epochs=args.epochs,
                   audio_dir=args.audio_dir, json_path=args.json, per_clip_features=args.per_clip_features,
                   argv=sys.argv[1:] if argv is None else argv)
  print(markdown(result))


if __name__ == "__main__":
  main()
