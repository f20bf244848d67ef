"""RAVDESS evaluation protocols: which actors (or clips) go to train, validation and test.

- `fold1` .. `fold5`: the actor-independent 5-fold protocol of Chumachenko et al. (their first commit's
  comment; docs/original.md#splits): test = 4 consecutive actors, validation = the next 4 (wrapping), train = the other 16.
  Fold 3's published list has a typo ('9' for '19'); we use the evident intent (train 17-24 and 1-8).
  Its test folds cover actors 1-20 only: actors 21-24 are never tested (fold 5 validates on them).
- `fold6`: the same construction continued (test 21-24, validation 1-4, train 5-20), so that the six folds
  `fold1` .. `fold6` (fold set 'all24') test every actor exactly once.
- `original`: the split the public AVTCA/CH code runs (sorted actor folders): test 1-4, val 5-8, train 9-24.
  Identical to fold 1.
- `released`: the split of Chumachenko et al.'s released RAVDESS models: test 5, 10, 16, 19; val 11, 13, 18, 22.
- `paper_random`: the AVT-CA paper's random 80/20 train/test split of clips, one fixed permutation
  (`PAPER_RANDOM_SEED`) of the clips in canonical order, the same from every data source. It LEAKS actors
  (and, when the video-only copies are used, identical utterances) between train and test; reported only to
  compare with the paper's numbers. It has no validation part (the paper states none).
- `inner_<outer>_<j>` (for example `inner_fold2_3`): nested cross-validation inside an actor protocol's
  training actors (`avtca_jax.cross_validation --nested`). The outer protocol's 16 training actors, in
  order, make `INNER_FOLDS` groups of 4; inner fold j tests on group j and trains on the other 12. The
  outer protocol's validation and test actors are in no part of it.

Every choice that applies to several folds (recipe, learning rate, normalisation, epochs) may only be made on
inner protocols; an outer fold's own validation actors may pick that fold's epoch, never anything shared by
the folds, since in the 5-fold protocol they are the next fold's test actors (docs/training.md).
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

ACTORS = tuple(range(1, 25))
NUM_FOLDS = 5
ACTORS_PER_GROUP = 4
INNER_FOLDS = 4
PAPER_RANDOM_SEED = 0  # the one permutation of `paper_random`, whatever the training seed
FOLD_PROTOCOLS = tuple(f"fold{k}" for k in range(1, len(ACTORS) // ACTORS_PER_GROUP + 1))  # fold1 .. fold6
ACTOR_PROTOCOLS = FOLD_PROTOCOLS + ("original", "released")
PROTOCOLS = ACTOR_PROTOCOLS + ("paper_random",)
# Sets of folds that `cross_validation` runs: Chumachenko's five (actors 1-20 tested) and all six (every
# actor tested once). The first five folds are the same in both, so one workdir serves both sets.
FOLD_SETS = {"chumachenko5": FOLD_PROTOCOLS[:NUM_FOLDS], "all24": FOLD_PROTOCOLS}


def _block(start: int) -> List[int]:
  """Four consecutive actors starting at `start` (1-based), wrapping after 24."""
  return [((start - 1 + i) % 24) + 1 for i in range(ACTORS_PER_GROUP)]


def inner_protocol(outer: str, inner_fold: int) -> str:
  """The name of inner fold `inner_fold` (1..INNER_FOLDS) of an actor protocol's training actors."""
  return f"inner_{outer}_{inner_fold}"


def parse_inner(protocol: str, outer_protocols: Sequence[str] = ACTOR_PROTOCOLS):
  """('fold2', 3) for 'inner_fold2_3' when 'fold2' is one of `outer_protocols`, else None."""
  if not protocol.startswith("inner_"):
    return None
  outer, _, j = protocol[len("inner_"):].rpartition("_")
  if not j.isdigit() or not 1 <= int(j) <= INNER_FOLDS or outer not in outer_protocols:
    return None
  return outer, int(j)


