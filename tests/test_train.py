"""The trainer: end to end on 2 simulated devices, data parallelism, multi-process, resume, SIGTERM, NaN stop,
and the bad-input messages.

Training runs in subprocesses (`python -m avtca_jax.train`), because the number of simulated CPU devices
(XLA_FLAGS) is fixed when jax is imported. Most runs use the audio model on in-memory synthetic data: it
compiles in seconds, and the properties tested (sharding, checkpoints, resume) do not depend on the model.
One run trains the full AVT-CA model. A persistent compilation cache shared by the subprocesses keeps
repeated compilations of the same program cheap.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from config_overrides import ravdess_config

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ["--config.model=audio", "--config.data.source=synthetic", "--config.evaluate_test=False"]


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


def _env(devices: int, cache: str | None):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
  if cache:
    env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  return env


def _command(workdir, *overrides, variant="smoke"):
  return [sys.executable, "-m", "avtca_jax.train", f"--config=configs/ravdess.py:{variant}",
          f"--workdir={workdir}", *overrides]


def train(workdir, *overrides, devices=1, cache=None, timeout=400, check=True):
  result = subprocess.run(_command(workdir, *overrides), cwd=ROOT, env=_env(devices, cache), timeout=timeout,
                          capture_output=True, text=True)
  if check and result.returncode != 0:
    raise AssertionError(f"training failed ({result.returncode}):\n{result.stderr[-4000:]}")
  return result


def start(workdir, *overrides, devices=1, cache=None):
  return subprocess.Popen(_command(workdir, *overrides), cwd=ROOT, env=_env(devices, cache),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def final_state(workdir):
  from avtca_jax import checkpointing
  return checkpointing.restore_numpy(checkpointing.checkpoint_dir(workdir))


def log(workdir):
  from avtca_jax.metric_writers import read_jsonl
  return read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def checkpoint_steps(workdir):
  root = Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []


def assert_trees_equal(a, b, exact=True, atol=0.0, rtol=0.0):
  import jax
  flat_a, tree_a = jax.tree.flatten_with_path(a)[0], jax.tree.structure(a)
  flat_b, tree_b = jax.tree.flatten_with_path(b)[0], jax.tree.structure(b)
  assert tree_a == tree_b
  for (path, x), (_, y) in zip(flat_a, flat_b):
    if exact:
      np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    else:
      np.testing.assert_allclose(x, y, atol=atol, rtol=rtol, err_msg=jax.tree_util.keystr(path))


FLOAT32_UNIT_ROUNDOFF = 2.0 ** -24


def initial_state(workdir):
  """The state a run of `workdir` starts from (its stored config, the trainer's own initialisation)."""
  import jax
  from avtca_jax import checkpoint_kinds, steps as steps_lib
  config = checkpoint_kinds.load_config(str(workdir))
  state = jax.device_get(steps_lib.build(config, steps_lib.create_mesh()).initial_state())
  return {"params": state.params, "batch_stats": state.batch_stats}


def rounding_tolerance(steps: int, reduction_length: int) -> float:
  """The relative tolerance of two float32 trainings that sum in different orders, derived, not measured.

  One step: a gradient entry (or batch statistic) is a float32 sum of at most `reduction_length` terms, so
  two summation orders may give results `reduction_length * u` apart relative to the terms (u = 2**-24).
  Over `steps` steps these differences add up, and each one also reaches every later step (the momentum
  buffer and the changed activations carry it): at most `steps` carriers of at most `steps` differences.
  So, per leaf, |a - b| <= steps**2 * reduction_length * u * S, where S is the leaf's largest change from
  its initial value over the run: the size of what the updates (or statistics) summed to, standing for
  the size of the summed terms. Adding an update
  to a value rounds once per step, which `assert_trees_within_rounding` adds: steps * u * max |value|.
  """
  return steps ** 2 * reduction_length * FLOAT32_UNIT_ROUNDOFF


def assert_trees_within_rounding(a, b, initial, steps: int, reduction_length: int):
  """Per leaf: max |a - b| <= rounding_tolerance(steps, reduction_length) * max |b - initial|
  + steps * u * max |b|."""
  import jax
  relative = rounding_tolerance(steps, reduction_length)
  flat_a, flat_b = jax.tree.leaves_with_path(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b) == jax.tree.structure(initial)
  for (path, x), y, y0 in zip(flat_a, flat_b, jax.tree.leaves(initial)):
    x, y, y0 = (np.asarray(v, np.float64) for v in (x, y, y0))
    scale = np.max(np.abs(y - y0))
    tolerance = relative * scale + steps * FLOAT32_UNIT_ROUNDOFF * np.max(np.abs(y))
    difference = np.max(np.abs(x - y))
    assert difference <= tolerance, (
        f"{jax.tree_util.keystr(path)}: max |a - b| = {difference:.3g} > {tolerance:.3g} ({relative:.3g} x "
        f"{scale:.3g}, the leaf's change over the run, + rounding of the values)")


def wait_for(predicate, process, timeout=300.0):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    if process.poll() is not None:
      raise AssertionError(f"training ended early ({process.returncode}): {process.stderr.read()[-3000:]}")
    time.sleep(0.05)
  raise AssertionError("timed out")


# ---- Smoke: the full model, end to end, on 2 devices -----------------------------------------------------


def test_smoke_full_model_two_devices_loss_decreases(tmp_path, compile_cache):
  workdir = tmp_path / "smoke"
  train(workdir, "--config.data.source=synthetic", "--config.num_train_steps=8", "--config.batch_size=8",
        "--config.learning_rate=0.2", "--config.data.num_examples=64", "--config.checkpoint_every_steps=4",
        devices=2, cache=compile_cache)
  records = [r for r in log(workdir) if "train/loss" in r]
  losses = [r["train/loss"] for r in records]
  assert all(np.isfinite(losses)) and records[-1]["step"] == 8
  assert losses[-1] < losses[0] - 0.1, losses
  assert checkpoint_steps(workdir) == [4, 8]
  validation = [r for r in log(workdir) if "validation/accuracy" in r]
  assert validation and 0.0 <= validation[-1]["validation/accuracy"] <= 1.0
  assert (workdir / "tensorboard").is_dir() and list((workdir / "tensorboard").iterdir())
  state = final_state(workdir)
  assert int(state["step"]) == 8 and "visual_backbone" in state["params"]


def test_train_on_validation_trains_on_both_splits_and_tests_the_final_parameters(tmp_path, compile_cache):
  """config.data.train_on_validation: one epoch is (train + validation) / batch steps, nothing is selected
  on validation, and the test metrics are those of the final parameters."""
  workdir = tmp_path / "tov"
  train(workdir, "--config.model=audio", "--config.data.source=synthetic", "--config.data.num_examples=64",
        "--config.data.train_on_validation=True", "--config.num_train_steps=0", "--config.num_epochs=1",
        "--config.batch_size=8", cache=compile_cache)
  assert int(final_state(workdir)["step"]) == 10  # (64 + 16) / 8; without the validation clips: 8
  assert not [r for r in log(workdir) if "validation/accuracy" in r]
  test = json.loads((workdir / "test_metrics.json").read_text())
  assert test["checkpoint_step"] == 10 and 0.0 <= test["accuracy"] <= 1.0


# ---- Data parallelism ------------------------------------------------------------------------------------

DP = AUDIO + ["--config.num_train_steps=6", "--config.batch_size=8", "--config.batch_norm=global",
              "--config.checkpoint_every_steps=6", "--config.learning_rate=0.1"]


@pytest.fixture(scope="module")
def two_device_state(tmp_path_factory, compile_cache):
  workdir = tmp_path_factory.mktemp("dp2")
  train(workdir, *DP, devices=2, cache=compile_cache)
  return final_state(workdir)


# The longest float32 reduction of a DP step: a gradient entry of the first convolution and a batch
# statistic of its batch norm sum over the global batch of 8 clips x 156 MFCC frames.
DP_STEPS, DP_REDUCTION = 6, 8 * 156


def test_one_and_two_devices_give_the_same_parameters(tmp_path, two_device_state, compile_cache):
  """A derived float32 tolerance, not exact equality: one device sums each gradient over 8 clips, two
  devices sum over 4 and then average, another summation order (`rounding_tolerance`: 6 steps, 1248-term
  reductions, 2.7e-3 of each leaf's change over the run). A wrong gradient reduction (the sum over the two
  devices instead of the mean) doubles every update, so it is off by about the leaf's whole change S:
  1 / 2.7e-3, about 370 times the tolerance."""
  train(tmp_path / "dp1", *DP, devices=1, cache=compile_cache)
  one = final_state(tmp_path / "dp1")
  initial = initial_state(tmp_path / "dp1")
  for key in ("params", "batch_stats"):
    assert_trees_within_rounding(one[key], two_device_state[key], initial[key], DP_STEPS, DP_REDUCTION)


def test_device_cache_gives_the_same_parameters_as_the_host_input(tmp_path, two_device_state, compile_cache):
  """config.data.device_cache: the split on the devices, batches gathered there in the in-memory source's
  order (data_sources.train_indices), so the same step sees the same inputs: exactly the same result."""
  workdir = tmp_path / "device_cache"
  result = train(workdir, *DP, "--config.data.device_cache=True", "--config.data.prefetch=1", devices=2,
                 cache=compile_cache)
  assert "training split on the devices: 128 clips" in result.stderr
  state = final_state(workdir)
  assert_trees_equal(state["params"], two_device_state["params"], exact=True)
  assert_trees_equal(state["batch_stats"], two_device_state["batch_stats"], exact=True)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_give_the_same_result_as_one(tmp_path, two_device_state, compile_cache):
  workdir = tmp_path / "two_processes"
  address = f"localhost:{_free_port()}"
  processes = [start(workdir, *DP, f"--config.distributed.coordinator_address={address}",
                     "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
                     devices=1, cache=compile_cache) for i in range(2)]
  for p in processes:
    try:
      p.wait(timeout=400)
    except subprocess.TimeoutExpired:
      for q in processes:
        q.kill()
      raise
  for p in processes:
    assert p.returncode == 0, p.stderr.read()[-4000:]
  state = final_state(workdir)
  # A derived float32 tolerance, not exact equality: each process compiles and runs its own program, whose
  # CPU kernels and gloo all-reduce sum in another order than one process's two devices do (see
  # test_one_and_two_devices_give_the_same_parameters for the bound and what a wrong reduction gives).
  initial = initial_state(workdir)
  for key in ("params", "batch_stats"):
    assert_trees_within_rounding(state[key], two_device_state[key], initial[key], DP_STEPS, DP_REDUCTION)
  assert (workdir / "metrics.jsonl").exists()  # written once, by process 0
  steps = [r["step"] for r in log(workdir) if "train/loss" in r]
  assert steps == sorted(set(steps))


# ---- Resume and preemption -------------------------------------------------------------------------------

RESUME = AUDIO + ["--config.batch_size=4", "--config.num_train_steps=500", "--config.checkpoint_every_steps=25",
                  "--config.log_every_steps=25", "--config.keep_checkpoints=3", "--config.data.num_examples=40"]


# A trainer that SIGKILLs itself right after the checkpoint of a given step is on disk: the kill lands at a
# known step whatever the machine's speed (a polling test could see the run finish first).
KILL_AT_STEP = """
import os, signal, sys
from absl import app
from avtca_jax import checkpointing, steps as steps_lib, train
save = checkpointing.Checkpoints.save
def save_then_die(self, state, meta, *args, **kwargs):
  save(self, state, meta, *args, **kwargs)
  if int(meta["step"]) == int(os.environ["KILL_AT_STEP"]):
    self.wait()
    os.kill(os.getpid(), signal.SIGKILL)
checkpointing.Checkpoints.save = save_then_die
train.define_flags()
app.run(train.main, argv=["train"] + sys.argv[1:])
"""


def test_sigkill_then_resume_gives_exactly_the_uninterrupted_parameters(tmp_path, compile_cache):
  train(tmp_path / "straight", *RESUME, cache=compile_cache)
  reference = final_state(tmp_path / "straight")

  workdir = tmp_path / "killed"
  command = [sys.executable, "-c", KILL_AT_STEP] + _command(workdir, *RESUME)[3:]
  killed = subprocess.run(command, cwd=ROOT, env=dict(_env(1, compile_cache), KILL_AT_STEP="250"), timeout=400,
                          capture_output=True, text=True)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert max(checkpoint_steps(workdir)) == 250
  result = train(workdir, *RESUME, cache=compile_cache)
  assert "resumed from step 250" in result.stderr
  resumed = final_state(workdir)
  assert int(resumed["step"]) == 500
  # Exactly: the same params, batch statistics, optimizer state and RNG as the uninterrupted run.
  assert_trees_equal(resumed, reference, exact=True)


def test_sigterm_saves_a_restorable_checkpoint_and_exits_cleanly(tmp_path, compile_cache):
  from avtca_jax import checkpointing
  workdir = tmp_path / "preempted"
  process = start(workdir, *AUDIO, "--config.batch_size=4", "--config.num_train_steps=1000000",
                  "--config.checkpoint_every_steps=100000", "--config.log_every_steps=10", cache=compile_cache)
  wait_for(lambda: (workdir / "metrics.jsonl").exists() and any(r["step"] >= 20 for r in log(workdir)), process)
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=120) == 0, process.stderr.read()[-3000:]
  steps = checkpoint_steps(workdir)
  assert len(steps) == 1 and 20 <= steps[0] < 100000
  directory = checkpointing.checkpoint_dir(workdir)
  state = checkpointing.restore_numpy(directory)
  assert int(state["step"]) == steps[0] == checkpointing.read_meta(directory)["step"]
  assert all(np.isfinite(x).all() for x in __import__("jax").tree.leaves(state["params"]))


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, compile_cache):
  # 32 steps per epoch; from the start of the 2nd epoch the learning rate is multiplied by 1e30.
  workdir = tmp_path / "nan"
  result = train(workdir, *AUDIO, "--config.batch_size=4", "--config.num_epochs=3", "--config.num_train_steps=-1",
                 "--config.data.num_examples=128", "--config.lr_boundaries_epochs=(2,)", "--config.lr_decay=1e30",
                 "--config.checkpoint_every_steps=8", "--config.log_every_steps=4", cache=compile_cache, check=False)
  assert result.returncode == 1
  assert "non-finite loss or gradient" in result.stderr and "last good checkpoint is step 32" in result.stderr
  assert max(checkpoint_steps(workdir)) == 32
  state = final_state(workdir)
  import jax
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


