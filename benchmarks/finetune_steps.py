"""The first steps of a CREMA-D fine-tune from a RAVDESS checkpoint against the same steps from scratch.

    python -m benchmarks.finetune_steps --config=configs/crema_d.py:finetune --config.image_size=32 \\
        --config.batch_size=4 --config.data.protocol=paper_random --crema_d_dir=<CREMA-D folder> \\
        --pretrain_config=configs/ravdess.py:smoke --pretrain_config.data.protocol=paper_random \\
        --ravdess_dir=<RAVDESS folder> --pretrain_steps=30 --steps=20
    python -m benchmarks.finetune_steps --config=configs/crema_d.py:finetune --config.image_size=32 \\
        --config.batch_size=4 --config.data.builder_config=generated    # generated clips on both sides

Three runs of the trainer itself (`python -m avtca_jax.train`), each in its own process:
1. the pretraining: `--pretrain_config` (a RAVDESS config, default `configs/ravdess.py:smoke`, generated clips)
   for `--pretrain_steps` steps, which leaves a RAVDESS workdir with its checkpoint;
2. `--config` (the CREMA-D config, e.g. `configs/crema_d.py:finetune`) for `--steps` steps with
   `--config.init_checkpoint` set to that workdir (avtca_jax/warm_start.py: everything but the classifier);
3. the same command with `--config.init_checkpoint=` (from scratch): same seed, same batches.
Runs 2 and 3 log every step (`--config.log_every_steps=1`) and save only after the last one; the per-step
training loss and step time come from their metrics.jsonl, and what warm start left out from the fine-tune's
own log line. The step time is the median over steps 2..K (step 1 holds the compilation); logging every step
makes the host wait for each step, so it is the loop's time per step, not the bare step's.

`--ravdess_dir` / `--crema_d_dir`: real clips instead of the configs' data. The `av` tfds dataset is built from
that folder into the workdir first (`python -m data.ravdess.build` / `python -m data.crema_d.build`) and the
run reads it (`--config.data.data_dir`, `--config.data.builder_config=av`); choose a protocol whose splits hold
those clips (`--pretrain_config.data.protocol=paper_random`, `--config.data.protocol=paper_random` for a
handful of clips of one or two actors). Without them each run reads what its config names (generated clips
for the smoke variants).

The result (per-step losses of both runs, median step times, the leaves left out, each command, where the
data came from) goes to benchmarks/results/finetune_steps_<UTC time>.json (or `--out`), which
`python -m benchmarks.report` renders into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from benchmarks import processes, records

REPO = records.REPO
PRETRAIN_DEFAULT = "configs/ravdess.py:smoke"
# The line steps.create_train_state logs when it starts from `init_checkpoint`.
INIT_LINE = re.compile(r"initialised from (?P<path>\S+?)(?:; left out \(shapes differ, freshly initialised\): "
                       r"(?P<left_out>.*))?$")
STEPS_LINE = re.compile(r"(?P<steps>\d+) steps \((?P<per_epoch>\d+) per epoch\), batch (?P<batch>\d+)")


# ---- Command lines -------------------------------------------------------------------------------------


def trainer_config_args(argv: Sequence[str], flag: str = "config") -> List[str]:
  """The trainer's `--config` arguments that `--FLAG` and `--FLAG.x=y` give on this command line (`--config`
  first), e.g. flag='pretrain_config' turns `--pretrain_config.data.protocol=paper_random` into
  `--config.data.protocol=paper_random`."""
  if flag == "config":
    return records.config_args(argv)
  renamed = []
  for arg in argv:
    if arg.startswith(f"--{flag}"):
      renamed.append("--config" + arg[len(flag) + 2:])
    elif arg.startswith("--config"):
      renamed.append("--ignored" + arg[len("--config"):])  # the CREMA-D config's: not this run's
    else:
      renamed.append(arg)
  return records.config_args(renamed)


def without_paths(text: str, names: Dict[str, str]) -> str:
  """`text` with this machine's folders replaced by their names (DIR, RAVDESS_DIR, ...), longest first."""
  for path, name in sorted(names.items(), key=lambda item: -len(item[0])):
    text = text.replace(path, name)
  return text


def shown(args: Sequence[str], names: Dict[str, str]) -> str:
  """A trainer command as the record shows it (`without_paths`)."""
  return without_paths(" ".join(["python -m avtca_jax.train", *args]), names)


# ---- What a run left behind ----------------------------------------------------------------------------


