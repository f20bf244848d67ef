"""Whole folds of audio-only training, the PyTorch original's recipe vs ours, side by side in one process.

    python -m benchmarks.audio_fold --folds=1,2,3,4,5 --json=/tmp/audio_fold.json

For each actor-independent fold of the 1440 real RAVDESS speech files (../shared/data/ravdess/
audio_speech_22k), on the same MFCCs (`audio_data.load_ravdess_audio`, the original's librosa features):

- `torch`: the original's audio branch (`reference.torch_avtca.AudioCNNPool`: stage 1 + 2, mean over time,
  linear head) trained with the original's code path and recipe (spec 5): raw MFCCs, SGD 0.06, momentum
  0.9, dampening 0.9, L2 1e-3, batch 8 shuffled, 100 epochs, `adjust_learning_rate` (x0.1 from epoch 40,
  55, 65, 70, epochs counted from 1), validation after every epoch, the best epoch's parameters (strict '>')
  run on the test actors. `torch.manual_seed(seed)` as the original.
- `jax`: `avtca_jax.audio_recipe.train_fold` with a recipe (`--recipe`, default 'audio', `--set` overrides).

The MFCCs are held in memory for both. The original computes them with librosa in every `__getitem__`,
which is part of its ~5 minutes per fold on this machine; here PyTorch is spared that, so the time ratio
is a lower bound on our advantage over the original as published. Wall seconds include JAX compilation.
The two runs of a fold follow each other (PyTorch first), so both see the same machine; the ratio is
reported per fold and as the median over folds.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

ORIGINAL_LR_STEPS = (40, 55, 65, 70, 200, 250)  # opts.py lr_steps; adjust_learning_rate at each epoch start


def original_learning_rate(epoch: int, base: float = 0.06) -> float:
  """The original's `adjust_learning_rate(optimizer, epoch, opt)` for epochs counted from 1."""
  return base * 0.1 ** int(sum(epoch >= s for s in ORIGINAL_LR_STEPS))


def train_fold_torch(parts, epochs: int = 100, seed: int = 1, batch_size: int = 8, learning_rate: float = 0.06):
  """The original's audio-only training on one fold's {'train','validation','test'} arrays (raw MFCCs)."""
  import torch

  from avtca_jax import audio_recipe
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

  def predict(x):
    model.eval()
    with torch.no_grad():
      return torch.cat([model(x[i:i + 64]) for i in range(0, len(x), 64)]).argmax(-1).numpy()

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
    accuracy = 100.0 * float(np.mean(predict(tensors["validation"][0]) == parts["validation"]["label"]))
    history.append(accuracy)
    if accuracy > best_accuracy:  # the original saves the model on a strictly better validation accuracy
      best_accuracy, best_epoch = accuracy, epoch
      best_state = {k: v.clone() for k, v in model.state_dict().items()}
  model.load_state_dict(best_state)
  result = {"best_epoch": best_epoch, "validation_history": history}
  for split in ("validation", "test"):
    result[split] = audio_recipe.classification_metrics(parts[split]["label"], predict(tensors[split][0]))
  result["seconds"] = time.perf_counter() - start
  return result


def measure(folds=(1, 2, 3, 4, 5), epochs: int = 100, seed: int = 1, recipe: str = "audio", overrides=None,
            audio_dir=None) -> dict:
  import torch  # before TensorFlow/JAX threads start, as in benchmarks.audio_step

  from avtca_jax import audio_data, audio_recipe

  data = audio_data.load_ravdess_audio(audio_dir or audio_recipe.DEFAULT_AUDIO_DIR)
  config = audio_recipe.make_config(recipe, **(overrides or {}))
  rows = []
  for k in folds:
    protocol = f"fold{k}"
    parts = audio_data.split_by_protocol(data, protocol)
    parts = {name: {"mfcc": p["mfcc"], "label": p["label"]} for name, p in parts.items()}
    original = train_fold_torch(parts, epochs=epochs, seed=seed)
    ours = audio_recipe.train_fold(data, protocol, config)
    row = {"protocol": protocol, "torch": original,
           "jax": {key: ours[key] for key in ("validation", "test", "seconds", "best_epoch") if key in ours}}
    row["time_ratio"] = ours["seconds"] / original["seconds"]
    rows.append(row)
    print(f"{protocol}: original {original['test']['accuracy']:.1f}% (epoch {original['best_epoch']}) in "
          f"{original['seconds']:.0f} s | ours {ours['test']['accuracy']:.1f}% in {ours['seconds']:.0f} s "
          f"({row['time_ratio']:.3f}x)", flush=True)
  return {"folds": rows, "epochs": epochs, "seed": seed, "recipe": recipe, "config": config,
          "median_time_ratio": float(np.median([r["time_ratio"] for r in rows])),
          "machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count()},
          "versions": {"torch": torch.__version__, "jax": __import__("jax").__version__}}


def markdown(result: dict) -> str:
  rows = ["| fold | original: best epoch | original: test acc / UAR / F1 | original s | ours: test acc / UAR / F1 "
          "| ours s | time ratio |", "| --- | ---: | --- | ---: | --- | ---: | ---: |"]
  triple = lambda m: f"{m['accuracy']:.1f} / {m['uar']:.1f} / {m['macro_f1']:.1f}"
  for r in result["folds"]:
    rows.append(f"| {r['protocol']} | {r['torch']['best_epoch']} | {triple(r['torch']['test'])} | "
                f"{r['torch']['seconds']:.0f} | {triple(r['jax']['test'])} | {r['jax']['seconds']:.0f} | "
                f"{r['time_ratio']:.3f} |")
  mean = lambda f: float(np.mean([f(r) for r in result["folds"]]))
  rows.append(f"| mean | | {mean(lambda r: r['torch']['test']['accuracy']):.1f} | "
              f"{mean(lambda r: r['torch']['seconds']):.0f} | {mean(lambda r: r['jax']['test']['accuracy']):.1f} | "
              f"{mean(lambda r: r['jax']['seconds']):.0f} | median {result['median_time_ratio']:.3f} |")
  return "\n".join(rows)


def main(argv=None):
  from avtca_jax import audio_recipe

  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--folds", default="1,2,3,4,5")
  parser.add_argument("--epochs", type=int, default=100, help="the original's epochs (100)")
  parser.add_argument("--seed", type=int, default=1, help="torch.manual_seed of the original (1)")
  parser.add_argument("--recipe", default="audio", choices=sorted(audio_recipe.RECIPES))
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override our recipe")
  parser.add_argument("--audio_dir", default=None)
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  result = measure([int(k) for k in args.folds.split(",")], epochs=args.epochs, seed=args.seed,
                   recipe=args.recipe, overrides=audio_recipe.parse_overrides(args.set), audio_dir=args.audio_dir)
  print(markdown(result))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
