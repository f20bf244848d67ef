"""The benchmark suite's machinery in a tiny configuration (CI): fields present and sane, not speed; how a
dead worker is reported; and benchmarks/RESULTS.md regenerated from the JSON results."""

import json
import os
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


# The trainer's embedded default (32 px, no modality dropout) at batch 1, bare step, six in-memory steps.
TINY = ["--config=configs/ravdess.py", "--config.batch_size=1", "--config.conv_impl=grouped",
        "--config.flip_rotate=False", "--config.num_train_steps=6", "--config.log_every_steps=2",
        "--config.data.source=synthetic", "--repeats=1", "--warmup=0", "--nocompare_device_cache"]


def test_step_and_train_suites_tiny_write_every_field(tmp_path):
  out = tmp_path / "results.json"
  results_md = (REPO / "benchmarks" / "RESULTS.md").read_text()
  subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite=step,train", *TINY, f"--workdir={tmp_path}",
                  f"--out={out}"], check=True, cwd=REPO, timeout=900)
  assert (REPO / "benchmarks" / "RESULTS.md").read_text() == results_md  # JSON only: RESULTS.md is generated
  results = json.loads(out.read_text())
  assert {"command", "date", "machine", "versions", "config", "step", "train"} <= set(results)
  assert results["command"].startswith("python -m benchmarks.run --suite=step,train --config=configs/ravdess.py")
  assert results["config"]["batch_size"] == 1 and results["versions"]["jax"]
  assert "--workdir=DIR --out=FILE" in results["command"]  # this machine's paths are not recorded
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
  # The trainer ran the benchmark's own config: the same arguments, no copies of its fields.
  assert train["command"].startswith("python -m avtca_jax.train --config=configs/ravdess.py --config.batch_size=1")
  assert "--workdir=DIR" in train["command"]


def test_run_refuses_a_pytorch_comparison_with_augmentation(tmp_path):
  """The PyTorch original's step has no modality dropout or flip/rotate: comparing it with a step that has
  them is a one-line error naming the overrides, before anything runs."""
  proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite=step", "--config=configs/ravdess.py",
                         f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and "--config.flip_rotate=False" in proc.stderr.strip().splitlines()[-1]
  assert not list(tmp_path.iterdir())


def test_config_args_hand_the_same_config_to_the_trainer():
  from benchmarks import records
  argv = ["--suite=train", "--config.batch_size=4", "--config", "configs/ravdess.py:fold2", "--repeats=1",
          "--config.data.source", "synthetic"]
  assert records.config_args(argv) == ["--config=configs/ravdess.py:fold2", "--config.batch_size=4",
                                       "--config.data.source=synthetic"]
  # This machine's absolute paths are not recorded in a result's command.
  assert records.command("benchmarks.x", ["--manual_dir", "/abs/ravdess", "--workdir=/abs/w", "--json=/abs/r.json",
                                          "--out", "runs/r.json"]) == (
      "python -m benchmarks.x --manual_dir DIR --workdir=DIR --json=FILE --out runs/r.json")


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
  from benchmarks import run
  data_dir = str(tmp_path / "tfds")
  rows = [run._av_protocol(str(tmp_path), data_dir, *p) for p in run.AV_PROTOCOLS]
  assert [r["status"] for r in rows] == ["not run"] * 3
  assert "ravdess/av " in rows[0]["reason"] and "python -m data.ravdess.build" in rows[0]["reason"]
  assert "ravdess/av_with_video_only" in rows[1]["reason"]
  assert rows[0]["command"].startswith("python -m avtca_jax.cross_validation --config=configs/ravdess.py:fold1")
  assert "--config.data.data_dir=" in rows[2]["command"]
  (tmp_path / "tfds" / "ravdess" / "av" / "1.0.0").mkdir(parents=True)
  (tmp_path / "tfds" / "ravdess" / "av" / "1.0.0" / "dataset_info.json").write_text("{}")
  assert run._tfds_dataset_dir(data_dir, "av") == tmp_path / "tfds" / "ravdess" / "av" / "1.0.0"
  done = dict(rows[0], status="done", test={"accuracy": 0.8, "uar": 0.79, "macro_f1": 0.78, "accuracy_std": 0.05})
  md = run._accuracy_md("| fold | ... |", "audio", [done, rows[1]])
  assert "| av_folds | done | 80.0% ± 5.0 |" in md and "| av_original | not run | not run: tfds dataset" in md


