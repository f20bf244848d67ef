"""The datasets: class names, speakers, protocols, and how a protocol becomes split names (docs/data.md).

One `Dataset` per tfds builder, in `REGISTRY`. It is the only place that knows a dataset's class names (their
order is the label ids), its speakers ("groups": one stored split each, `split_format`), its protocols, and
how a protocol's part ('fold2_test') becomes stored splits (`resolve_split`) or a per-clip assignment
(`assign_split`, for data held in memory). The builders, the input pipeline, the data sources and the
configs ask it; none of them spells a split name or a class list of its own.

Protocols: `fold<k>` (actor-independent folds: RAVDESS's published ones in `avtca_jax.splits`, or the
dataset's fold table: test fold k, validation fold k + 1, train the rest), `inner_<fold>_<j>` (nested
cross-validation inside an outer fold's training speakers), `paper_random` (a fixed random 80/20 clip split,
stored as its own splits), and RAVDESS's `original` and `released`.

TensorFlow-free: importing this module imports numpy and the preprocessing's name tables only.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from avtca_jax import splits
from avtca_jax.preprocessing.names import CREMA_D_EMOTIONS, EMOTIONS

PARTS = ("train", "validation", "test")
RANDOM_PROTOCOL = "paper_random"  # a clip-level split, stored as paper_random_train / paper_random_test


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset's facts. `folds` is the fold table (speaker tuples) for datasets whose protocols are
  `fold1..foldK` over it; None for RAVDESS, whose protocols are `avtca_jax.splits`'s."""

  name: str  # the tfds builder name (config.data.name)
  class_names: Tuple[str, ...]
  groups: Tuple  # speaker ids (ints, or names for a dataset whose grouping key is a name)
  split_format: str  # stored split of a speaker, e.g. 'actor{:02d}'
  folds: Optional[Tuple[Tuple[int, ...], ...]] = None
  package: str = ""  # the builder package under data/ (avtca_jax.<package>_tfds in a wheel)
  group_doc: str = "speaker id"

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def protocols(self) -> Tuple[str, ...]:
    """Outer protocols (each with train / validation / test speakers)."""
    if self.folds is None:
      return splits.ACTOR_PROTOCOLS
    return tuple(f"fold{k}" for k in range(1, len(self.folds) + 1))

  def is_protocol(self, protocol: str) -> bool:
    return (protocol in self.protocols or protocol == RANDOM_PROTOCOL
            or splits.parse_inner(protocol, self.protocols) is not None)

  def parts(self, protocol: str) -> Dict[str, List[int]]:
    """{'train', 'validation', 'test'}: speaker ids of a speaker-level protocol (outer or inner)."""
    if self.folds is None:
      return splits.fold_actors(protocol)
    inner = splits.parse_inner(protocol, self.protocols)
    if inner is not None:
      return splits.inner_parts(self.parts(inner[0])["train"], inner[1])
    if protocol not in self.protocols:
      raise ValueError(f"unknown protocol {protocol!r} for {self.name}; expected one of {self.protocols}, "
                       f"{RANDOM_PROTOCOL} or inner_<protocol>_<1..{splits.INNER_FOLDS}>")
    return splits.table_parts(self.folds, int(protocol[len("fold"):]))

  def group_split(self, group) -> str:
    """The stored split of one speaker ('actor05', 'actor1001'); a group may be an int or a name."""
    try:
      group = int(group)
    except (TypeError, ValueError):  # a grouping key that is a name (a manifest's speaker)
      pass
    return self.split_format.format(group)

  def protocol_split_names(self) -> List[str]:
    """Every protocol split name `resolve_split` understands."""
    names = [f"{p}_{part}" for p in self.protocols for part in PARTS]
    return names + [f"{RANDOM_PROTOCOL}_train", f"{RANDOM_PROTOCOL}_test", "all"]

  def resolve_split(self, name: str, available: Optional[Iterable[str]] = None) -> str:
    """A protocol split name -> a tfds split string over the stored splits.

    'fold1_train' -> 'actor09+actor10+...'; 'all' -> every speaker's split; several joined by '+' are
    resolved one by one. Stored split names ('actor05', 'paper_random_test') and tfds split expressions
    ('actor05[:10]') pass through unchanged. `available` (the stored split names) drops speakers without
    clips (a partial download); a ValueError names the split when nothing is left.
    """
    if "+" in name:
      return "+".join(self.resolve_split(part, available) for part in name.split("+"))
    available = None if available is None else set(available)
    if name == "all":
      groups = list(self.groups)
    elif ("_" in name and name.rsplit("_", 1)[0] != RANDOM_PROTOCOL
          and self.is_protocol(name.rsplit("_", 1)[0])):
      protocol, part = name.rsplit("_", 1)
      if part not in PARTS:
        raise ValueError(f"unknown split {name!r}: part must be one of {PARTS}")
      groups = self.parts(protocol)[part]
    else:
      return name
    stored = [self.group_split(g) for g in groups]
    if available is not None:
      stored = [s for s in stored if s in available]
      if not stored:
        raise ValueError(f"split {name!r} needs actors {groups}, none of which is in this dataset "
                         f"(stored splits: {sorted(available)})")
    return "+".join(stored)

  def assign_split(self, protocol: str, groups: Sequence[int]) -> np.ndarray:
    """Per clip ('train' / 'validation' / 'test' / 'unused'), given each clip's speaker, for data held in
    memory. 'paper_random' draws its fixed permutation over the clips as given (pass them in canonical,
    name-sorted order)."""
    if self.folds is None:
      return splits.assign_split(protocol, groups)
    if protocol == RANDOM_PROTOCOL:
      return splits.paper_random(len(groups))
    outside = sorted({g.item() if hasattr(g, "item") else g for g in groups} - set(self.groups), key=str)
    if outside:
      raise ValueError(f"speaker ids not in {self.name}: {outside[:10]}")
    return splits.assign_parts(self.parts(protocol), groups)

  def builder(self):
    """The builder package (importing it registers the tfds builder), from a checkout or a wheel."""
    from avtca_jax import bundled
    return bundled.builder_package(self.package or self.name)