def read_metrics(workdir) -> List[dict]:
  """The training records of a run's metrics.jsonl (those with a training loss), in step order."""
  path = Path(workdir) / "metrics.jsonl"
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return sorted((r for r in rows if "train/loss" in r), key=lambda r: r["step"])


def per_step(rows: Sequence[dict]) -> dict:
  """Per-step loss, accuracy and step time of a run logged every step; the median step time over steps
  2..K (the first step's time holds the compilation)."""
  steps = [int(r["step"]) for r in rows]
  if steps != list(range(1, len(steps) + 1)):
    raise ValueError(f"expected one training record per step from step 1, got steps {steps}: run with "
                     "--config.log_every_steps=1")
  times = [float(r["train/step_time"]) for r in rows]
  return {"loss": [float(r["train/loss"]) for r in rows], "accuracy": [float(r["train/accuracy"]) for r in rows],
          "step_time_s": times, "first_step_s": times[0],
          "median_step_s": statistics.median(times[1:]) if len(times) > 1 else None}


def warm_start_report(log: str) -> Optional[dict]:
  """What the trainer logged about `init_checkpoint`: {'line', 'left_out': [leaf: shapes, ...]}, or None when
  it logged nothing (a run from scratch)."""
  for line in log.splitlines():
    found = INIT_LINE.search(line.strip())
    if found:
      left = found.group("left_out")
      return {"line": line.strip()[found.start():], "left_out": left.split("; ") if left else []}
  return None


def loop_shape(log: str) -> Optional[dict]:
  """Steps, steps per epoch and batch from the trainer's start-up line."""
  found = STEPS_LINE.search(log)
  return {k: int(v) for k, v in found.groupdict().items()} if found else None


# ---- Runs ----------------------------------------------------------------------------------------------