# ---- Bad inputs: clear messages before any compilation ---------------------------------------------------


@pytest.fixture
def no_compilation(monkeypatch):
  """Makes model initialisation and step construction fail loudly: a check that passes with this fixture
  ran before anything was compiled."""
  from avtca_jax import steps as steps_lib
  from avtca_jax.models import avtca

  def forbidden(*args, **kwargs):
    raise AssertionError("compiled before the input check")

  monkeypatch.setattr(avtca, "init_variables", forbidden)
  monkeypatch.setattr(steps_lib, "make_train_step", forbidden)
  monkeypatch.setattr(steps_lib, "abstract_variables", forbidden)


def _config(variant="smoke", **overrides):
  return ravdess_config(variant, **overrides)


def test_unknown_config_key_on_the_command_line(tmp_path):
  result = train(tmp_path / "w", "--config.learning_rat=0.1", check=False, timeout=120)
  assert result.returncode != 0 and "learning_rat" in result.stderr
  assert not (tmp_path / "w").exists()


def test_unknown_config_key_in_a_config_file(tmp_path, no_compilation):
  from avtca_jax import steps as steps_lib, train as train_lib
  config = _config(**{"data.source": "synthetic"})
  config.unlock()
  config.data.protocl = "fold2"
  with pytest.raises(steps_lib.ConfigError, match=r"data.protocl \(did you mean data.protocol\?\)"):
    train_lib.train_and_evaluate(config, str(tmp_path / "w"))


