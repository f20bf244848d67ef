"""The benchmark suite's machinery in its reduced (CI) mode: fields present and sane, not speed; and how a
dead worker is reported."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import processes, run

REPO = Path(__file__).resolve().parents[1]

STEP_FIELDS = {"framework", "device", "compile_s", "step", "eval_forward", "step_flops", "step_bytes_accessed", "peaks",
               "mfu", "roofline", "step_over_roofline", "clips_per_s", "images_per_s", "peak_rss_mb", "versions"}
TRAIN_FIELDS = {"command", "variant", "batch_size", "image_size", "dtype", "remat", "num_train_steps", "intervals",
                "loop", "first_step_s", "compile_s", "wall_s", "peak_rss_mb", "step_only", "input_overhead", "markdown"}


def test_step_and_train_suites_quick_write_every_field(tmp_path):
  out = tmp_path / "results.json"
  subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite=step,train", "--quick", "--no_append",
                  f"--workdir={tmp_path}", f"--out={out}"], check=True, cwd=REPO, timeout=900)
  results = json.loads(out.read_text())
  assert {"command", "date", "machine", "versions", "step", "train"} <= set(results)
  (row,) = results["step"]
  assert row["batch_size"] == 1 and row["dtype"] == "float32"
  assert STEP_FIELDS <= set(row["jax"]), STEP_FIELDS - set(row["jax"])
  assert {"step", "eval_forward", "clips_per_s", "peak_rss_mb", "versions"} <= set(row["torch"])
  for framework in ("jax", "torch"):
    assert row[framework]["step"]["median_s"] > 0
  assert row["jax"]["step_flops"] > 1e8  # a real program was analysed (the 32 px model is ~0.4 GFLOP per clip)
  assert 0 < row["jax"]["mfu"] < 1

  train = results["train"]
  assert TRAIN_FIELDS <= set(train), TRAIN_FIELDS - set(train)
  assert train["num_train_steps"] == 6 and train["batch_size"] == 1
  assert {"steps", "num_steps", "step_s", "clips_per_s"} <= set(train["loop"])
  assert train["loop"]["num_steps"] >= 2 and train["loop"]["clips_per_s"] > 0  # steps after the compile only
  assert train["first_step_s"] > train["loop"]["step_s"] > 0
  # The step suite ran the same settings just before, so its row is the step-only figure.
  assert train["step_only"]["source"] == "step suite row"
  assert train["step_only"]["clips_per_s"] == row["jax"]["clips_per_s"]
  assert train["input_overhead"] < 1 and train["peak_rss_mb"] > 100
  assert "loop clips/s" in train["markdown"]


def test_killed_worker_says_how_it_ended():
  """A worker killed for memory gets SIGKILL and writes nothing: the suite says so, with its peak RSS."""
  kill_self = "import os, signal; x = b'x' * (50 * 2**20); os.kill(os.getpid(), signal.SIGKILL)"
  with pytest.raises(processes.WorkerFailed) as failure:
    processes.run([sys.executable, "-c", kill_self])
  message = failure.value.message
  assert failure.value.returncode == -9
  assert message.startswith("killed by SIGKILL (signal 9; likely out of memory: peak RSS ")
  assert message.endswith("GB before death)")
  assert failure.value.finished.peak_rss_mb > 50  # the child's own peak, measured after its death
  row = {"batch_size": 32, "dtype": "float32", "jax": failure.value.as_dict()}
  assert f"| 32 | float32 | - | failed: {message} |" in run._step_row_md(row)


def test_failed_worker_gives_exit_code_and_last_error_line():
  with pytest.raises(processes.WorkerFailed) as failure:
    processes.run([sys.executable, "-c", "import sys; print('noise', file=sys.stderr); sys.exit('boom: no memory')"])
  assert failure.value.message == "exit code 1: boom: no memory"
  assert processes.describe_ending(137, "").startswith("killed by SIGKILL (exit code 137 = signal 9; likely out of")


def test_audio_step_benchmark_reports_both_frameworks():
  """The audio-branch step benchmark in a tiny configuration: every field, both frameworks (not speed)."""
  from benchmarks import audio_step
  result = audio_step.measure(batch_size=2, steps=2, repeats=1, num_eval=4)
  for name in ("jax", "torch"):
    assert set(result[name]) >= {"step_ms", "clips_per_s", "steps_s", "eval_s", "compile_s"}
    assert result[name]["step_ms"] > 0 and len(result[name]["steps_s_all"]) == 1
  assert result["speedup"] > 0
  assert "JAX speed-up" in audio_step.markdown(result)


def test_audio_step_benchmark_vmapped_members():
  """--members=K: K models per JAX step (jax.vmap); per-model time and clips/s count all K models."""
  from benchmarks import audio_step
  result = audio_step.measure(batch_size=2, steps=2, repeats=1, num_eval=4, frameworks=("jax",), members=3)
  r = result["jax"]
  assert result["members"] == 3 and "speedup" not in result
  assert r["step_ms_per_model"] == pytest.approx(r["step_ms"] / 3)
  assert r["clips_per_s"] == pytest.approx(2 * 2 * 3 / r["steps_s"])
  assert "3 model(s) per JAX step" in audio_step.markdown(result)


def test_accuracy_suite_av_protocols_say_how_to_run_them(tmp_path):
  """Without the ravdess tfds dataset an AV protocol is a 'not run' row naming the dataset, the build command
  and the command that would produce its number; a finished protocol shows its test accuracy."""
  import argparse
  from benchmarks import run
  args = argparse.Namespace(workdir=str(tmp_path), data_dir=str(tmp_path / "tfds"), init_checkpoint="")
  rows = [run._av_protocol(args, *p) for p in run.AV_PROTOCOLS]
  assert [r["status"] for r in rows] == ["not run"] * 3
  assert "ravdess/av " in rows[0]["reason"] and "python -m data.ravdess.build" in rows[0]["reason"]
  assert "ravdess/av_with_video_only" in rows[1]["reason"]
  assert rows[0]["command"].startswith("python -m avtca_jax.cross_validation --config=configs/ravdess.py:fold1")
  assert "--config.data.data_dir=" in rows[2]["command"]
  (tmp_path / "tfds" / "ravdess" / "av" / "1.0.0").mkdir(parents=True)
  (tmp_path / "tfds" / "ravdess" / "av" / "1.0.0" / "dataset_info.json").write_text("{}")
  assert run._tfds_dataset_dir(args.data_dir, "av") == tmp_path / "tfds" / "ravdess" / "av" / "1.0.0"
  done = dict(rows[0], status="done", test={"accuracy": 0.8, "uar": 0.79, "macro_f1": 0.78, "accuracy_std": 0.05})
  md = run._accuracy_md("| fold | ... |", "audio", [done, rows[1]])
  assert "| av_folds | done | 80.0% ± 5.0 |" in md and "| av_original | not run | not run: tfds dataset" in md


# ---- benchmarks.audio_fold: the original's audio-only training loop vs ours, whole folds -----------------

AUDIO_DIR = REPO.parent / "shared" / "data" / "ravdess" / "audio_speech_22k"


def test_original_learning_rate_is_adjust_learning_rate():
  """x0.1 at the start of epochs 40, 55, 65, 70 (counted from 1), as the original's adjust_learning_rate."""
  from benchmarks import audio_fold
  lr = [audio_fold.original_learning_rate(e) for e in (1, 39, 40, 54, 55, 65, 70, 100)]
  assert lr == pytest.approx([0.06, 0.06, 6e-3, 6e-3, 6e-4, 6e-5, 6e-6, 6e-6])


