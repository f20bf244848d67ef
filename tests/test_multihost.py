"""Multi-host runs that agree: several trainer processes on one machine (jax.distributed with a localhost
coordinator and CPU gloo collectives, one CPU device each) stand for the hosts of a pod.

- 3 processes on a tfds split whose size divides neither by 3 nor by 3 x the per-process batch: every
  process runs the same steps, one epoch, an evaluation and a checkpoint finish, and the evaluation counts
  every clip once, equal to a 1-process evaluation of the same parameters.
- The training split cached on the devices: 3 processes train the same parameters as 1 process.
- SIGTERM to one of 2 processes: both stop after the same step, STOP_LAG steps after the signalled process
  saw the signal, with one checkpoint; a restart resumes exactly (the uninterrupted run's parameters).

The model is the audio branch (it compiles in seconds); what is tested (data slicing, collectives,
checkpoints) does not depend on it.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess

import pytest

from test_train import (AUDIO, FLOAT32_UNIT_ROUNDOFF, _free_port, _command, _env, assert_trees_equal,
                        assert_trees_within_rounding, checkpoint_steps, final_state, initial_state, log,
                        rounding_tolerance, train, wait_for)

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
_LOG_NUMBERS = itertools.count()


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache_multihost"))


def start_processes(workdir, count, *overrides, cache=None):
  """`count` trainer processes of one run; stderr goes to files (a full pipe would block a process, and
  with it every other one in the next collective)."""
  address = f"localhost:{_free_port()}"
  workdir.parent.mkdir(parents=True, exist_ok=True)
  processes = []
  for i in range(count):
    stderr = open(workdir.parent / f"{workdir.name}_{next(_LOG_NUMBERS)}.log", "w")
    p = subprocess.Popen(
        _command(workdir, *overrides, f"--config.distributed.coordinator_address={address}",
                 f"--config.distributed.num_processes={count}", f"--config.distributed.process_id={i}"),
        cwd=ROOT, env=_env(1, cache), stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    p.log = stderr.name
    processes.append(p)
  return processes


def wait_all(processes, timeout=300):
  """Each process's (return code, stderr); kills them all if one hangs (a collective that never completes)."""
  try:
    for p in processes:
      p.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    for p in processes:
      p.kill()
    raise AssertionError("a process hung: " + "\n---\n".join(open(p.log).read()[-2000:] for p in processes))
  return [(p.returncode, open(p.log).read()) for p in processes]


def run_processes(workdir, count, *overrides, cache=None):
  results = wait_all(start_processes(workdir, count, *overrides, cache=cache))
  for i, (code, stderr) in enumerate(results):
    assert code == 0, f"process {i} failed ({code}):\n{stderr[-4000:]}"
  return results


# ---- 3 processes, uneven per-process slices ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
  pytest.importorskip("tensorflow_datasets")
  from ravdess_test_data import build_generated
  return str(build_generated(tmp_path_factory.getbasetemp()).data_path)


def _tfds_overrides(dataset):
  # fold 1 of the tiny generated set: 128 training, 32 validation and 32 test clips. Global batch 6 (2 per
  # process): 128 and 32 divide neither by 3 nor by 6.
  return ["--config.model=audio", f"--config.data.name={dataset}", "--config.data.builder_config=",
          "--config.batch_size=6", "--config.num_epochs=1", "--config.num_train_steps=-1",
          "--config.log_every_steps=5", "--config.learning_rate=0.05", "--config.progress_bar=False"]


def test_host_slices_are_balanced_and_cover_every_clip_once(tiny_tfds):
  from avtca_jax import input_pipeline
  builder = input_pipeline.get_builder(tiny_tfds)
  # tfds.split_for_jax_process would give 48/48/32 (each actor's 8 clips cut 3/3/2).
  assert input_pipeline.host_split_sizes(builder, "fold1_train", 3) == [43, 43, 42]
  assert input_pipeline.host_split_sizes(builder, "fold1_validation", 3) == [11, 11, 10]
  assert input_pipeline.num_batches(tiny_tfds, "fold1_train", batch_size=6, train=True, process_count=3) == 21
  seen = []
  for i in range(3):
    ds = input_pipeline.create_dataset(tiny_tfds, "fold1_train", batch_size=6, train=False, process_index=i,
                                       process_count=3)
    seen += [m.tobytes() for b in ds.as_numpy_iterator() for m, ok in zip(b["mfcc"], b["mask"]) if ok]
  assert len(seen) == len(set(seen)) == 128