# ---- benchmarks.audio_fold: the original's audio-only training loop vs ours, whole folds -----------------

AUDIO_DIR = Path(os.environ.get("AVTCA_RAVDESS_DIR", "")) / "audio_speech_22k"  # tests/conftest.py sets it


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


# ---- benchmarks/RESULTS.md: generated from the JSON results ---------------------------------------------


def test_results_md_is_what_the_report_generates_from_the_json(tmp_path):
  """The committed RESULTS.md is exactly what `python -m benchmarks.report` writes from the JSON results, and
  its header says so (with the command)."""
  from benchmarks import report
  committed = (REPO / "benchmarks" / "RESULTS.md").read_text()
  out = tmp_path / "RESULTS.md"
  assert report.main([f"--out={out}"]) == 0
  assert out.read_text() == committed, "benchmarks/RESULTS.md is stale: run python -m benchmarks.report"
  assert "python -m benchmarks.report" in "\n".join(committed.splitlines()[:5])
  assert report.main(["--check", f"--out={out}"]) == 0
  out.write_text(committed + "a hand edit\n")
  assert report.main(["--check", f"--out={out}"]) == 1


def test_every_result_carries_its_date_machine_versions_and_command():
  from benchmarks import report
  results = list((REPO / "benchmarks" / "results").rglob("*.json")) + list(
      (REPO / "benchmarks" / "aot_results").rglob("*.json"))
  assert len(results) > 40
  for path in results:
    result = json.loads(path.read_text())
    if not result.get("figures", True):  # a recorded section of text only (the introduction)
      continue
    for key in ("date", "machine", "versions", "command"):
      assert result.get(key), f"{path.name}: no {key}"
    assert "*Date:* " + result["date"] in report.provenance(result)


def test_report_renders_a_new_run_with_its_provenance(tmp_path):
  """A run's JSON in benchmarks/results/ becomes a dated section after the recorded ones, with its table."""
  from benchmarks import report
  results, aot_dir = tmp_path / "results", tmp_path / "aot"
  (results / "recorded").mkdir(parents=True)
  aot_dir.mkdir()
  (results / "recorded" / "010-a.json").write_text(json.dumps(
      {"order": 10, "heading": "## 1. A section", "date": "2026-11-27", "machine": "m", "versions": "v",
       "command": "python -m x", "blocks": [{"text": "Some text."},
                                           {"table": {"header": ["a", "b"], "rows": [["1", ""]]}}]}))
  step_row = {"batch_size": 8, "dtype": "float32", "jax": {"error": "killed"}, "torch": {"error": "killed"}}
  (results / "run_1.json").write_text(json.dumps(
      {"date": "2026-12-05 10:00 UTC", "machine": {"platform": "Linux", "cpus": 2}, "versions": {"jax": "0.10.2"},
       "command": "python -m benchmarks.run --suite=step --config=configs/ravdess.py", "step": [step_row]}))
  text = report.generate(results, aot_dir)
  assert text.startswith(report.HEADER)
  assert "## 1. A section\n\n*Date:* 2026-11-27. *Machine:* m. *Versions:* v. *Command:* `python -m x`." in text
  assert "| a | b |\n| --- | --- |\n| 1 | |" in text
  assert text.index("## 1. A section") < text.index("### 2026-12-05 10:00 UTC: run_1.json")
  assert ("*Date:* 2026-12-05 10:00 UTC. *Machine:* Linux, 2 CPUs. *Versions:* jax 0.10.2. *Command:* "
          "`python -m benchmarks.run --suite=step --config=configs/ravdess.py`.") in text
  assert "| 8 | float32 | - | failed: killed | failed: killed |" in text


def test_no_development_machine_path_in_the_benchmarks():
  for path in (REPO / "benchmarks").rglob("*"):
    if path.is_file() and path.suffix in (".py", ".sh", ".md", ".json") and "__pycache__" not in path.parts:
      text = path.read_text()
      for fragment in ("/work/", "/tmp/", "../shared", "/home/", "/root/"):
        assert fragment not in text, f"{path.relative_to(REPO)}: {fragment}"
