"""`config.init_checkpoint`: the variables a run starts from, from a converted checkpoint or another run.

- A converted checkpoint (`python -m avtca_jax.convert`: EfficientFace's backbone or a whole AVT-CA) is
  overlaid on the fresh variables; every leaf must exist in the model with its shape (`convert.merge_variables`).
- A training workdir (its best-validation checkpoint, else the latest) or one of its steps
  (`WORKDIR/checkpoints/STEP`): a fine-tune, for example a RAVDESS model (8 classes) on CREMA-D (6). Every
  parameter and batch statistic is taken except the classifier when its shape differs (another class count):
  that one stays freshly initialised and is named in the returned list (the trainer logs it). Any other
  difference is an error that names the leaves.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

from etils import epath

CLASSIFIER = "classifier"


def is_training_checkpoint(path) -> bool:
  """A training workdir (checkpoints/ or best/) or one step of it (state/)."""
  path = epath.Path(path)
  return (path / "checkpoints").is_dir() or (path / "best").is_dir() or (path / "state").is_dir()


def load(path: str, into: Mapping[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
  """(variables to start from, the leaves left out as 'collection/path: shapes'). Raises
  convert.ConversionError: a leaf that does not fit, a run without a readable checkpoint."""
  from avtca_jax import checkpointing, convert
  if not is_training_checkpoint(path):
    return convert.load_init_checkpoint(checkpointing.absolute(path), into=into), []
  directory = str(path)
  if not (epath.Path(path) / "state").is_dir():
    try:
      directory = checkpointing.checkpoint_dir(str(path), best=True)
    except FileNotFoundError:
      try:
        directory = checkpointing.checkpoint_dir(str(path))
      except FileNotFoundError:
        raise convert.ConversionError(f"{path} holds no checkpoint: train it first") from None
  try:
    restored = checkpointing.restore_numpy(directory)
  except Exception as error:  # orbax and tensorstore raise plain Exception, ValueError, OSError, ...
    raise convert.ConversionError(f"{directory} cannot be read ({checkpointing.read_error_reason(error)})") from error
  partial = {"params": restored["params"], "batch_stats": restored.get("batch_stats", {})}
  partial, left_out = _without_other_classifier(partial, into)
  return convert.merge_variables(into, partial), left_out


def _without_other_classifier(partial, into) -> Tuple[Dict[str, Any], List[str]]:
  """`partial` less its top-level classifier when that classifier's shapes differ from `into`'s."""
  import numpy as np
  left_out = []
  out = {}
  for collection, tree in partial.items():
    tree = dict(tree)
    theirs, ours = tree.get(CLASSIFIER), into.get(collection, {}).get(CLASSIFIER)
    if theirs is not None and ours is not None:
      shapes = lambda t: {k: tuple(np.shape(v)) for k, v in t.items()}
      if shapes(theirs) != shapes(ours):
        left_out += [f"{collection}/{CLASSIFIER}/{k}: {np.shape(theirs[k])} vs model {np.shape(ours.get(k))}"
                     for k in sorted(theirs)]
        del tree[CLASSIFIER]
    out[collection] = tree
  return out, left_out