def inner_parts(outer_train: Sequence[int], inner_fold: int) -> Dict[str, List[int]]:
  """Inner fold `inner_fold` (1..INNER_FOLDS) of an outer protocol's training speakers, in order: INNER_FOLDS
  groups, test on group j, train on the others, no validation."""
  outer_train = list(outer_train)
  size = len(outer_train) // INNER_FOLDS
  test = outer_train[(inner_fold - 1) * size:inner_fold * size]
  return {"train": [a for a in outer_train if a not in test], "validation": [], "test": test}


def table_parts(folds: Sequence[Sequence[int]], k: int) -> Dict[str, List[int]]:
  """Protocol `fold<k>` of a fold table (speaker lists): test fold k, validation fold k + 1 (wrapping), train
  the others, in table order."""
  test, validation = list(folds[k - 1]), list(folds[k % len(folds)])
  train = [a for i, fold in enumerate(folds) if i not in (k - 1, k % len(folds)) for a in fold]
  return {"train": train, "validation": validation, "test": test}


def assign_parts(parts: Dict[str, Sequence[int]], actors: Sequence[int]) -> np.ndarray:
  """Per clip, the name of the part ('train' / 'validation' / 'test') holding its speaker; 'unused' for a
  speaker in none (an inner protocol's outer validation and test speakers)."""
  actors = np.asarray(actors)
  out = np.full(len(actors), "unused", dtype=object)
  for name, members in parts.items():
    out[np.isin(actors, list(members))] = name
  return out


def paper_random(num_clips: int, test_fraction: float = 0.2) -> np.ndarray:
  """'train' / 'test' per clip: the fixed permutation `PAPER_RANDOM_SEED` of clips in canonical order."""
  rng = np.random.default_rng(PAPER_RANDOM_SEED)
  order = rng.permutation(num_clips)
  num_test = int(round(test_fraction * num_clips))
  out = np.full(num_clips, "train", dtype=object)
  out[order[:num_test]] = "test"
  return out


def is_protocol(protocol: str) -> bool:
  return protocol in PROTOCOLS or parse_inner(protocol) is not None


def fold_actors(protocol: str) -> Dict[str, List[int]]:
  """{'train': [...], 'validation': [...], 'test': [...]} actor ids (1..24) for an actor-level protocol."""
  inner = parse_inner(protocol)
  if inner is not None:
    return inner_parts(fold_actors(inner[0])["train"], inner[1])
  if protocol in FOLD_PROTOCOLS:
    k = int(protocol[len("fold"):])
    test, validation = _block(4 * (k - 1) + 1), _block(4 * k + 1)
  elif protocol == "original":
    test, validation = _block(1), _block(5)
  elif protocol == "released":
    test, validation = [5, 10, 16, 19], [11, 13, 18, 22]
  else:
    raise ValueError(f"unknown actor protocol {protocol!r}; expected one of {ACTOR_PROTOCOLS} or "
                     "inner_<protocol>_<1..4>")
  train = [a for a in ACTORS if a not in test and a not in validation]
  return {"train": train, "validation": validation, "test": test}


def assign_split(protocol: str, actors: Sequence[int], test_fraction: float = 0.2) -> np.ndarray:
  """Split name ('train' / 'validation' / 'test') for each clip, given each clip's actor id.

  For 'paper_random' the assignment is the fixed permutation `PAPER_RANDOM_SEED` of the clips: callers
  pass clips in canonical (sorted by name) order, so every source draws the same split.
  """
  actors = np.asarray(actors)
  if protocol == "paper_random":
    return paper_random(len(actors), test_fraction)
  outside = sorted({int(a) for a in actors if int(a) not in ACTORS})
  if outside:
    raise ValueError(f"actor ids outside 1..24: {outside}")
  # Inner protocols leave the outer validation and test actors out of every part ('unused').
  return assign_parts(fold_actors(protocol), actors)
