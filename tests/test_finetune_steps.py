"""benchmarks/finetune_steps.py: the trainer commands it derives, what it reads back from a run, and its section
of RESULTS.md; and benchmarks/preprocessing_speed.py's section (both without running a trainer or a model)."""

import json

import pytest

from benchmarks import finetune_steps


def test_each_run_gets_its_own_config_arguments():
  argv = ["--config=configs/crema_d.py:finetune", "--config.image_size", "32", "--steps=20",
          "--pretrain_config=configs/ravdess.py:smoke", "--pretrain_config.data.protocol=paper_random",
          "--pretrain_steps=30", "--config.batch_size=4"]
  assert finetune_steps.trainer_config_args(argv) == [
      "--config=configs/crema_d.py:finetune", "--config.image_size=32", "--config.batch_size=4"]
  assert finetune_steps.trainer_config_args(argv, "pretrain_config") == [
      "--config=configs/ravdess.py:smoke", "--config.data.protocol=paper_random"]
  # Only overrides: the benchmark puts the default pretrain config in front of them.
  assert finetune_steps.trainer_config_args(["--pretrain_config.seed=1"], "pretrain_config") == ["--config.seed=1"]


def test_commands_show_names_instead_of_this_machines_folders():
  names = {"/tmp/w": "DIR", "/data/ravdess": "RAVDESS_DIR"}
  assert (finetune_steps.shown(["--config.init_checkpoint=/tmp/w/ravdess", "--workdir=/tmp/w/finetune"], names)
          == "python -m avtca_jax.train --config.init_checkpoint=DIR/ravdess --workdir=DIR/finetune")


def test_warm_start_line_gives_the_leaves_left_out():
  log = ("I1204 22:30:01 steps.py:181] initialised from /tmp/w/ravdess; left out (shapes differ, freshly "
         "initialised): params/classifier/bias: (8,) vs model (6,); params/classifier/kernel: (128, 8) vs model "
         "(128, 6)\nI1204 22:30:02 train.py:263] 1 devices on 1 processes, 20 steps (1 per epoch), batch 4 (4 per "
         "device)\n")
  report = finetune_steps.warm_start_report(log)
  assert report["left_out"] == ["params/classifier/bias: (8,) vs model (6,)",
                                "params/classifier/kernel: (128, 8) vs model (128, 6)"]
  assert report["line"].startswith("initialised from /tmp/w/ravdess; left out")
  assert finetune_steps.warm_start_report("I... initialised from /tmp/w/ravdess\n")["left_out"] == []
  assert finetune_steps.warm_start_report("no such line") is None
  assert finetune_steps.loop_shape(log) == {"steps": 20, "per_epoch": 1, "batch": 4}


def _rows(losses, step_times):
  return [{"step": i + 1, "train/loss": loss, "train/accuracy": 0.25, "train/step_time": t}
          for i, (loss, t) in enumerate(zip(losses, step_times))]


def test_per_step_losses_and_the_median_without_the_first_step(tmp_path):
  rows = _rows([1.8, 1.7, 1.6, 1.5], [30.0, 0.2, 0.4, 0.3])
  with open(tmp_path / "metrics.jsonl", "w") as f:
    for row in rows[::-1] + [{"step": 4, "validation/accuracy": 0.5}]:  # any order; other records ignored
      f.write(json.dumps(row) + "\n")
  got = finetune_steps.per_step(finetune_steps.read_metrics(tmp_path))
  assert got["loss"] == [1.8, 1.7, 1.6, 1.5]
  assert got["first_step_s"] == 30.0 and got["median_step_s"] == 0.3
  with pytest.raises(ValueError, match="log_every_steps=1"):
    finetune_steps.per_step(rows[::2])


def _result():
  run = lambda losses: {**finetune_steps.per_step(_rows(losses, [20.0, 0.5, 0.7])),
                        "command": "python -m avtca_jax.train --workdir=DIR/x", "loop": {"per_epoch": 1}}
  return {"date": "2026-12-04 22:40 UTC", "machine": {"platform": "Linux", "cpus": 2}, "versions": {"jax": "0.10.2"},
          "command": "python -m benchmarks.finetune_steps --config=configs/crema_d.py:finetune --steps=3",
          "config": {"variant": "crema_d:finetune", "image_size": 32, "batch_size": 4, "learning_rate": 0.006,
                     "modality_dropout": "softhard", "seed": 0},
          "pretrain_config": {"variant": "smoke", "image_size": 32}, "pretrain_steps": 30, "steps": 3,
          "builds": ["python -m data.crema_d.build --config av --manual_dir CREMA_D_DIR --data_dir DIR/tfds"],
          "data": {"pretrain": "generated", "crema_d": "real CREMA-D clips"},
          "pretrain": {"command": "python -m avtca_jax.train --workdir=DIR/ravdess", "final_loss": 1.2},
          "finetune": run([1.5, 1.2, 1.0]), "scratch": run([1.8, 1.79, 1.77]),
          "left_out": ["params/classifier/bias: (8,) vs model (6,)"]}


def test_report_renders_both_benchmarks(tmp_path):
  from benchmarks import report
  results = tmp_path / "results"
  (results / "recorded").mkdir(parents=True)
  (tmp_path / "aot").mkdir()
  (results / "finetune_steps_1.json").write_text(json.dumps(_result()))
  speed = {"date": "2026-12-04 22:22 UTC", "machine": {"platform": "Linux", "cpus": 2}, "versions": {"torch": "2"},
           "command": "python -m benchmarks.preprocessing_speed --dataset=crema_d --data_dir=DIR",
           "dataset": "crema_d", "input": "6 clips", "load_average": [1.0, 1.5], "threads": 1,
           "results": {"ours": {"cpu_s_per_clip": 0.25, "wall_s_per_clip": 0.4, "faces_found": 90, "frames": 90,
                                "clips": 6, "audio_from_soundtrack": 6}}}
  (results / "preprocessing_speed_1.json").write_text(json.dumps(speed))
  text = report.generate(results, tmp_path / "aot")
  assert "| 2 | 1.2000 | 1.7900 | 0.25 / 0.25 |" in text
  assert "Step time (median of steps 2-3, logging every step): 0.600 s from the checkpoint" in text
  assert "Left out by warm start (freshly initialised): params/classifier/bias: (8,) vs model (6,)." in text
  assert "    python -m data.crema_d.build --config av --manual_dir CREMA_D_DIR --data_dir DIR/tfds" in text
  assert "| crema_d | ours | 6 | 0.25 | 4.00 | 0.40 | 90/90 | 6/6 |" in text
  assert text.index("### 2026-12-04 22:22 UTC: preprocessing_speed_1.json") < text.index(
      "### 2026-12-04 22:40 UTC: finetune_steps_1.json")


def test_generated_data_on_both_sides_is_said_to_share_one_generator():
  from avtca_jax import bundled
  config = bundled.config_module("crema_d").get_config("smoke")
  assert finetune_steps.describe_data(config) == "crema_d/generated (generated clips, avtca_jax/synthetic.py)"
  result = _result()
  assert finetune_steps.SAME_GENERATOR not in finetune_steps.markdown(result)
  result["data"] = {"pretrain": "ravdess/generated (generated clips)", "crema_d": "crema_d/generated (generated clips)"}
  assert finetune_steps.SAME_GENERATOR in finetune_steps.markdown(result)
