"""tfds builder for CREMA-D audio-visual clips: 15 face crops + MFCCs per clip (docs/data.md).

    python -m data.crema_d.build --config av --manual_dir ~/CREMA-D --data_dir ~/tensorflow_datasets
    python -m data.crema_d.build --config generated      # synthetic CREMA-D-named clips, no download

manual_dir is a CREMA-D download (the CheyneyComputerScience/CREMA-D repository with its Git LFS media):
VideoFlash/*.flv, with AudioWAV/*.wav when present (else each flv's own soundtrack is used), and, for the
perceived labels, processedResults/summaryTable.csv. Stored splits are one per actor ('actor1001' ..
'actor1091') plus 'paper_random_train' / 'paper_random_test'; protocol splits ('fold1_train', ...) are the
actor-independent folds of `avtca_jax.datasets.CREMA_D_FOLDS`, resolved by the dataset.

Labels: 'av' (and 'generated') take the intended emotion of the file name; 'av_perceived' takes the crowd's
audio-visual vote (summaryTable.csv's MultiModalVote), leaving out the clips whose vote is a tie (listed,
with the reason, in preprocessing_report.json).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Dict, List, Tuple

import tensorflow_datasets as tfds

from avtca_jax import datasets, tfds_builder
from avtca_jax.preprocessing.names import CREMA_D_CODES, CREMA_D_LEVELS, CREMA_D_SENTENCES

DATASET = datasets.CREMA_D
EMOTIONS = DATASET.class_names
LABEL_SOURCES = ("intended", "perceived")
SUMMARY_TABLE = Path("processedResults") / "summaryTable.csv"
# The vote letters of summaryTable.csv, in the order of CREMA_D_CODES.
VOTE_LETTERS = ("A", "D", "F", "H", "N", "S")


@dataclasses.dataclass
class CremaDConfig(tfds.core.BuilderConfig):
  """label_source: 'intended' (the file name's emotion) or 'perceived' (the crowd's MultiModalVote).
  frame_encoding: 'jpeg' or 'raw'. source: 'crema_d' reads manual_dir; 'generated' makes synthetic clips
  (avtca_jax.synthetic) named like CREMA-D's, `clips_per_class` per class and actor for the first
  `generated_actors_per_fold` actors of each fold, at `image_size`."""

  label_source: str = "intended"
  frame_encoding: str = "jpeg"
  image_size: int = 224
  source: str = "crema_d"
  clips_per_class: int = 2
  generated_actors_per_fold: int = 2
  seed: int = 0


BUILDER_CONFIGS = [
    CremaDConfig(name="av", description="Audio-video clips, the intended emotion of the file name; 224 px face "
                                        "crops, JPEG frames."),
    CremaDConfig(name="av_perceived", label_source="perceived",
                 description="As av, labelled with the crowd's audio-visual vote (MultiModalVote); tied votes "
                             "left out."),
    CremaDConfig(name="generated", source="generated", image_size=64,
                 description="Synthetic CREMA-D-named clips (2 actors of each fold x 6 classes x 2 clips, 64 px); "
                             "no download needed."),
]


def perceived_labels(summary_table: Path) -> Dict[str, object]:
  """{clip stem: label 0..5, or the tied vote string ('A:D')} from summaryTable.csv's MultiModalVote."""
  out = {}
  with open(summary_table, newline="") as f:
    for row in csv.DictReader(f):
      vote = row["MultiModalVote"].strip()
      out[row["FileName"].strip()] = VOTE_LETTERS.index(vote) if vote in VOTE_LETTERS else vote
  return out


class Builder(tfds_builder.ClipBuilder):
  """CREMA-D: face crops, MFCCs, emotion label, actor, file stem."""

  DATASET = DATASET
  BUILDER_CONFIGS = BUILDER_CONFIGS
  MODALITY_DOC = "1: a video with its audio"
  HOMEPAGE = "https://github.com/CheyneyComputerScience/CREMA-D"
  CITATION = """@article{cao2014crema,
  title={CREMA-D: Crowd-sourced Emotional Multimodal Actors Dataset},
  author={Cao, Houwei and Cooper, David G and Keutmann, Michael K and Gur, Ruben C and Nenkova, Ani and
  Verma, Ragini}, journal={IEEE Transactions on Affective Computing}, volume={5}, number={4},
  pages={377--390}, year={2014}}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Clone https://github.com/CheyneyComputerScience/CREMA-D with its Git LFS media (git lfs pull) and give its
  folder as manual_dir: VideoFlash/*.flv (required), AudioWAV/*.wav (used when present; otherwise each
  video's own soundtrack), processedResults/summaryTable.csv (for the av_perceived config). Skipped clips are
  listed in preprocessing_report.json next to the built dataset and in the dataset's metadata.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    if self.builder_config.label_source not in LABEL_SOURCES:
      raise ValueError(f"label_source must be one of {LABEL_SOURCES}, got {self.builder_config.label_source!r}")
    return super()._info()

  def _download_records(self, manual_dir: Path, cache_dir: Path) -> Tuple[List[dict], dict]:
    table = self._checked_source(manual_dir)
    records, report = tfds_builder.preprocessed_records(
        manual_dir, cache_dir, naming="crema_d", modalities=[1], image_size=self.builder_config.image_size,
        workers=self._preprocess_workers, missing_hint="download CREMA-D")
    return self._labelled(records, report, table)

  def _download_sources(self, manual_dir: Path) -> Tuple[List[dict], dict]:
    table = self._checked_source(manual_dir)
    sources, report = tfds_builder.listed_sources(manual_dir, naming="crema_d", modalities=[1],
                                                  missing_hint="download CREMA-D")
    return self._labelled(sources, report, table)

  def _checked_source(self, manual_dir: Path) -> Path:
    """The crowd's vote table (needed by the perceived labels), after checking the config's source."""
    config = self.builder_config
    if config.source != "crema_d":
      raise ValueError(f"unknown source {config.source!r}")
    table = manual_dir / SUMMARY_TABLE
    if config.label_source == "perceived" and not table.is_file():
      raise FileNotFoundError(f"{table} not found: the av_perceived config reads the crowd's votes from the "
                              "CREMA-D download's processedResults/summaryTable.csv")
    return table

  def _labelled(self, records: List[dict], report: dict, table: Path) -> Tuple[List[dict], dict]:
    """The records (or Beam sources) with the config's labels; with the perceived labels, a clip whose vote
    is missing or tied is left out and listed in the report."""
    if self.builder_config.label_source != "perceived":
      return records, report
    votes = perceived_labels(table)
    kept = []
    for r in records:
      vote = votes.get("_".join(r["stem"].split("_")[:4]))  # the take, without a copy's suffix
      if isinstance(vote, int):
        kept.append(dict(r, label=vote))
      else:
        why = "no crowd vote in summaryTable.csv" if vote is None else f"the crowd's vote is a tie ({vote})"
        report.setdefault("skipped", []).append(dict(path=r["stem"], reason=why))
    report["label_source"] = "perceived"
    return kept, report

  def generated_groups(self):
    return sorted(a for fold in DATASET.folds for a in fold[:self.builder_config.generated_actors_per_fold])

  def generated_stem(self, label: int, actor: int, index: int) -> str:
    sentence = CREMA_D_SENTENCES[index % len(CREMA_D_SENTENCES)]
    level = CREMA_D_LEVELS[::-1][(index // len(CREMA_D_SENTENCES)) % len(CREMA_D_LEVELS)]
    return f"{actor}_{sentence}_{CREMA_D_CODES[label]}_{level}"