def test_batch_size_not_divisible_by_the_device_count(tmp_path):
  result = train(tmp_path / "w", *AUDIO, "--config.batch_size=3", devices=2, check=False, timeout=120)
  assert result.returncode != 0
  assert "config.batch_size=3 is not divisible by the 2 devices" in result.stderr
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_workdir_of_another_model(tmp_path, no_compilation):
  from avtca_jax import checkpointing, train as train_lib
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "model.json").write_text(json.dumps(checkpointing.model_descriptor(_config())))  # an AVT-CA run
  with pytest.raises(checkpointing.CheckpointMismatchError, match="another model .*model: workdir 'avtca' vs "
                     "config 'audio'"):
    train_lib.train_and_evaluate(_config(model="audio", **{"data.source": "synthetic"}), str(workdir))


def test_changed_learning_rate_in_an_existing_workdir_stops_before_compilation(tmp_path, no_compilation):
  """The workdir's config.json is the run's identity: another learning rate stops with a message naming the
  key (before anything compiles); logging keys may change; --resume_with_changed_config goes on."""
  from avtca_jax import checkpointing, train as train_lib
  config = _config(**{"model": "audio", "data.source": "synthetic", "learning_rate": 0.1})
  workdir = tmp_path / "w"
  workdir.mkdir()
  checkpointing.write_config(str(workdir), config)
  stored = json.loads((workdir / "fingerprint.json").read_text())
  assert stored["sha256"] == checkpointing.fingerprint(config) and "log_every_steps" not in stored["identity"]
  changed = _config(**{"model": "audio", "data.source": "synthetic", "learning_rate": 0.2})
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"another config \(learning_rate: workdir 0.1 vs config 0.2\)"):
    train_lib.train_and_evaluate(changed, str(workdir))
  other_protocol = _config(**{"model": "audio", "data.source": "synthetic", "learning_rate": 0.1,
                              "data.protocol": "fold2", "data.train_on_validation": True})
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"data.protocol: workdir 'fold1' vs config 'fold2', data.train_on_validation"):
    train_lib.train_and_evaluate(other_protocol, str(workdir))
  relogged = _config(**{"model": "audio", "data.source": "synthetic", "learning_rate": 0.1,
                        "log_every_steps": 3, "progress_bar": False})
  assert checkpointing.check_workdir(str(workdir), relogged)
  with pytest.raises(AssertionError, match="compiled before the input check"):  # past the check
    train_lib.train_and_evaluate(changed, str(workdir), allow_config_change=True)
  assert json.loads((workdir / "config.json").read_text())["learning_rate"] == 0.2
  assert json.loads((workdir / "config.previous.json").read_text())["learning_rate"] == 0.1