def _evaluate_one_process(dataset, directory, splits):
  """Metrics of a checkpoint evaluated in this (1-process, 1-device) pytest process."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  from configs import ravdess
  from avtca_jax import checkpointing, data_sources, evaluate as evaluate_lib, steps as steps_lib
  config = ravdess.get_config("smoke")
  config.model, config.data.name, config.data.builder_config = "audio", dataset, ""
  mesh = steps_lib.create_mesh()
  restored = checkpointing.restore_numpy(directory)
  state = jax.device_put(steps_lib.TrainState(step=restored["step"], params=restored["params"],
                                              batch_stats=restored.get("batch_stats", {}), opt_state=None, rng=None),
                         NamedSharding(mesh, P()))
  source = data_sources.create_source(config, 0, 1)
  predict_step = steps_lib.make_predict_step(config, steps_lib.create_model(config), mesh)
  return {split: evaluate_lib.evaluate_split(predict_step, state, source, split, 6, mesh, config.num_classes)
          for split in splits}


def test_three_processes_on_uneven_slices_finish_and_evaluate_every_clip_once(tmp_path, tiny_tfds, compile_cache):
  workdir = tmp_path / "three"
  overrides = _tfds_overrides(tiny_tfds)
  results = run_processes(workdir, 3, *overrides, cache=compile_cache)
  # One epoch: the shortest slice (42 clips) gives 21 steps of 2 clips per process, on every process.
  assert all("21 steps (21 per epoch)" in stderr for _, stderr in results), results[0][1][-3000:]
  assert checkpoint_steps(workdir) == [21] and int(final_state(workdir)["step"]) == 21
  validation = [r for r in log(workdir) if "validation/accuracy" in r]
  assert [r["step"] for r in validation] == [21] and validation[0]["validation/count"] == 32
  test = json.loads((workdir / "test_metrics.json").read_text())
  assert test["count"] == 32 and test["checkpoint_step"] == 21

  # The same parameters evaluated by one process: the same metrics (every clip counted once either way).
  one = _evaluate_one_process(tiny_tfds, str(workdir / "best" / "21"), ("validation", "test"))
  for key in ("accuracy", "uar", "macro_f1", "count"):
    assert one["validation"][key] == pytest.approx(validation[0][f"validation/{key}"], abs=1e-6), key
    assert one["test"][key] == pytest.approx(test[key], abs=1e-6), key
  assert one["validation"]["loss"] == pytest.approx(validation[0]["validation/loss"], rel=1e-5)


class _Either:
  """`wait_for`'s view of a group of processes: ended when any of them ended."""

  def __init__(self, processes):
    self.processes = processes

  def poll(self):
    ended = [p for p in self.processes if p.poll() is not None]
    if ended:
      self.returncode, self.stderr = ended[0].returncode, open(ended[0].log)
      return self.returncode
    return None


def test_device_cache_on_three_processes_trains_like_one_process(tmp_path, tiny_tfds, compile_cache):
  """With the training split on the devices the batch order does not depend on the process count (every
  process draws the same global indices), so 3 processes train what 1 process trains: 128 // 6 = 21 steps,
  the same parameters up to the float order of the gloo reductions."""
  overrides = _tfds_overrides(tiny_tfds) + ["--config.data.device_cache=True", "--config.batch_norm=global",
                                            "--config.evaluate_test=False"]
  run_processes(tmp_path / "three", 3, *overrides, cache=compile_cache)
  result = train(tmp_path / "one", *overrides, cache=compile_cache)
  assert "training split on the devices: 128 clips" in result.stderr
  three, one = final_state(tmp_path / "three"), final_state(tmp_path / "one")
  assert int(three["step"]) == int(one["step"]) == 21
  # Same batches, so the same losses and parameters up to float32 summation order: tolerances derived from
  # it (`rounding_tolerance`: the longest reduction sums 6 clips x 156 MFCC frames), not exact equality,
  # since 3 processes sum each gradient over 2 clips, then over the processes with gloo. A logged loss after
  # `step` steps may differ by that many steps' rounding of the loss's change since the first log step, plus
  # the rounding of the loss itself.
  reduction = 6 * 156
  losses = [{r["step"]: r["train/loss"] for r in log(tmp_path / run) if "train/loss" in r} for run in ("three", "one")]
  assert losses[0].keys() == losses[1].keys() and len(losses[0]) == 6
  first = losses[1][min(losses[1])]
  for step, loss in losses[0].items():
    want = losses[1][step]
    tolerance = (rounding_tolerance(step, reduction) * abs(want - first)
                 + step * reduction * FLOAT32_UNIT_ROUNDOFF * abs(want))
    assert abs(loss - want) <= tolerance, (step, loss, want, tolerance)
  initial = initial_state(tmp_path / "one")
  assert_trees_within_rounding(three["params"], one["params"], initial["params"], 21, reduction)


# ---- SIGTERM to one process -------------------------------------------------------------------------------

PREEMPT = AUDIO + ["--config.batch_size=4", "--config.num_train_steps=40", "--config.checkpoint_every_steps=100000",
                   "--config.log_every_steps=5", "--config.data.num_examples=40", "--config.batch_norm=global"]


def test_sigterm_to_one_process_stops_all_at_the_same_step_and_resumes_exactly(tmp_path, compile_cache):
  from avtca_jax import checkpointing, train as train_lib
  run_processes(tmp_path / "straight", 2, *PREEMPT, cache=compile_cache)
  reference = final_state(tmp_path / "straight")

  workdir = tmp_path / "preempted"
  processes = start_processes(workdir, 2, *PREEMPT, cache=compile_cache)
  wait_for(lambda: (workdir / "metrics.jsonl").exists() and any(r["step"] >= 10 for r in log(workdir)),
           _Either(processes))
  processes[1].send_signal(signal.SIGTERM)  # the non-coordinator process only
  results = wait_all(processes)
  assert [code for code, _ in results] == [0, 0], results[1][1][-3000:]
  stopped = [int(re.search(r"stopped at step (\d+) after SIGTERM", stderr).group(1)) for _, stderr in results]
  signalled = int(re.search(r"SIGTERM before step (\d+)", results[1][1]).group(1))
  assert "SIGTERM before step" not in results[0][1]
  # Both stop after the same step, STOP_LAG steps after the first step that carried the signal.
  assert stopped[0] == stopped[1] == signalled + train_lib.STOP_LAG < 40
  assert checkpoint_steps(workdir) == [stopped[0]]
  directory = checkpointing.checkpoint_dir(workdir)
  assert int(checkpointing.restore_numpy(directory)["step"]) == checkpointing.read_meta(directory)["step"] == stopped[0]

  results = run_processes(workdir, 2, *PREEMPT, cache=compile_cache)
  assert all(f"resumed from step {stopped[0]}" in stderr for _, stderr in results)
  resumed = final_state(workdir)
  assert int(resumed["step"]) == 40
  assert_trees_equal(resumed, reference, exact=True)
