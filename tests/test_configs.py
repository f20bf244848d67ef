"""configs/ravdess.py: every variant's resolved values, pinned as its difference from the default.

A run's identity (checkpointing.fingerprint) is its resolved config, so a refactoring of the configs must
leave every value, and its type (tuple or list, int or float), as it is. A change here is a change of
recipe: update the table on purpose.
"""

import pytest

from configs import ravdess

DEFAULT = {
    "model": "avtca", "fusion": "it", "num_heads": 8, "num_classes": 8, "num_frames": 15, "image_size": 32,
    "dtype": "float32", "conv_impl": "auto", "channel_order": "rgb", "batch_norm": "per_device",
    "data.source": "tfds", "data.name": "ravdess", "data.builder_config": "generated", "data.path": "",
    "data.protocol": "fold1", "data.normalize": "none", "data.device_cache": False,
    "flip_rotate": True, "modality_dropout": "none",
    "seed": 0, "batch_size": 8, "num_epochs": 8, "num_train_steps": -1, "optimizer": "sgd",
    "learning_rate": 0.1, "momentum": 0.9, "dampening": 0.9, "weight_decay": 1e-3, "schedule": "multistep",
    "lr_boundaries_epochs": (40, 55, 65, 70, 200, 250), "lr_decay": 0.1, "warmup_epochs": 0.0,
    "log_every_steps": 8, "keep_checkpoints": 2, "evaluate_test": True,
}

_REAL_DATA = {"data.builder_config": "av", "image_size": 224, "learning_rate": 0.06, "log_every_steps": 50,
              "modality_dropout": "softhard", "num_epochs": 100}
_AUDIO = {"model": "audio", "data.source": "audio_folder", "data.device_cache": True, "flip_rotate": False,
          "keep_checkpoints": 1, "learning_rate": 0.06, "log_every_steps": 60}

# Every key whose value differs from the default's, and nothing else ('variant' aside).
DIFFERENCES = {
    "default": {},
    "smoke": {"batch_size": 4, "num_train_steps": 2, "log_every_steps": 1},
    "fold1": _REAL_DATA,
    **{f"fold{k}": dict(_REAL_DATA, **{"data.protocol": f"fold{k}"}) for k in range(2, 6)},
    "original": dict(_REAL_DATA, **{"data.builder_config": "av_with_video_only", "data.protocol": "original",
                                    "num_epochs": 10, "channel_order": "bgr"}),
    "paper_split": dict(_REAL_DATA, **{"data.protocol": "paper_random", "optimizer": "adam", "learning_rate": 0.01,
                                       "schedule": "constant", "num_epochs": 128}),
    "tpu": dict(_REAL_DATA, dtype="bfloat16", batch_size=64, conv_impl="grouped", learning_rate=0.06 * 8,
                warmup_epochs=2.0),
    "audio_only": dict(_AUDIO, **{"data.normalize": "train", "num_epochs": 24,
                                  "lr_boundaries_epochs": (15, 20, 23)}),
    "audio_original": dict(_AUDIO, num_epochs=100, lr_boundaries_epochs=(40, 55, 65, 70)),
}


def _flat(config, prefix=""):
  out = {}
  for key, value in config.items():
    if hasattr(value, "items"):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def _same(a, b):
  return a == b and type(a) is type(b)


@pytest.fixture(autouse=True)
def _no_ravdess_dir(monkeypatch):
  monkeypatch.delenv(ravdess.RAVDESS_DIR_VARIABLE, raising=False)


def test_every_variant_is_pinned():
  assert set(DIFFERENCES) == set(ravdess.VARIANTS)


def test_default_values():
  default = _flat(ravdess.get_config())
  assert default["variant"] == "default" and _flat(ravdess.get_config("default")) == default
  for key, value in DEFAULT.items():
    assert _same(default[key], value), (key, default[key], value)


@pytest.mark.parametrize("variant", ravdess.VARIANTS)
def test_variant_differs_from_the_default_in_its_pinned_keys_only(variant):
  default, config = _flat(ravdess.get_config()), _flat(ravdess.get_config(variant))
  assert config.pop("variant") == variant
  default.pop("variant")
  assert set(config) == set(default), "a variant adds or drops no key"
  changed = {k: v for k, v in config.items() if not _same(v, default[k])}
  expected = DIFFERENCES[variant]
  assert set(changed) == set(expected), (variant, changed)
  for key, value in expected.items():
    assert _same(changed[key], value), (variant, key, changed[key], value)


def test_audio_variants_read_the_ravdess_folder_from_the_environment(monkeypatch, tmp_path):
  assert ravdess.get_config("audio_only").data.path == ""  # unset: the data source's error says what to set
  monkeypatch.setenv(ravdess.RAVDESS_DIR_VARIABLE, str(tmp_path))
  for variant in ravdess.VARIANTS:
    expected = str(tmp_path / "audio_speech_22k") if variant.startswith("audio") else ""
    assert ravdess.get_config(variant).data.path == expected


def test_unknown_variant():
  with pytest.raises(ValueError, match="unknown config variant 'fold9'"):
    ravdess.get_config("fold9")


def test_crema_d_variants_are_the_ravdess_base_with_the_dataset_changed():
  from avtca_jax import config_validation, datasets
  from configs import crema_d
  base = _flat(ravdess.get_config())
  dataset = {"num_classes": 6, "data.name": "crema_d"}
  real = dict(_REAL_DATA, **dataset)
  expected = {
      "default": dataset, "smoke": dict(DIFFERENCES["smoke"], **dataset),
      **{f"fold{k}": dict(real, **{"data.protocol": f"fold{k}"}) for k in range(2, 6)}, "fold1": real,
      "perceived": dict(real, **{"data.builder_config": "av_perceived"}),
      "finetune": dict(real, learning_rate=0.006, num_epochs=30),
  }
  assert set(expected) == set(crema_d.VARIANTS)
  for variant, differences in expected.items():
    config = crema_d.get_config(variant)
    flat = _flat(config)
    assert flat.pop("variant") == f"crema_d:{variant}"
    assert {k: v for k, v in flat.items() if k != "variant" and v != base[k]} == differences, variant
    config_validation.validate(config)
    assert config_validation.default_config(f"crema_d:{variant}").to_dict() == config.to_dict()
  assert crema_d.get_config().num_classes == datasets.CREMA_D.num_classes