# CREMA-D's 91 actors in five actor-independent folds, balanced by sex (10/10/10/9/9 of the 48 men, 9/8/8/9/9
# of the 43 women) and spread over ages: each sex sorted by (age, actor id) and dealt round robin, men first,
# from the dataset's VideoDemographics.csv (tests/test_crema_d.py rebuilds these lists from that file).
CREMA_D_FOLDS = (
    (1003, 1015, 1017, 1018, 1020, 1023, 1032, 1035, 1037, 1042, 1047, 1052, 1056, 1058, 1060, 1064, 1066, 1077,
     1087),
    (1007, 1008, 1012, 1026, 1028, 1036, 1038, 1040, 1043, 1045, 1048, 1051, 1063, 1067, 1070, 1078, 1081, 1091),
    (1009, 1021, 1031, 1034, 1041, 1049, 1055, 1059, 1062, 1065, 1069, 1072, 1075, 1079, 1084, 1086, 1088, 1090),
    (1001, 1004, 1005, 1006, 1013, 1014, 1016, 1025, 1027, 1033, 1044, 1053, 1068, 1073, 1074, 1076, 1080, 1082),
    (1002, 1010, 1011, 1019, 1022, 1024, 1029, 1030, 1039, 1046, 1050, 1054, 1057, 1061, 1071, 1083, 1085, 1089),
)

RAVDESS = Dataset(name="ravdess", class_names=EMOTIONS, groups=splits.ACTORS, split_format="actor{:02d}",
                  package="ravdess", group_doc="RAVDESS actor id, 1..24")
CREMA_D = Dataset(name="crema_d", class_names=CREMA_D_EMOTIONS, groups=tuple(range(1001, 1092)),
                  split_format="actor{:04d}", folds=CREMA_D_FOLDS, package="crema_d",
                  group_doc="CREMA-D actor id, 1001..1091")

REGISTRY: Dict[str, Dataset] = {d.name: d for d in (RAVDESS, CREMA_D)}


def get(name: str) -> Dataset:
  """The registered dataset of a tfds builder name ('ravdess', 'crema_d'); 'name/config' is accepted."""
  key = name.split("/")[0]
  if key not in REGISTRY:
    raise KeyError(f"unknown dataset {name!r}; registered: {sorted(REGISTRY)} (avtca_jax/datasets.py)")
  return REGISTRY[key]


def of_config(config) -> Dataset:
  """The dataset of `config.data.name`: a registered name, or a built dataset's version folder (its
  dataset_info.json names the builder, its label.labels.txt the classes). TensorFlow-free, for tools that
  only need the class names (evaluate, predict, export)."""
  import json
  from etils import epath
  name = config.data.name
  folder = epath.Path(name)
  if not (folder / "dataset_info.json").exists():
    return get(name)
  builder = json.loads((folder / "dataset_info.json").read_text()).get("name", "")
  base = REGISTRY.get(builder)
  labels = folder / "label.labels.txt"  # one name per line (a name may hold spaces)
  names = (tuple(line.strip() for line in labels.read_text().splitlines() if line.strip()) if labels.exists()
           else (base.class_names if base else ()))
  if base is not None:
    return dataclasses.replace(base, class_names=names)
  stored = {}  # a manifest's speakers and folds (metadata.json's 'dataset', as `from_info` reads them)
  if (folder / "metadata.json").exists():
    stored = dict(json.loads((folder / "metadata.json").read_text()).get("dataset") or {})
  folds = stored.get("folds")
  return Dataset(name=builder, class_names=names, groups=tuple(stored.get("groups", ())),
                 split_format=stored.get("split_format", "actor{}"),
                 folds=None if folds is None else tuple(tuple(f) for f in folds), package=builder)


def from_info(info) -> Dataset:
  """The dataset of a built tfds dataset (`builder.info`): the registered one for its builder name, with the
  class names the built dataset stores (its ClassLabel) and, where the build recorded them
  (`info.metadata['dataset']`: {'groups', 'folds', 'split_format'}), its own speakers and folds."""
  names = tuple(info.features["label"].names)
  stored = dict(info.metadata or {}).get("dataset") if info.metadata is not None else None
  if info.name in REGISTRY and not stored:
    return dataclasses.replace(REGISTRY[info.name], class_names=names)
  stored = stored or {}
  base = REGISTRY.get(info.name)
  folds = stored.get("folds", base.folds if base else None)
  return Dataset(name=info.name, class_names=names,
                 groups=tuple(stored.get("groups", base.groups if base else ())),
                 split_format=stored.get("split_format", base.split_format if base else "actor{}"),
                 folds=None if folds is None else tuple(tuple(f) for f in folds),
                 package=base.package if base else info.name)

