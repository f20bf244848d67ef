"""Protocols: which actors each part holds, and that no test actor's clip reaches training, the normalisation
statistics or the selection split, for every protocol (the data layer the trainer reads)."""

from __future__ import annotations

import numpy as np
import pytest

from avtca_jax import splits

# Every actor-level protocol and every inner (nested) fold of each.
EVERY_ACTOR_PROTOCOL = list(splits.ACTOR_PROTOCOLS) + [
    splits.inner_protocol(p, j) for p in splits.ACTOR_PROTOCOLS for j in range(1, splits.INNER_FOLDS + 1)]


def test_chumachenko_folds_never_test_actors_21_to_24_and_all24_tests_every_actor_once():
  tested = [a for p in splits.FOLD_SETS["chumachenko5"] for a in splits.fold_actors(p)["test"]]
  assert sorted(tested) == list(range(1, 21))
  tested = [a for p in splits.FOLD_SETS["all24"] for a in splits.fold_actors(p)["test"]]
  assert sorted(tested) == list(range(1, 25))
  assert splits.fold_actors("fold6") == {"test": [21, 22, 23, 24], "validation": [1, 2, 3, 4],
                                         "train": list(range(5, 21))}
  assert splits.FOLD_SETS["all24"][:5] == splits.FOLD_SETS["chumachenko5"]  # one workdir serves both sets


@pytest.mark.parametrize("protocol", EVERY_ACTOR_PROTOCOL)
def test_parts_are_disjoint(protocol):
  parts = splits.fold_actors(protocol)
  train, validation, test = (set(parts[k]) for k in ("train", "validation", "test"))
  assert not train & test and not validation & test and not train & validation
  assert test and train


def test_inner_folds_hold_only_the_outer_training_actors():
  for outer in splits.ACTOR_PROTOCOLS:
    outer_parts = splits.fold_actors(outer)
    held_out = []
    for j in range(1, splits.INNER_FOLDS + 1):
      inner = splits.fold_actors(splits.inner_protocol(outer, j))
      assert set(inner["train"]) | set(inner["test"]) == set(outer_parts["train"])
      assert inner["validation"] == []
      held_out += inner["test"]
    assert sorted(held_out) == sorted(outer_parts["train"])  # each training actor held out once
  assert not splits.is_protocol("inner_fold2_5") and not splits.is_protocol("inner_paper_random_1")


def test_paper_random_is_one_split_whatever_the_seed():
  actors = np.repeat(np.arange(1, 25), 10)
  split = splits.assign_split("paper_random", actors)
  assert (split == "test").sum() == 48 and set(split) == {"train", "test"}
  np.testing.assert_array_equal(split, splits.assign_split("paper_random", actors))


def _fake_audio(num_per_actor=6):
  """Clips whose MFCC values are their actor id: any statistic shows which actors it read."""
  actors = np.repeat(np.arange(1, 25, dtype=np.int32), num_per_actor)
  mfcc = np.broadcast_to(actors[:, None, None].astype(np.float32), (len(actors), 156, 10)).copy()
  mfcc += np.random.default_rng(0).normal(0, 0.1, mfcc.shape).astype(np.float32)
  return {"mfcc": mfcc, "label": (np.arange(len(actors)) % 8).astype(np.int32), "actor": actors,
          "stem": np.array([f"clip{i:04d}" for i in range(len(actors))])}


@pytest.mark.parametrize("train_on_validation", [False, True])
@pytest.mark.parametrize("protocol", EVERY_ACTOR_PROTOCOL + ["paper_random"])
def test_no_test_clip_reaches_training_statistics_or_selection(protocol, train_on_validation, monkeypatch, tmp_path):
  from avtca_jax import audio_data, data_sources
  from configs import ravdess

  data = _fake_audio()
  monkeypatch.setattr(audio_data, "load_ravdess_audio", lambda path: data)
  config = ravdess.get_config("audio_only")
  config.data.path = str(tmp_path)
  config.data.protocol = protocol
  config.data.normalize = "train"
  config.data.train_on_validation = train_on_validation
  for seed in (0, 3):  # the training seed changes no split
    config.seed = seed
    source = data_sources.create_source(config)
    train, selection, test = (source.arrays[config.data[k]] for k in ("train_split", "eval_split", "test_split"))
    train_actors = np.unique(np.concatenate([train["actor"], selection["actor"]]))
    if protocol == "paper_random":  # a clip split: no test clip in training (actors overlap by design)
      assert len(train["label"]) + len(test["label"]) == len(data["label"]) and len(selection["label"]) == 0
      if seed == 0:
        first = (train["actor"].copy(), test["actor"].copy())
      else:  # the same split from the same clips whatever the seed
        np.testing.assert_array_equal(first[0], train["actor"])
        np.testing.assert_array_equal(first[1], test["actor"])
      continue
    test_actors = set(splits.fold_actors(protocol)["test"])
    assert set(np.unique(test["actor"])) == test_actors
    assert not test_actors & set(train_actors.tolist())
    # Statistics: the mean of the training split's raw MFCCs (actor ids), nothing else.
    stats = source.mfcc_normalization
    expected = np.mean(data["mfcc"][np.isin(data["actor"], np.unique(train["actor"]))], axis=(0, 1))
    np.testing.assert_allclose(stats["mean"], expected, rtol=1e-4)
    if train_on_validation or protocol.startswith("inner_"):
      assert len(selection["label"]) == 0  # nothing selected: the final parameters are tested
