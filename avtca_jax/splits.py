"""RAVDESS evaluation protocols: which actors (or clips) go to train, validation and test.

- `fold1` .. `fold5`: the actor-independent 5-fold protocol of Chumachenko et al. (their first commit's
  comment; spec 1.7): test = 4 consecutive actors, validation = the next 4 (wrapping), train = the other 16.
  Fold 3's published list has a typo ('9' for '19'); we use the evident intent (train 17-24 and 1-8).
- `original`: the split the public AVTCA/CH code runs (sorted actor folders): test 1-4, val 5-8, train 9-24.
  Identical to fold 1.
- `released`: the split of Chumachenko et al.'s released RAVDESS models: test 5, 10, 16, 19; val 11, 13, 18, 22.
- `paper_random`: the AVT-CA paper's random 80/20 train/validation split of clips. It LEAKS actors (and, when
  the video-only copies are used, identical utterances) between train and test; reported only to compare with
  the paper's numbers. Its "test" is the 20% part (there is no separate validation set).
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

ACTORS = tuple(range(1, 25))
NUM_FOLDS = 5
ACTOR_PROTOCOLS = tuple(f"fold{k}" for k in range(1, NUM_FOLDS + 1)) + ("original", "released")
PROTOCOLS = ACTOR_PROTOCOLS + ("paper_random",)


def _block(start: int) -> List[int]:
  """Four consecutive actors starting at `start` (1-based), wrapping after 24."""
  return [((start - 1 + i) % 24) + 1 for i in range(4)]


def fold_actors(protocol: str) -> Dict[str, List[int]]:
  """{'train': [...], 'validation': [...], 'test': [...]} actor ids (1..24) for an actor-level protocol."""
  if protocol.startswith("fold") and protocol[4:].isdigit() and 1 <= int(protocol[4:]) <= NUM_FOLDS:
    k = int(protocol[4:])
    test, validation = _block(4 * (k - 1) + 1), _block(4 * k + 1)
  elif protocol == "original":
    test, validation = _block(1), _block(5)
  elif protocol == "released":
    test, validation = [5, 10, 16, 19], [11, 13, 18, 22]
  else:
    raise ValueError(f"unknown actor protocol {protocol!r}; expected one of {ACTOR_PROTOCOLS}")
  train = [a for a in ACTORS if a not in test and a not in validation]
  return {"train": train, "validation": validation, "test": test}


def assign_split(protocol: str, actors: Sequence[int], seed: int = 0, test_fraction: float = 0.2) -> np.ndarray:
  """Split name ('train' / 'validation' / 'test') for each clip, given each clip's actor id.

  For 'paper_random' the assignment is a seeded permutation of the clips (deterministic for a given list
  order and seed); callers should pass clips in a canonical (sorted) order.
  """
  actors = np.asarray(actors)
  if protocol == "paper_random":
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(actors))
    num_test = int(round(test_fraction * len(actors)))
    out = np.full(len(actors), "train", dtype=object)
    out[order[:num_test]] = "test"
    return out
  groups = fold_actors(protocol)
  out = np.empty(len(actors), dtype=object)
  for name, members in groups.items():
    out[np.isin(actors, members)] = name
  unknown = [int(a) for a in actors[[o is None for o in out]]]
  if unknown:
    raise ValueError(f"actor ids outside 1..24: {sorted(set(unknown))}")
  return out