def test_missing_audio_folder(tmp_path, no_compilation):
  from avtca_jax import data_sources, train as train_lib
  config = _config("audio_only", **{"data.path": str(tmp_path / "nowhere")})
  with pytest.raises(data_sources.DataError, match="nowhere.* does not exist"):
    train_lib.train_and_evaluate(config, str(tmp_path / "w"))


def test_missing_tfds_dataset(tmp_path, no_compilation):
  from avtca_jax import data_sources, train as train_lib
  config = _config("fold1", **{"data.data_dir": str(tmp_path / "no_tfds")})
  with pytest.raises(data_sources.DataError, match="ravdess/av is not available.*build"):
    train_lib.train_and_evaluate(config, str(tmp_path / "w"))


# ---- Optimizer and schedule ------------------------------------------------------------------------------


def test_sgd_matches_pytorch_sgd_with_dampening_from_the_first_step():
  """torch.optim.SGD(momentum 0.9, dampening 0.9, weight_decay 1e-3) and ours on the same gradients, from
  the same start, with nothing copied between them: the same parameters after every step (PyTorch starts
  its momentum buffer at the first gradient, undamped)."""
  torch = pytest.importorskip("torch")
  import jax.numpy as jnp
  from avtca_jax import steps as steps_lib
  config = _config(**{"weight_decay": 1e-3, "momentum": 0.9, "dampening": 0.9, "optimizer": "sgd"})
  tx = steps_lib.create_optimizer(config, lambda step: 0.06)
  start = np.array([1.0, -2.0, 0.5])
  p = jnp.asarray(start, jnp.float32)
  state = tx.init(p)
  p_torch = torch.nn.Parameter(torch.tensor(start, dtype=torch.float32))
  sgd = torch.optim.SGD([p_torch], lr=0.06, momentum=0.9, dampening=0.9, weight_decay=1e-3)
  grads = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
  for i, g in enumerate(grads):
    updates, state = tx.update(jnp.asarray(g), state, p)
    p = p + updates
    p_torch.grad = torch.tensor(g)
    sgd.step()
    np.testing.assert_allclose(np.asarray(p), p_torch.detach().numpy(), rtol=1e-6, atol=1e-7,
                               err_msg=f"step {i + 1}")
  # The first step is the whole (L2-augmented) gradient times the rate, not a tenth of it.
  first = steps_lib.create_optimizer(config, lambda step: 0.06)
  updates, _ = first.update(jnp.asarray(grads[0]), first.init(jnp.asarray(start, jnp.float32)),
                            jnp.asarray(start, jnp.float32))
  np.testing.assert_allclose(np.asarray(updates), -0.06 * (grads[0] + 1e-3 * start), rtol=1e-5)


