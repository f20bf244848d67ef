"""A manifest of a person's own clips: the CSV, its label list, its checks and its speaker-independent folds.

TensorFlow-free (the builder's preprocessing workers and configs/manifest.py import this package). Every check
runs before any face detection and fails with one line that names the CSV row (its line number) and the fix
(`ManifestError`, a ValueError).

The CSV has a header row. Columns (any order; other columns are ignored; a few aliases accepted):

    video    the clip (any container PyAV/OpenCV read: .mp4, .avi, .flv, ...)   also: video_path, path, file, clip
    label    its class, one of the label list                                   also: emotion, class
    speaker  who is speaking, or any grouping key kept out of the other parts    also: group, actor, subject
    audio    optional: an audio file to use instead of the video's soundtrack   also: audio_path
    fold     optional: the clip's fold (any value; all clips of a speaker in one fold)

Relative paths are relative to the CSV's folder. The label list (the classes, in label-id order) is a
`labels` file (one class per line), a comma-separated option, `labels.txt` beside the CSV when present, or
else the CSV's labels sorted alphabetically.

Folds: with a fold column, its values (sorted, numerically when they are all integers) are fold1..foldK;
without one, the speakers are dealt into min(num_folds, speakers) folds balanced by clip count
(`balanced_folds`, deterministic). Protocol foldK tests fold K, validates on fold K + 1 and trains on the
others (`avtca_jax.splits.table_parts`), so at least 3 folds are needed, and every class needs training clips
in every fold's training part.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import hashlib
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

DATASET_NAME = "manifest"  # the tfds builder name: <data_dir>/manifest/<config name>/<version>
VERSION = "1.0.0"  # the builder's version
SPLIT_FORMAT = "speaker{}"  # the stored split of a speaker id
DEFAULT_NUM_FOLDS = 5
MIN_FOLDS = 3  # test, validation and training parts
LABELS_FILE = "labels.txt"  # the label list beside the CSV, used when no `labels` option is given

COLUMNS = {
    "video": ("video", "video_path", "path", "file", "clip"),
    "label": ("label", "emotion", "class"),
    "speaker": ("speaker", "group", "actor", "subject", "speaker_id"),
    "audio": ("audio", "audio_path"),
    "fold": ("fold",),
}
REQUIRED = ("video", "label", "speaker")


class ManifestError(ValueError):
  """A manifest that cannot be built; one line naming the file and row, and the fix."""


@dataclasses.dataclass(frozen=True)
class Row:
  line: int  # line number in the CSV (the header is line 1)
  video: Path  # absolute
  audio: Optional[Path]  # absolute; None: the video's own soundtrack
  label: int  # index into the class names
  speaker: str
  group: int  # the speaker's id (the dataset's `actor`)
  fold: Optional[str]  # the fold column's value, when there is one
  stem: str  # unique name of the clip (its path relative to the CSV's folder, without extension)


@dataclasses.dataclass(frozen=True)
class Manifest:
  path: Path
  rows: Tuple[Row, ...]
  class_names: Tuple[str, ...]
  labels_source: str  # where the label list came from
  group_names: Dict[int, str]  # speaker id -> the CSV's speaker value
  folds: Tuple[Tuple[int, ...], ...]  # speaker ids per fold (fold1 first)
  fold_names: Tuple[str, ...]  # the fold column's value of each fold, or '' when made from the speakers
  sha1: str  # of the CSV and the label list: a changed manifest is a different dataset

  @property
  def groups(self) -> Tuple[int, ...]:
    return tuple(sorted(self.group_names))

  def metadata(self) -> dict:
    """What the built dataset stores in `info.metadata['dataset']` (read by `datasets.from_info`)."""
    return dict(classes=list(self.class_names), groups=list(self.groups), folds=[list(f) for f in self.folds],
                split_format=SPLIT_FORMAT, group_names={str(k): v for k, v in sorted(self.group_names.items())},
                fold_names=list(self.fold_names), fold_source="column" if any(self.fold_names) else "speakers",
                labels_source=self.labels_source, manifest=str(self.path), manifest_sha1=self.sha1,
                num_clips=len(self.rows))

  def dataset(self):
    """The `avtca_jax.datasets.Dataset` of this manifest (as `datasets.from_info` makes it once built)."""
    from avtca_jax import datasets
    return datasets.Dataset(name=DATASET_NAME, class_names=self.class_names, groups=self.groups,
                            split_format=SPLIT_FORMAT, folds=self.folds, package="manifest",
                            group_doc="speaker id (metadata['dataset']['group_names'] has the CSV's speaker names)")


def config_name(manifest) -> str:
  """The default name of a manifest's dataset: the CSV's folder name, lower case, [a-z0-9_] only."""
  name = re.sub(r"[^a-z0-9_]+", "_", Path(manifest).expanduser().resolve().parent.name.lower()).strip("_")
  return name or "manifest"


def built_folder(manifest, data_dir=None, name: str = "") -> Path:
  """Where `python -m data.manifest.build --manifest CSV` puts the dataset: <data_dir>/manifest/<name>/<version>
  (data_dir: $TFDS_DATA_DIR or ~/tensorflow_datasets by default)."""
  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  return Path(data_dir).expanduser().resolve() / DATASET_NAME / (name or config_name(manifest)) / VERSION


def _where(path: Path, line: int) -> str:
  return f"{path} line {line}"


def _columns(path: Path, header: Sequence[str]) -> Dict[str, int]:
  """{column: index} of the header row; a ManifestError names a missing required column."""
  normalized = [h.strip().lower().replace(" ", "_") for h in header]
  out = {}
  for column, aliases in COLUMNS.items():
    found = [i for i, h in enumerate(normalized) if h in aliases]
    if len(found) > 1:
      raise ManifestError(f"{_where(path, 1)}: columns {', '.join(repr(header[i]) for i in found)} all mean "
                          f"'{column}': keep one")
    if found:
      out[column] = found[0]
  missing = [c for c in REQUIRED if c not in out]
  if missing:
    raise ManifestError(
        f"{_where(path, 1)}: no {', '.join(repr(c) for c in missing)} column in the header "
        f"({', '.join(repr(h) for h in header) or 'empty'}): the first row must name the columns video, label, "
        "speaker (and optionally audio, fold)")
  return out


def read_label_list(labels: str, csv_path: Path) -> Tuple[Optional[List[str]], str]:
  """(class names or None, where they came from). `labels`: a file (one class per line; absolute or relative
  to the CSV's folder), or class names separated by commas; '' uses labels.txt beside the CSV if present."""
  folder = csv_path.parent
  if not labels:
    default = folder / LABELS_FILE
    if not default.is_file():
      return None, "the CSV's labels, sorted"
    labels = str(default)
  candidate = Path(labels).expanduser()
  candidate = candidate if candidate.is_absolute() else folder / candidate
  if candidate.is_file():
    names, seen = [], {}
    for number, text in enumerate(candidate.read_text().splitlines(), 1):
      name = text.strip()
      if not name or name.startswith("#"):
        continue
      if name in seen:
        raise ManifestError(f"{_where(candidate, number)}: class {name!r} is listed twice (also line "
                            f"{seen[name]}): keep one")
      seen[name] = number
      names.append(name)
    return names, str(candidate)
  if "," not in labels and ("/" in labels or labels.endswith((".txt", ".csv"))):
    raise ManifestError(f"label list {candidate} not found: give an existing file (one class per line) or the "
                        "class names separated by commas")
  names = [n.strip() for n in labels.split(",") if n.strip()]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ManifestError(f"label list {labels!r}: {', '.join(map(repr, duplicates))} given twice: keep one")
  return names, "the labels option"


def _stem(video: Path, folder: Path) -> str:
  """The clip's name: its path relative to the CSV's folder (or its folder and name), without extension, with
  every character that is not a letter, digit, '-' or '.' as '_' and folders joined by '__'."""
  try:
    parts = video.relative_to(folder).with_suffix("").parts
  except ValueError:  # outside the CSV's folder: its own folder and name (a clash gets a hash: read_manifest)
    parts = video.with_suffix("").parts[-2:]
  return "__".join(re.sub(r"[^A-Za-z0-9.-]", "_", p) for p in parts if p not in ("", ".."))


def _sort_key(value: str):
  return (0, int(value), value) if re.fullmatch(r"-?\d+", value) else (1, 0, value)


def group_ids(speakers: Sequence[str]) -> Dict[str, int]:
  """Speaker value -> id: the value itself when every speaker is a non-negative integer below 2**31 (the
  stored `actor` is int32) and they are distinct as integers ('05' and '5' are not), else 1..N in sorted
  order."""
  unique = sorted(set(speakers), key=_sort_key)
  if (all(re.fullmatch(r"\d+", s) and int(s) < 2**31 for s in unique)
      and len({int(s) for s in unique}) == len(unique)):
    return {s: int(s) for s in unique}
  return {s: i for i, s in enumerate(unique, 1)}


def balanced_folds(clips_per_group: Dict[int, int], num_folds: int) -> Tuple[Tuple[int, ...], ...]:
  """Speakers dealt into `num_folds` folds balanced by clip count: the largest speaker first (ties by id)
  into the fold with the fewest clips so far (ties: the fewest speakers, then the lowest fold). Deterministic;
  each fold's speakers sorted."""
  folds: List[List[int]] = [[] for _ in range(num_folds)]
  totals = [0] * num_folds
  for group in sorted(clips_per_group, key=lambda g: (-clips_per_group[g], g)):
    k = min(range(num_folds), key=lambda i: (totals[i], len(folds[i]), i))
    folds[k].append(group)
    totals[k] += clips_per_group[group]
  return tuple(tuple(sorted(f)) for f in folds)


def read_manifest(csv_path, labels: str = "", num_folds: int = DEFAULT_NUM_FOLDS,
                  check_files: bool = True) -> Manifest:
  """Read and check a manifest (module docstring); ManifestError (one line: file, row, fix) on bad input.

  Checks, in order: the header; every row's cells (empty cells, an unknown label, a missing video or audio
  file, a duplicate of an earlier row, a speaker in two folds); the label list (a class without clips); the
  folds (at least 3, and every class with training clips in every fold's training part)."""
  from avtca_jax import splits

  path = Path(csv_path).expanduser().resolve()
  if not path.is_file():
    raise ManifestError(f"manifest {path} not found: give the CSV of your clips (columns video, label, speaker; "
                        "docs/data.md 'Your own clips')")
  folder = path.parent
  label_list, labels_source = read_label_list(labels, path)
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
      raise ManifestError(f"{path} is empty: the first row must name the columns video, label, speaker")
    columns = _columns(path, header)
    raw = []
    for cells in reader:
      if not any(c.strip() for c in cells):
        continue  # blank line
      raw.append((reader.line_num, cells))
  if not raw:
    raise ManifestError(f"{path} has a header but no clips: add one row per clip")

  def cell(line, cells, column, required=True):
    index = columns.get(column)
    value = cells[index].strip() if index is not None and index < len(cells) else ""
    if required and not value:
      raise ManifestError(f"{_where(path, line)}: empty '{column}' cell: fill it in or remove the row")
    return value

  if label_list is None:
    label_list = sorted({cell(line, cells, "label") for line, cells in raw})
  class_index = {name: i for i, name in enumerate(label_list)}
  speakers = [cell(line, cells, "speaker") for line, cells in raw]
  ids = group_ids(speakers)

  rows: List[Row] = []
  by_video: Dict[Path, int] = {}  # real path -> line
  stems: Dict[str, int] = {}
  fold_of: Dict[str, Tuple[str, int]] = {}
  for (line, cells), speaker in zip(raw, speakers):
    label = cell(line, cells, "label")
    if label not in class_index:
      close = difflib.get_close_matches(label, label_list, n=1)
      raise ManifestError(
          f"{_where(path, line)}: unknown label {label!r} (the label list, from {labels_source}: "
          f"{', '.join(label_list)})" + (f"; did you mean {close[0]!r}?" if close else "") +
          ": correct the label or add it to the label list")
    files = {}
    for column in ("video", "audio"):
      value = cell(line, cells, column, required=column == "video")
      if not value:
        files[column] = None
        continue
      file = Path(value).expanduser()
      file = Path(os.path.abspath(file if file.is_absolute() else folder / file))  # links kept: the stem
      if check_files and not file.is_file():
        raise ManifestError(f"{_where(path, line)}: {column} file {value} not found ({file}): correct the path "
                            "(a relative path is relative to the CSV's folder) or remove the row")
      files[column] = file
    video = files["video"]
    real = video.resolve()  # two names of one file (a link) are one clip
    if real in by_video:
      raise ManifestError(f"{_where(path, line)}: duplicate row: the video {cell(line, cells, 'video')} is "
                          f"already on line {by_video[real]}: remove one of the two rows")
    by_video[real] = line
    fold = None
    if "fold" in columns:
      fold = cell(line, cells, "fold")
      if speaker in fold_of and fold_of[speaker][0] != fold:
        first_fold, first_line = fold_of[speaker]
        raise ManifestError(
            f"{_where(path, line)}: speaker {speaker!r} is in fold {fold!r} here but in fold {first_fold!r} on "
            f"line {first_line}: put all clips of a speaker in one fold (or drop the fold column to make "
            "speaker-independent folds)")
      fold_of.setdefault(speaker, (fold, line))
    stem = _stem(video, folder)
    if stem in stems:  # two paths that spell the same name ('a/b.mp4' and 'a__b.mp4')
      stem = f"{stem}-{hashlib.sha1(str(video).encode()).hexdigest()[:8]}"
    stems[stem] = line
    rows.append(Row(line=line, video=video, audio=files["audio"], label=class_index[label], speaker=speaker,
                    group=ids[speaker], fold=fold, stem=stem))

  # The label list: at least two classes, each with clips.
  if len(label_list) < 2:
    raise ManifestError(f"{path}: only one class ({', '.join(label_list)}; label list from {labels_source}): a "
                        "classifier needs at least two: add clips of another class")
  counts = [0] * len(label_list)
  for r in rows:
    counts[r.label] += 1
  for i, name in enumerate(label_list):
    if not counts[i]:
      raise ManifestError(f"{path}: class {name!r} of the label list ({labels_source}) has no clip: add rows "
                          "with that label or remove it from the label list")

  # The folds.
  group_names = {i: s for s, i in ids.items()}
  clips_per_group: Dict[int, int] = {}
  for r in rows:
    clips_per_group[r.group] = clips_per_group.get(r.group, 0) + 1
  if "fold" in columns:
    values = sorted({r.fold for r in rows}, key=_sort_key)
    if len(values) < MIN_FOLDS:
      raise ManifestError(
          f"{_where(path, 1)}: the fold column has {len(values)} fold(s) ({', '.join(values)}): each protocol needs "
          f"a test, a validation and a training fold, so at least {MIN_FOLDS}: add folds, or drop the fold "
          "column to make them from the speakers")
    folds = tuple(tuple(sorted({r.group for r in rows if r.fold == v})) for v in values)
    fold_names = tuple(values)
  else:
    if len(group_names) < MIN_FOLDS:
      raise ManifestError(
          f"{path}: {len(group_names)} speaker(s) ({', '.join(sorted(ids))}): speaker-independent folds need "
          f"at least {MIN_FOLDS} (test, validation, training): add clips of more speakers, or give a fold "
          "column")
    folds = balanced_folds(clips_per_group, min(max(num_folds, MIN_FOLDS), len(group_names)))
    fold_names = ("",) * len(folds)

  for k in range(1, len(folds) + 1):
    parts = splits.table_parts(folds, k)
    train = set(parts["train"])
    for i, name in enumerate(label_list):
      if not any(r.label == i and r.group in train for r in rows):
        lines = [r.line for r in rows if r.label == i]
        others = sorted({group_names[r.group] for r in rows if r.label == i})
        raise ManifestError(
            f"{_where(path, lines[0])}: class {name!r} has no training clip in fold{k} (its clips, lines "
            f"{', '.join(map(str, lines[:10]))}{' ...' if len(lines) > 10 else ''}, are all of speakers "
            f"{', '.join(others)}, in fold{k}'s test or validation part): add {name!r} clips of other speakers"
            + (", or move a speaker to another fold" if "fold" in columns else ""))

  digest = hashlib.sha1(path.read_bytes())
  digest.update("\n".join(label_list).encode())
  return Manifest(path=path, rows=tuple(rows), class_names=tuple(label_list), labels_source=labels_source,
                  group_names=group_names, folds=folds, fold_names=fold_names, sha1=digest.hexdigest())