@pytest.mark.slow
def test_audio_fold_reduced_pytorch_loop_learns_on_real_speech(tmp_path):
  """Two epochs of the original's loop on fold 1 (960 train clips): far above chance (12.5%), every field
  written, the JSON reread (a rerun skips finished runs), the same metrics function as our trainer."""
  assert AUDIO_DIR.is_dir(), f"RAVDESS speech audio not found at {AUDIO_DIR}"
  from benchmarks import audio_fold
  path = str(tmp_path / "torch.json")
  result = audio_fold.measure(["fold1"], seeds=[1], epochs=2, audio_dir=AUDIO_DIR, json_path=path)
  run = result["runs"]["fold1/seed1"]
  assert len(run["validation_history"]) == 2 and run["best_epoch"] in (1, 2)
  assert run["test"]["accuracy"] > 0.2 and run["test"]["count"] == 240, run["test"]
  assert result["tested_actors"] == [1, 2, 3, 4]
  assert "| fold1 | 1 |" in audio_fold.markdown(result)
  again = audio_fold.measure(["fold1"], seeds=[1], epochs=2, audio_dir=AUDIO_DIR, json_path=path)
  assert again["runs"]["fold1/seed1"]["seconds"] == run["seconds"]  # read back, not retrained


def test_audio_fold_compare_uses_only_runs_finished_by_all():
  from benchmarks import audio_fold
  metrics = lambda a: {"accuracy": a, "uar": a, "macro_f1": a, "loss": 1.0, "count": 240}
  torch_result = {"runs": {f"fold{k}/seed{s}": {"test": metrics(0.5 + 0.1 * k), "seconds": 100.0}
                           for k in (1, 2, 3) for s in (0, 1)}}
  ours = {"fast": {"runs": {f"fold{k}": {str(s): {"both": metrics(0.4 + 0.1 * k + 0.1 * s)} for s in (0, 1)}
                            for k in (1, 2)},
                   "seconds": {f"fold{k}": {"0": 10.0, "1": 20.0} for k in (1, 2)}}}
  text = audio_fold.compare(torch_result, ours)
  assert "Test actors: 1-8;" in text and "| fold3 |" not in text  # fold 3: PyTorch only
  assert "| fold1 | 60.0 / 60.0 / 60.0 | 55.0 / 55.0 / 55.0 |" in text
  assert "| seconds per fold (mean) | 100 | 15 |" in text
  assert "65.0 ± 7.1 (folds) ± 0.0 (seeds)" in text and "60.0 ± 7.1 (folds) ± 7.1 (seeds)" in text
  assert "| - | -5.0 points, 2 sigma = 7.1: within seed noise |" in text
  ours["fast"]["runs"]["fold1"]["1"]["both"] = metrics(0.45)  # -8.75 points against 2 sigma = 5.6
  assert "| - | -8.7 points, 2 sigma = 5.6: below the original beyond seed noise |" in audio_fold.compare(
      torch_result, ours)
  one_seed = {"fast": {"runs": {k: {"0": v["0"]} for k, v in ours["fast"]["runs"].items()},
                       "seconds": ours["fast"]["seconds"]}}
  assert "| - | -10.0 points (one seed: no seed-noise verdict) |" in audio_fold.compare(
      {"runs": {k: v for k, v in torch_result["runs"].items() if k.endswith("seed0")}}, one_seed)
  only_fold2 = audio_fold.compare(torch_result, ours, protocols=["fold2", "fold3"])  # a fold set's folds only
  assert "Test actors: 5-8;" in only_fold2 and "| fold1 |" not in only_fold2


def test_audio_fold_compare_merges_result_files(tmp_path, capsys):
  from benchmarks import audio_fold
  metrics = lambda a: {"accuracy": a, "uar": a, "macro_f1": a, "loss": 1.0, "count": 240}
  paths = []
  for k in (1, 2):  # one PyTorch result file per process, as runs split over processes write them
    paths.append(tmp_path / f"torch{k}.json")
    paths[-1].write_text(json.dumps({"runs": {f"fold{k}/seed0": {"test": metrics(0.5), "seconds": 100.0}}}))
  workdir = tmp_path / "fast"
  workdir.mkdir()
  (workdir / "cross_validation.json").write_text(json.dumps(
      {"runs": {f"fold{k}": {"0": {"both": metrics(0.6)}} for k in (1, 2, 6)},
       "seconds": {f"fold{k}": {"0": 10.0} for k in (1, 2, 6)}}))
  audio_fold.main([f"--json={paths[0]},{paths[1]}", f"--compare=fast={workdir}", "--fold_set=all24"])
  text = capsys.readouterr().out
  assert "| fold1 |" in text and "| fold2 |" in text and "| fold6 |" not in text  # fold 6: ours only