def test_multistep_schedule_follows_the_original_epochs():
  from avtca_jax import steps as steps_lib
  config = _config(**{"learning_rate": 0.06, "schedule": "multistep"})
  fn = steps_lib.create_learning_rate_fn(config, steps_per_epoch=10)
  # Epoch 40 (1-based) = steps 390..399 already uses the decayed rate, epoch 39 does not.
  assert float(fn(389)) == pytest.approx(0.06) and float(fn(390)) == pytest.approx(0.006)
  assert float(fn(545)) == pytest.approx(0.0006)
  config.warmup_epochs = 2.0
  config.schedule = "cosine"
  config.num_epochs = 10
  fn = steps_lib.create_learning_rate_fn(config, steps_per_epoch=10)
  assert float(fn(0)) == 0.0 and float(fn(10)) == pytest.approx(0.03) and float(fn(20)) == pytest.approx(0.06)
  assert float(fn(99)) < 0.001


def test_bfloat16_adamw_cosine_warmup_label_smoothing(tmp_path, compile_cache):
  """The other optimisation settings train too; params stay float32 under bfloat16 compute."""
  workdir = tmp_path / "bf16"
  train(workdir, *AUDIO, "--config.dtype=bfloat16", "--config.optimizer=adamw", "--config.learning_rate=3e-3",
        "--config.weight_decay=1e-2", "--config.schedule=cosine", "--config.warmup_epochs=0.5",
        "--config.label_smoothing=0.1", "--config.num_train_steps=40", "--config.batch_size=8",
        "--config.log_every_steps=10", cache=compile_cache)
  records = [r for r in log(workdir) if "train/loss" in r]
  assert records[0]["train/learning_rate"] < records[-2]["train/learning_rate"]  # warm-up
  assert records[-1]["train/loss"] < records[0]["train/loss"]
  import jax
  state = final_state(workdir)
  assert {x.dtype for x in jax.tree.leaves(state["params"])} == {np.dtype(np.float32)}


