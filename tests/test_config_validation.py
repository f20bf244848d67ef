"""Config validation (avtca_jax.config_validation): every key of every variant has a rule, and a value out of
its range or choices is a one-line error that names the key. No training: the validator is called directly
(one command-line run checks the message and the exit code)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from avtca_jax import config_validation
from avtca_jax.config_validation import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _config(variant="smoke", **overrides):
  config = config_validation.default_config(variant)
  config.update_from_flattened_dict(overrides)
  return config


@pytest.mark.parametrize("variant", __import__("configs.ravdess", fromlist=["VARIANTS"]).VARIANTS)
def test_every_variant_is_valid_and_every_key_has_a_rule(variant):
  config = _config(variant)
  config_validation.validate(config)
  enumerated = set(config_validation._choices())
  for key, value in config_validation.flat_keys(config).items():
    if isinstance(value, bool):
      continue  # ml_collections keeps a bool a bool
    if isinstance(value, str):
      assert key in enumerated or key in config_validation.FREE_TEXT, f"{key}: no choices and not free text"
    else:
      assert key in config_validation.RANGES, f"{key}={value!r}: no range in config_validation.RANGES"


@pytest.mark.parametrize("key, value, message", [
    ("learning_rate", -1.0, "config.learning_rate=-1.0: must be positive"),
    ("learning_rate", 0.0, "config.learning_rate=0.0: must be positive"),
    ("batch_size", 0, "config.batch_size=0: must be positive"),
    ("batch_size", -8, "config.batch_size=-8: must be positive"),
    ("eval_batch_size", -1, "config.eval_batch_size=-1: must be zero"),
    ("num_epochs", -2, "config.num_epochs=-2: must be zero or positive"),
    ("eval_every_epochs", 0, "config.eval_every_epochs=0: must be positive"),
    ("log_every_steps", 0, "config.log_every_steps=0: must be positive"),
    ("checkpoint_every_steps", -1, "config.checkpoint_every_steps=-1: must be zero"),
    ("keep_checkpoints", 0, "config.keep_checkpoints=0: must be positive"),
    ("label_smoothing", 1.5, "config.label_smoothing=1.5: must be between 0 and 1"),
    ("label_smoothing", -0.1, "config.label_smoothing=-0.1: must be between 0 and 1"),
    ("momentum", 1.1, "config.momentum=1.1: must be between 0 and 1"),
    ("dampening", -0.5, "config.dampening=-0.5: must be between 0 and 1"),
    ("weight_decay", -1e-3, "config.weight_decay=-0.001: must be zero or positive"),
    ("lr_decay", 0.0, "config.lr_decay=0.0: must be positive"),
    ("warmup_epochs", -1.0, "config.warmup_epochs=-1.0: must be zero or positive"),
    ("lr_boundaries_epochs", (10, -5), "config.lr_boundaries_epochs=(10, -5): every boundary"),
    ("num_classes", 1, "config.num_classes=1: must be at least 2"),
    ("num_frames", 0, "config.num_frames=0: must be positive"),
    ("image_size", -32, "config.image_size=-32: must be positive"),
    ("num_heads", 0, "config.num_heads=0: must be positive"),
    ("seed", -1, "config.seed=-1: must be zero or positive"),
    ("data.num_examples", -4, "config.data.num_examples=-4: must be zero"),
    ("data.prefetch", -1, "config.data.prefetch=-1: must be zero or positive"),
    ("distributed.num_processes", 0, "config.distributed.num_processes=0: must be positive"),
    ("distributed.process_id", 2, "config.distributed.process_id=2: must be below"),
    ("optimizer", "sgdm", "config.optimizer='sgdm': expected one of"),
    ("schedule", "linear", "config.schedule='linear': expected one of"),
    ("conv_impl", "fast", "config.conv_impl='fast': expected one of"),
    ("data.source", "folder", "config.data.source='folder': expected one of"),
    ("data.normalize", "speaker", "config.data.normalize='speaker': expected one of"),
    ("data.protocol", "fold9", "config.data.protocol='fold9': expected one of"),
])
def test_a_value_out_of_range_is_one_line_naming_the_key(key, value, message):
  config = _config(**{key: value})
  with pytest.raises(ConfigError) as error:
    config_validation.validate(config)
  assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_num_epochs_must_be_positive_only_when_it_sets_the_length():
  config_validation.validate(_config(num_epochs=0, num_train_steps=5))
  with pytest.raises(ConfigError, match=r"^config.num_epochs=0: must be positive \(config.num_train_steps=0"):
    config_validation.validate(_config(num_epochs=0, num_train_steps=0))


def test_unknown_key_names_the_closest_known_one():
  config = _config()
  config.unlock()
  config.learning_rat = 0.1
  with pytest.raises(ConfigError, match=r"unknown config key\(s\): learning_rat \(did you mean learning_rate\?\)"):
    config_validation.validate(config)


def test_negative_learning_rate_on_the_command_line_is_refused_in_one_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
  result = subprocess.run([sys.executable, "-m", "avtca_jax.train", "--config=configs/ravdess.py:smoke",
                           "--config.learning_rate=-1", f"--workdir={tmp_path / 'w'}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == ["error: config.learning_rate=-1.0: must be positive"]
  assert not (tmp_path / "w").exists()
