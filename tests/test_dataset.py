"""The 'ravdess' tfds builder: real clips in, the same clips, labels, actors and splits out."""

import json
from pathlib import Path

import numpy as np
import pytest

from ravdess_test_data import (ACTOR01_CLIP, ACTOR05_TAKES, BAD_NAME, SHARED_RAVDESS, VIDEO_ONLY_COPY,
                               build_generated, build_real)

from avtca_jax import splits as splits_lib
from data.ravdess import EMOTIONS, protocol_split_names, resolve_split

tfds = pytest.importorskip("tensorflow_datasets")

needs_real_data = pytest.mark.skipif(
    not (SHARED_RAVDESS / "video_actor05").is_dir(),
    reason=f"real RAVDESS sample not found at {SHARED_RAVDESS} (tests read ../shared/data/ravdess)")


def _read(builder, split):
  return list(tfds.as_numpy(builder.as_dataset(split=split)))


# ---- split names (no data needed) ----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", splits_lib.ACTOR_PROTOCOLS)
def test_protocol_splits_partition_the_actors(protocol):
  seen = {}
  for part in ("train", "validation", "test"):
    parts = resolve_split(f"{protocol}_{part}").split("+")
    actors = [int(p.replace("actor", "")) for p in parts]
    assert actors == splits_lib.fold_actors(protocol)[part]
    for a in actors:
      assert a not in seen, f"actor {a} in {seen[a]} and {part} of {protocol}"
      seen[a] = part
  assert sorted(seen) == list(range(1, 25))


def test_resolve_split_passes_stored_names_and_reports_missing_actors():
  assert resolve_split("actor05") == "actor05"
  assert resolve_split("paper_random_test") == "paper_random_test"
  assert resolve_split("released_test", available=["actor05", "actor01"]) == "actor05"
  with pytest.raises(ValueError, match="fold2_test"):
    resolve_split("fold2_test", available=["actor01"])
  with pytest.raises(ValueError, match="part must be"):
    resolve_split("fold1_holdout")
  assert "fold5_validation" in protocol_split_names() and "original_test" in protocol_split_names()


# ---- generated config ----------------------------------------------------------------------------------


def test_generated_config_builds_and_reads_back(tmp_path_factory):
  builder = build_generated(tmp_path_factory.getbasetemp())
  splits = builder.info.splits
  assert [f"actor{a:02d}" for a in range(1, 25)] == sorted(k for k in splits.keys() if k.startswith("actor"))
  assert all(splits[f"actor{a:02d}"].num_examples == 8 for a in range(1, 25))
  assert splits["paper_random_train"].num_examples + splits["paper_random_test"].num_examples == 192
  assert builder.info.features["label"].names == list(EMOTIONS)
  examples = _read(builder, "fold1_test")
  assert len(examples) == 32
  assert sorted({int(e["actor"]) for e in examples}) == [1, 2, 3, 4]
  assert sorted(int(e["label"]) for e in examples) == sorted(list(range(8)) * 4)
  e = examples[0]
  assert e["frames"].shape == (15, 32, 32, 3) and e["frames"].dtype == np.uint8
  assert e["mfcc"].shape == (156, 10) and e["mfcc"].dtype == np.float32 and np.isfinite(e["mfcc"]).all()
  # The stem encodes label and actor: generated-EE-II-AA.
  for e in examples:
    _, emotion, _, actor = e["stem"].decode().split("-")
    assert int(emotion) - 1 == e["label"] and int(actor) == e["actor"]
  # Classes differ in their MFCCs (a learnable signal, not noise): class means are far apart.
  by_class = [np.mean([x["mfcc"][:, 1:].mean(0) for x in examples if x["label"] == c], 0) for c in range(8)]
  gaps = [np.abs(by_class[i] - by_class[j]).max() for i in range(8) for j in range(i + 1, 8)]
  assert min(gaps) > 1.0


# ---- real clips ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_av(tmp_path_factory):
  return build_real(tmp_path_factory.getbasetemp(), "av")


@needs_real_data
def test_real_clips_labels_actors_and_counts(real_av):
  splits = real_av.info.splits
  assert sorted(splits.keys()) == ["actor01", "actor05", "paper_random_test", "paper_random_train"]
  assert splits["actor05"].num_examples == len(ACTOR05_TAKES) and splits["actor01"].num_examples == 1
  examples = {e["stem"].decode(): e for e in _read(real_av, "all")}
  assert sorted(examples) == sorted(ACTOR05_TAKES + (ACTOR01_CLIP,))  # no 02 copy in 'av', bad name skipped
  for stem, e in examples.items():
    fields = [int(f) for f in stem.split("_")[0].split("-")]
    assert e["label"] == fields[2] - 1 and e["actor"] == fields[6] and e["modality"] == 1
    assert e["frames"].shape == (15, 224, 224, 3) and e["frames"].dtype == np.uint8
    assert e["mfcc"].shape == (156, 10) and e["mfcc"].dtype == np.float32
    assert e["frames"].std() > 10  # real face crops, not blank frames
  paper = [e["stem"] for e in _read(real_av, "paper_random_train") + _read(real_av, "paper_random_test")]
  assert sorted(s.decode() for s in paper) == sorted(examples)


@needs_real_data
def test_real_clips_split_membership(real_av):
  for protocol in splits_lib.ACTOR_PROTOCOLS:
    owner = {}
    for part in ("train", "validation", "test"):
      try:
        examples = _read(real_av, f"{protocol}_{part}")
      except ValueError:  # this protocol part has none of the actors present (01, 05)
        continue
      for e in examples:
        assert e["actor"] in splits_lib.fold_actors(protocol)[part]
        assert owner.setdefault(int(e["actor"]), part) == part, f"actor {e['actor']} in two splits of {protocol}"
    assert sorted(owner) == [1, 5]
  assert [int(e["actor"]) for e in _read(real_av, "released_test")] == [5] * len(ACTOR05_TAKES)
  assert [e["stem"].decode() for e in _read(real_av, "original_test")] == [ACTOR01_CLIP]


@needs_real_data
def test_real_clips_match_the_preprocessing_cache_and_report(real_av):
  from avtca_jax.preprocessing.clips import load_clip
  report = json.loads((Path(real_av.data_path) / "preprocessing_report.json").read_text())
  assert any(BAD_NAME in s["path"] for s in report["skipped"]), report["skipped"]
  meta = real_av.info.metadata["preprocessing"]
  assert meta["num_skipped"] == len(report["skipped"]) >= 1
  cache = Path(report["output"])
  for e in _read(real_av, "actor05"):
    clip = load_clip(cache / f"{e['stem'].decode()}.npz")
    np.testing.assert_array_equal(e["mfcc"], clip["mfcc"])
    diff = np.abs(e["frames"].astype(np.float32) - clip["face_crops"].astype(np.float32))
    assert diff.mean() < 3.0, diff.mean()  # JPEG quality 90


@needs_real_data
def test_video_only_config_adds_the_02_copies(real_av, tmp_path_factory):
  builder = build_real(tmp_path_factory.getbasetemp(), "av_with_video_only")
  examples = _read(builder, "actor05")
  assert sorted(e["stem"].decode() for e in examples) == sorted(ACTOR05_TAKES + (VIDEO_ONLY_COPY,))
  copy = [e for e in examples if e["stem"].decode() == VIDEO_ONLY_COPY][0]
  original = [e for e in examples if e["stem"].decode() == "01" + VIDEO_ONLY_COPY[2:]][0]
  assert copy["modality"] == 2 and copy["label"] == original["label"]
  np.testing.assert_array_equal(copy["mfcc"], original["mfcc"])  # the same audio file of the take
