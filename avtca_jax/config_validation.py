"""Every check of a training config, in one place: each failure is one line that names the key and says
what to change.

- `validate(config)`: on the config alone. Unknown keys (with the closest known key), every enumerated
  key against its choices (`CHOICES`), every numeric key against its range (`RANGES`), and the split
  protocol. `tests/test_config_validation.py` checks that every key of every variant has a rule here.
- `check_batch_sizes`, `check_source`: on the config against the devices and the data, once those are
  known (still before anything is compiled).
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, Tuple

import ml_collections


class ConfigError(ValueError):
  """A config that cannot run (raised before any compilation)."""


def default_config(variant: str = "default") -> ml_collections.ConfigDict:
  """A variant of configs/ravdess.py, or 'NAME:VARIANT' of configs/NAME.py (from a checkout or an installed
  wheel); `config.variant` holds this form."""
  from avtca_jax import bundled
  name, _, variant = variant.rpartition(":")
  return bundled.config_module(name or "ravdess").get_config(variant)


def _choices() -> Dict[str, Tuple[str, ...]]:
  from avtca_jax import audio_data
  from avtca_jax.models import avtca
  return {
      "model": ("avtca", "audio"), "fusion": avtca.FUSIONS, "dtype": ("float32", "bfloat16"),
      "conv_impl": ("auto", "slices", "grouped"), "batch_norm": ("per_device", "global"),
      "optimizer": ("sgd", "adam", "adamw"), "schedule": ("multistep", "cosine", "constant"),
      "channel_order": ("rgb", "bgr"), "modality_dropout": ("softhard", "noise", "none"),
      "matmul_precision": ("highest", "high", "default", "float32", "tensorfloat32", "bfloat16"),
      "hand_written_backward": ("auto", "on", "off"),
      "data.source": ("tfds", "audio_folder", "synthetic"), "data.normalize": audio_data.NORMALIZATIONS,
  }


# String keys that name things (paths, datasets, splits) rather than pick from a fixed set; data.protocol is
# checked by `splits.is_protocol`.
FREE_TEXT = ("variant", "init_checkpoint", "compilation_cache_dir", "data.name", "data.builder_config",
             "data.data_dir", "data.path", "data.protocol", "data.train_split", "data.eval_split",
             "data.test_split", "distributed.coordinator_address")

_POSITIVE = (lambda v: v > 0, "must be positive")
_NON_NEGATIVE = (lambda v: v >= 0, "must be zero or positive")
_FRACTION = (lambda v: 0 <= v <= 1, "must be between 0 and 1")
_ANY = (lambda v: True, "")

# Numeric keys: (test, what the value must be).
RANGES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "num_heads": _POSITIVE, "num_classes": (lambda v: v >= 2, "must be at least 2"),
    "num_frames": _POSITIVE, "image_size": _POSITIVE,
    "seed": _NON_NEGATIVE, "batch_size": _POSITIVE, "eval_batch_size": (_NON_NEGATIVE[0], "must be zero (the "
                                                                        "training batch size) or positive"),
    "num_epochs": _NON_NEGATIVE,  # positive when it sets the length: `_check_length`
    "num_train_steps": _ANY,  # > 0 sets the length; otherwise num_epochs does
    "learning_rate": _POSITIVE, "momentum": _FRACTION, "dampening": _FRACTION, "weight_decay": _NON_NEGATIVE,
    "label_smoothing": _FRACTION, "lr_decay": _POSITIVE, "warmup_epochs": _NON_NEGATIVE,
    "lr_boundaries_epochs": (lambda v: all(e > 0 for e in v), "every boundary must be a positive epoch"),
    "log_every_steps": _POSITIVE, "eval_every_epochs": _POSITIVE,
    "checkpoint_every_steps": (_NON_NEGATIVE[0], "must be zero (every epoch end) or positive"),
    "keep_checkpoints": _POSITIVE,
    "data.num_examples": (_NON_NEGATIVE[0], "must be zero (the source's default) or positive"),
    "data.prefetch": _NON_NEGATIVE,
    "distributed.num_processes": _POSITIVE, "distributed.process_id": _NON_NEGATIVE,
}


def flat_keys(config, prefix: str = "") -> Dict[str, Any]:
  """{'a.b': value} of a ConfigDict."""
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(flat_keys(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def _value(config, key: str):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def _check_unknown_keys(config) -> None:
  known = sorted(flat_keys(default_config(config.get("variant", "default") or "default")))
  unknown = sorted(set(flat_keys(config)) - set(known))
  if unknown:
    hints = []
    for key in unknown:
      close = difflib.get_close_matches(key, known, n=1)
      hints.append(key + (f" (did you mean {close[0]}?)" if close else ""))
    raise ConfigError(f"unknown config key(s): {', '.join(hints)}")


def _check_length(config) -> None:
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError(f"config.num_epochs={config.num_epochs}: must be positive (config.num_train_steps="
                      f"{config.num_train_steps} leaves the run's length to num_epochs)")
  dist = config.distributed
  if dist.process_id >= dist.num_processes:
    raise ConfigError(f"config.distributed.process_id={dist.process_id}: must be below "
                      f"config.distributed.num_processes={dist.num_processes}")


def validate(config) -> None:
  """ConfigError (one line, naming the key) for an unknown key or a value out of its choices or range."""
  from avtca_jax import splits
  _check_unknown_keys(config)
  for key, allowed in _choices().items():
    if _value(config, key) not in allowed:
      raise ConfigError(f"config.{key}={_value(config, key)!r}: expected one of {allowed}")
  if not splits.is_protocol(config.data.protocol):
    raise ConfigError(f"config.data.protocol={config.data.protocol!r}: expected one of {splits.PROTOCOLS} "
                      "or inner_<protocol>_<1..4>")
  for key, (test, requirement) in RANGES.items():
    value = _value(config, key)
    if not test(value):
      raise ConfigError(f"config.{key}={value!r}: {requirement}")
  _check_length(config)


def check_batch_sizes(config, num_devices: int) -> int:
  """The evaluation batch size; ConfigError when a batch does not divide over the devices."""
  if config.batch_size % num_devices:
    raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by the {num_devices} devices "
                      f"(global batch = devices x per-device batch); use a multiple of {num_devices}")
  eval_batch_size = config.eval_batch_size or config.batch_size
  if eval_batch_size % num_devices:
    raise ConfigError(f"config.eval_batch_size={eval_batch_size} is not divisible by the {num_devices} devices")
  return eval_batch_size


def check_source(config, source) -> None:
  """The model's inputs against what the data source holds."""
  if config.model == "avtca" and not source.has_frames:
    raise ConfigError("config.model='avtca' needs video frames, but this data source has audio only; "
                      "use config.model='audio'")
  if source.has_frames:
    frames, size = source.frame_shape()[0], source.frame_shape()[1]
    if frames != config.num_frames or size < config.image_size:
      raise ConfigError(f"dataset frames are {tuple(source.frame_shape())}; the config wants {config.num_frames} "
                        f"frames of {config.image_size} px (crops are resized down on the device, never up): "
                        "set config.num_frames / config.image_size")