def _train(args: Sequence[str], workdir: Path) -> dict:
  """One trainer process; returns its log (stderr + stdout), wall time and peak RSS."""
  cmd = [sys.executable, "-m", "avtca_jax.train", *args, f"--workdir={workdir}"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  finished = processes.run(cmd, cwd=REPO, env=env)
  return {"log": (finished.stderr or "") + (finished.stdout or ""), "wall_s": finished.wall_s,
          "peak_rss_mb": finished.peak_rss_mb}


def _build(module: str, manual_dir: str, data_dir: Path) -> None:
  """Builds the dataset's `av` config from `manual_dir` into `data_dir` (its preprocessing cache included)."""
  extra = ["data/ravdess"] if module == "data.ravdess.build" else []
  processes.run([sys.executable, "-m", module, *extra, "--config", "av", "--manual_dir", manual_dir,
                 "--data_dir", str(data_dir)], cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def describe_data(config) -> str:
  """Where a config's clips come from, in words."""
  data = config.data
  if data.source != "tfds":
    return f"data source {data.source}"
  name = f"{data.name}/{data.builder_config}" if data.builder_config else data.name
  return name + (" (generated clips, avtca_jax/synthetic.py)" if data.builder_config == "generated" else "")


SAME_GENERATOR = ("Both datasets are generated by one generator (avtca_jax/synthetic.py), whose class k has the same "
                  "look and tone in both, so features learned on RAVDESS's class k serve CREMA-D's class k: this "
                  "shows warm start carrying learned features over, not a transfer between the real datasets.")


def measure(config_args: Sequence[str], pretrain_args: Sequence[str], *, pretrain_steps: int, steps: int,
            workdir: Path, ravdess_dir: str = "", crema_d_dir: str = "",
            data: Optional[Dict[str, str]] = None) -> dict:
  """The three runs (pretrain, fine-tune, scratch) and what each left behind. `data` describes the configs'
  own data ({'pretrain', 'crema_d'}); a real folder replaces its description."""
  tfds_dir = workdir / "tfds"
  names = {str(workdir): "DIR"}
  data = dict(data or {"pretrain": "the pretrain config's own data", "crema_d": "the config's own data"})
  builds = []
  if ravdess_dir:
    _build("data.ravdess.build", ravdess_dir, tfds_dir)
    pretrain_args = [*pretrain_args, f"--config.data.data_dir={tfds_dir}", "--config.data.builder_config=av"]
    names[ravdess_dir] = "RAVDESS_DIR"
    data["pretrain"] = "real RAVDESS clips: ravdess/av built from RAVDESS_DIR"
    builds.append(f"python -m data.ravdess.build data/ravdess --config av --manual_dir RAVDESS_DIR --data_dir DIR/tfds")
  if crema_d_dir:
    _build("data.crema_d.build", crema_d_dir, tfds_dir)
    config_args = [*config_args, f"--config.data.data_dir={tfds_dir}", "--config.data.builder_config=av"]
    names[crema_d_dir] = "CREMA_D_DIR"
    data["crema_d"] = "real CREMA-D clips: crema_d/av built from CREMA_D_DIR"
    builds.append("python -m data.crema_d.build --config av --manual_dir CREMA_D_DIR --data_dir DIR/tfds")
  quiet = ["--config.evaluate_test=False", "--config.progress_bar=False"]
  pretrain_dir, finetune_dir, scratch_dir = workdir / "ravdess", workdir / "finetune", workdir / "scratch"
  pretrain = [*pretrain_args, f"--config.num_train_steps={pretrain_steps}", *quiet]
  first_steps = [*config_args, f"--config.num_train_steps={steps}", "--config.log_every_steps=1",
                 f"--config.checkpoint_every_steps={steps}", *quiet]
  finetune = [*first_steps, f"--config.init_checkpoint={pretrain_dir}"]
  scratch = [*first_steps, "--config.init_checkpoint="]

  result = {"builds": builds, "data": data, "pretrain_steps": pretrain_steps, "steps": steps}
  for name, args, run_dir in (("pretrain", pretrain, pretrain_dir), ("finetune", finetune, finetune_dir),
                              ("scratch", scratch, scratch_dir)):
    ran = _train(args, run_dir)
    rows = read_metrics(run_dir)
    entry = {"command": shown([*args, f"--workdir={run_dir}"], names), "wall_s": ran["wall_s"],
             "peak_rss_mb": ran["peak_rss_mb"], "loop": loop_shape(ran["log"]),
             "load_average": [round(x, 2) for x in os.getloadavg()]}
    if name == "pretrain":
      entry["final_loss"] = rows[-1]["train/loss"] if rows else None
      entry["final_accuracy"] = rows[-1]["train/accuracy"] if rows else None
    else:
      entry.update(per_step(rows))
      entry["warm_start"] = warm_start_report(ran["log"])
      if entry["warm_start"]:
        entry["warm_start"]["line"] = without_paths(entry["warm_start"]["line"], names)
    result[name] = entry
  if not result["finetune"]["warm_start"]:
    raise RuntimeError("the fine-tune run logged no 'initialised from' line: was init_checkpoint applied?")
  result["left_out"] = result["finetune"]["warm_start"]["left_out"]
  return result


# ---- The record ----------------------------------------------------------------------------------------


def markdown(result: dict) -> str:
  """Per-step losses side by side, then the step times, what was left out, the data and the commands."""
  ft, sc, pre = result["finetune"], result["scratch"], result["pretrain"]
  lines = ["| step | loss, from the RAVDESS checkpoint | loss, from scratch | accuracy, checkpoint / scratch |",
           "| --- | --- | --- | --- |"]
  for i, (a, b) in enumerate(zip(ft["loss"], sc["loss"])):
    lines.append(f"| {i + 1} | {a:.4f} | {b:.4f} | {ft['accuracy'][i]:.2f} / {sc['accuracy'][i]:.2f} |")
  k = len(ft["loss"])
  mean = lambda xs: sum(xs) / len(xs)
  half = slice(k // 2, k)
  config = result.get("config", {})
  shape = ft.get("loop") or {}
  device_cache = config.get("data", {}).get("device_cache", False)
  notes = [
      f"Mean loss over steps {k // 2 + 1}-{k}: {mean(ft['loss'][half]):.4f} from the checkpoint, "
      f"{mean(sc['loss'][half]):.4f} from scratch.",
      f"Step time (median of steps 2-{k}, logging every step): {ft['median_step_s']:.3f} s from the checkpoint, "
      f"{sc['median_step_s']:.3f} s from scratch; first step (compilation included) {ft['first_step_s']:.1f} s and "
      f"{sc['first_step_s']:.1f} s"
      + (f"; load average {ft['load_average'][0]} and {sc['load_average'][0]} after the runs" if "load_average" in ft
         else "")
      + (". Each step begins an epoch, whose input pipeline starts inside the step's time"
         if shape.get("per_epoch") == 1 and not device_cache else "") + ".",
      f"Left out by warm start (freshly initialised): {'; '.join(result['left_out']) or 'nothing'}.",
      f"CREMA-D runs: {config.get('variant', '?')} at {config.get('image_size', '?')} px, batch "
      f"{config.get('batch_size', '?')}"
      + (f" ({shape['per_epoch']} step(s) per epoch)" if shape else "")
      + (", training split on the device (`data.device_cache`)" if device_cache else "")
      + f", learning rate {config.get('learning_rate', '?')}, modality dropout {config.get('modality_dropout', '?')}, "
      f"seed {config.get('seed', '?')}; data: {result['data']['crema_d']}.",
      f"RAVDESS checkpoint: {result.get('pretrain_config', {}).get('variant', '?')} at "
      f"{result.get('pretrain_config', {}).get('image_size', '?')} px, batch "
      f"{result.get('pretrain_config', {}).get('batch_size', '?')}, for {result['pretrain_steps']} steps"
      + (f" ({pre['loop']['per_epoch']} per epoch)" if pre.get("loop") else "") + ", final "
      f"training loss {pre['final_loss']:.4f}; data: {result['data']['pretrain']}.",
  ]
  if "generated" in result["data"]["pretrain"] and "generated" in result["data"]["crema_d"]:
    notes.append(SAME_GENERATOR)
  commands = result["builds"] + [pre["command"], ft["command"], sc["command"]]
  return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n\nThe runs:\n\n" + "\n".join(
      f"    {c}" for c in commands)


def define_flags():
  """The trainer's `--config` (the CREMA-D run), the pretraining's config and how many steps of each."""
  from absl import flags
  from ml_collections import config_flags
  records.define_config_flag()
  config_flags.DEFINE_config_file("pretrain_config", PRETRAIN_DEFAULT, "The RAVDESS run whose checkpoint the "
                                  "fine-tune starts from, and its --pretrain_config.x=y overrides.",
                                  lock_config=True)
  flags.DEFINE_integer("pretrain_steps", 30, "Training steps of the RAVDESS run.")
  flags.DEFINE_integer("steps", 20, "First CREMA-D steps to compare (K).")
  flags.DEFINE_string("ravdess_dir", "", "Real RAVDESS clips: build ravdess/av from this folder and pretrain on it.")
  flags.DEFINE_string("crema_d_dir", "", "Real CREMA-D clips: build crema_d/av from this folder and train on it.")
  flags.DEFINE_string("workdir", None, "Scratch folder for the runs (default: a temporary folder, removed).")
  flags.DEFINE_string("out", None, "JSON result (default: benchmarks/results/finetune_steps_<UTC time>.json).")


def main(argv):
  del argv  # the command line is sys.argv (records.stamp); absl leaves only the program name here
  from absl import flags
  FLAGS = flags.FLAGS
  config = records.require_config(FLAGS.config, "--config=configs/crema_d.py:finetune --config.image_size=32")
  pretrain_config = records.require_config(FLAGS.pretrain_config, f"--pretrain_config={PRETRAIN_DEFAULT}")
  if FLAGS.steps < 2:
    sys.exit("error: --steps must be at least 2 (the first step's time holds the compilation)")
  argv = sys.argv[1:]
  pretrain_args = trainer_config_args(argv, "pretrain_config") or [f"--config={PRETRAIN_DEFAULT}"]
  if not pretrain_args[0].startswith("--config="):
    pretrain_args.insert(0, f"--config={PRETRAIN_DEFAULT}")  # overrides of the default pretrain config
  workdir = Path(FLAGS.workdir or tempfile.mkdtemp(prefix="avtca_finetune_steps_")).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  result = {**records.stamp("benchmarks.finetune_steps"), "config": config.to_dict(),
            "pretrain_config": pretrain_config.to_dict()}
  try:
    result.update(measure(trainer_config_args(argv), pretrain_args, pretrain_steps=FLAGS.pretrain_steps,
                          steps=FLAGS.steps, workdir=workdir, ravdess_dir=os.path.abspath(FLAGS.ravdess_dir)
                          if FLAGS.ravdess_dir else "", crema_d_dir=os.path.abspath(FLAGS.crema_d_dir)
                          if FLAGS.crema_d_dir else "",
                          data={"pretrain": describe_data(pretrain_config), "crema_d": describe_data(config)}))
  except processes.WorkerFailed as failure:
    sys.exit(f"error: {failure.message}")
  finally:
    if not FLAGS.workdir:
      shutil.rmtree(workdir, ignore_errors=True)
  print(markdown(result))
  out = records.write_json(FLAGS.out or records.default_output("finetune_steps"), result)
  print(f"wrote {out}")


if __name__ == "__main__":
  from absl import app
  from avtca_jax import console
  define_flags()
  app.run(main, flags_parser=console.parse_flags)