def test_init_checkpoint_overlays_converted_variables(tmp_path, monkeypatch):
  """A converted checkpoint holding part of the model (as an EfficientFace-only conversion holds only the
  backbone) replaces those variables in the state the run starts from; one that does not fit is refused
  with a message."""
  import jax
  import orbax.checkpoint as ocp
  from avtca_jax import steps as steps_lib, train as train_lib
  bias = np.linspace(-1, 1, 8).astype(np.float32)
  kernel = np.full((128, 8), 0.01, np.float32)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(str(tmp_path / "init"), {"params": {"classifier": {"bias": bias, "kernel": kernel}}})
  checkpointer.save(str(tmp_path / "bad"), {"params": {"classifier": {"bias": np.zeros(7, np.float32)}}})
  checkpointer.wait_until_finished()
  started = []  # the state the trainer starts from, copied before the first step (which donates it)
  initial_state = steps_lib.Steps.initial_state

  def recorded_initial_state(self):
    state = initial_state(self)
    started.append(jax.device_get(state))
    return state

  monkeypatch.setattr(steps_lib.Steps, "initial_state", recorded_initial_state)
  config = _config(model="audio", num_train_steps=1, evaluate_test=False, init_checkpoint=str(tmp_path / "init"),
                   **{"data.source": "synthetic"})
  train_lib.train_and_evaluate(config, str(tmp_path / "w"))
  assert len(started) == 1
  np.testing.assert_array_equal(started[0].params["classifier"]["bias"], bias)
  np.testing.assert_array_equal(started[0].params["classifier"]["kernel"], kernel)
  config.init_checkpoint = str(tmp_path / "bad")
  with pytest.raises(steps_lib.ConfigError,
                     match=r"(?s)does not fit the model.*classifier/bias: \(7,\) vs model \(8,\)"):
    train_lib.train_and_evaluate(config, str(tmp_path / "w2"))


def test_tfds_source_restores_the_data_position(tmp_path):
  """The tfds source's epoch e, skipping k batches, continues exactly where an unbroken epoch e would be."""
  pytest.importorskip("tensorflow_datasets")
  from ravdess_test_data import build_generated  # tests/ is on sys.path (pytest rootdir import)
  from avtca_jax import data_sources
  config = _config("default")
  config.data.name, config.data.builder_config = str(build_generated(tmp_path).data_path), ""
  source = data_sources.create_source(config)
  assert source.num_examples("train") > 0 and source.frame_shape()[0] == 15
  unbroken = [b for _, b in zip(range(4), source.train_batches(1, 0, 8, seed=0))]
  resumed = [b for _, b in zip(range(2), source.train_batches(1, 2, 8, seed=0))]
  other_epoch = next(source.train_batches(2, 0, 8, seed=0))
  for a, b in zip(unbroken[2:], resumed):
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_array_equal(a["mfcc"], b["mfcc"])
  assert not np.array_equal(unbroken[0]["mfcc"], other_epoch["mfcc"])
  batches = list(source.eval_batches("validation", 24))
  assert sum(int(b["mask"].sum()) for b in batches) == source.num_examples("validation")
