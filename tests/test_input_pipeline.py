"""tf.data pipeline over the builder's shards: batches, determinism, per-host sharding, device placement."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ravdess_test_data import build_generated

from avtca_jax import splits as splits_lib

pytest.importorskip("tensorflow_datasets")
from avtca_jax import input_pipeline  # noqa: E402


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
  return build_generated(tmp_path_factory.getbasetemp()).data_path


def _take(ds, n):
  return [b for _, b in zip(range(n), ds.as_numpy_iterator())]


def _fingerprints(batches):
  """One id per example: its MFCCs are unique per generated clip."""
  return [hash(m.tobytes()) for b in batches for m, ok in zip(b["mfcc"], b["mask"]) if ok]


def test_dataset_info_counts(dataset_dir):
  info = input_pipeline.dataset_info(str(dataset_dir))
  n = info["num_examples"]
  assert n["fold1_train"] == 128 and n["fold1_validation"] == 32 and n["fold1_test"] == 32
  assert n["released_test"] == 32 and n["all"] == 192
  assert n["paper_random_train"] + n["paper_random_test"] == 192
  assert info["image_size"] == 32 and info["num_frames"] == 15 and info["num_classes"] == 8
  assert info["frame_encoding"] == "jpeg"


def test_train_batches_format_and_actors(dataset_dir):
  ds = input_pipeline.create_dataset(str(dataset_dir), "fold2_train", batch_size=8, train=True, seed=0)
  batches = _take(ds, 20)  # 160 examples: more than one epoch of 128, so it repeats
  b = batches[0]
  assert b["mfcc"].shape == (8, 156, 10) and b["mfcc"].dtype == np.float32
  assert b["frames"].shape == (8, 15, 32, 32, 3) and b["frames"].dtype == np.uint8
  assert b["label"].dtype == np.int32 and b["actor"].dtype == np.int32 and b["mask"].all()
  actors = {int(a) for x in batches for a in x["actor"]}
  assert actors <= set(splits_lib.fold_actors("fold2")["train"]) and len(actors) > 8
  first_epoch = _fingerprints(batches[:16])
  assert len(set(first_epoch)) == 128  # one epoch visits every example once


def test_deterministic_under_a_seed(dataset_dir):
  def run(seed, **kw):
    ds = input_pipeline.create_dataset(str(dataset_dir), "fold1_train", batch_size=8, train=True, seed=seed, **kw)
    return _take(ds, 3)
  a, b, c = run(0), run(0), run(1)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert _fingerprints(a) != _fingerprints(c)
  # Host augmentation is seeded too: same seed, same flips and angles; and it changes the frames.
  aug1, aug2 = run(0, host_augment=True), run(0, host_augment=True)
  np.testing.assert_array_equal(aug1[0]["frames"], aug2[0]["frames"])
  np.testing.assert_array_equal(aug1[0]["mfcc"], a[0]["mfcc"])
  assert not np.array_equal(aug1[0]["frames"], a[0]["frames"])


def test_evaluation_is_ordered_padded_and_complete(dataset_dir):
  ds = input_pipeline.create_dataset(str(dataset_dir), "fold1_test", batch_size=12, train=False)
  batches = list(ds.as_numpy_iterator())
  assert [int(b["mask"].sum()) for b in batches] == [12, 12, 8]
  assert all(b["mfcc"].shape[0] == 12 for b in batches)
  assert len(set(_fingerprints(batches))) == 32
  again = list(input_pipeline.create_dataset(str(dataset_dir), "fold1_test", batch_size=12, train=False)
               .as_numpy_iterator())
  assert _fingerprints(again) == _fingerprints(batches)
  assert input_pipeline.num_batches(str(dataset_dir), "fold1_test", batch_size=12, train=False) == 3


def test_train_on_validation_reads_both_protocol_splits(dataset_dir):
  """'fold1_train+fold1_validation' is every clip of the 20 actors once; the tfds source uses it for
  config.data.train_on_validation and leaves the validation split empty."""
  d = str(dataset_dir)
  joined = list(input_pipeline.create_dataset(d, "fold1_train+fold1_validation", batch_size=16, train=False)
                .as_numpy_iterator())
  parts = [list(input_pipeline.create_dataset(d, f"fold1_{s}", batch_size=16, train=False).as_numpy_iterator())
           for s in ("train", "validation")]
  assert sorted(_fingerprints(joined)) == sorted(_fingerprints(parts[0]) + _fingerprints(parts[1]))
  assert len(_fingerprints(joined)) == 160
  actors = {int(a) for b in joined for a, ok in zip(b["actor"], b["mask"]) if ok}
  assert actors == set(splits_lib.fold_actors("fold1")["train"]) | set(splits_lib.fold_actors("fold1")["validation"])

  import configs.ravdess
  from avtca_jax.tfds_source import TfdsSource
  config = configs.ravdess.get_config()
  config.data.name, config.data.builder_config = d, ""
  plain = TfdsSource(config)
  assert (plain.num_examples("train"), plain.num_examples("validation")) == (128, 32)
  config.data.train_on_validation = True
  merged = TfdsSource(config)
  assert (merged.num_examples("train"), merged.num_examples("validation"), merged.num_examples("test")) == (160, 0, 32)
  epoch = list(merged.train_batches(0, 0, 16, seed=0))
  assert len(epoch) == 10 and sorted(_fingerprints(epoch)) == sorted(_fingerprints(joined))


def test_per_host_sharding_two_processes(dataset_dir):
  d = str(dataset_dir)
  hosts = [list(input_pipeline.create_dataset(d, "fold1_test", batch_size=10, train=False, process_index=i,
                                              process_count=2).as_numpy_iterator()) for i in range(2)]
  assert len(hosts[0]) == len(hosts[1]) == 4  # 16 examples each, local batch 5: same step count
  assert all(b["mfcc"].shape[0] == 5 for h in hosts for b in h)
  ids = [set(_fingerprints(h)) for h in hosts]
  assert len(ids[0]) == len(ids[1]) == 16 and not ids[0] & ids[1]
  full = set(_fingerprints(input_pipeline.create_dataset(d, "fold1_test", batch_size=8, train=False)
                           .as_numpy_iterator()))
  assert ids[0] | ids[1] == full
  # Training: each host reads its own half of every actor's clips.
  train = [set(_fingerprints(_take(input_pipeline.create_dataset(d, "fold1_train", batch_size=8, train=True,
                                                                 process_index=i, process_count=2), 16)))
           for i in range(2)]
  assert len(train[0]) == len(train[1]) == 64 and not train[0] & train[1]
  with pytest.raises(ValueError, match="divisible"):
    input_pipeline.create_dataset(d, "fold1_train", batch_size=7, train=True, process_index=0, process_count=2)


def test_host_memory_cache_gives_the_same_batches(dataset_dir):
  def run(cache):
    batches = _take(input_pipeline.create_dataset(str(dataset_dir), "fold3_train", batch_size=16, train=True,
                                                  seed=5, cache=cache), 16)  # two epochs of 128
    return {hash(m.tobytes()): (f, l) for b in batches for m, f, l in zip(b["mfcc"], b["frames"], b["label"])}
  plain, cached = run(False), run(True)
  assert len(plain) == 128 and plain.keys() == cached.keys()
  for key, (frames, label) in plain.items():
    np.testing.assert_array_equal(cached[key][0], frames)
    assert cached[key][1] == label


_DEVICE_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import numpy as np, jax
    from jax.sharding import PartitionSpec as P
    from avtca_jax import data_sources, input_pipeline, steps
    d = sys.argv[1]
    assert jax.device_count() == 2, jax.devices()
    mesh = steps.create_mesh()
    ds = input_pipeline.create_dataset(d, "fold1_test", batch_size=12, train=False)
    host = list(ds.as_numpy_iterator())
    placed = list(steps.prefetch_to_devices(iter(host), mesh, size=2))
    assert len(placed) == len(host) == 3
    for h, p in zip(host, placed):
      assert set(p) == set(h) - {"actor"}
      for k, v in p.items():
        assert isinstance(v, jax.Array) and v.sharding.spec == P("data"), (k, v.sharding)
        assert [s.data.shape[0] for s in v.addressable_shards] == [6, 6]
        np.testing.assert_array_equal(np.asarray(v), h[k])
    arrays = input_pipeline.load_split(d, "fold1_test")
    assert arrays["frames"].shape == (32, 15, 32, 32, 3)
    cache = data_sources.DeviceCache(arrays, mesh)
    assert cache.steps_per_epoch(8) == 4 and cache.nbytes > arrays["frames"].nbytes
    epoch = list(cache.train_batches(0, 0, 8, seed=1))
    assert len(epoch) == 4 and epoch[0]["frames"].sharding.spec == P("data")
    seen = np.concatenate([np.asarray(b["mfcc"])[:, 0, 0] for b in epoch])
    assert sorted(seen.tolist()) == sorted(arrays["mfcc"][:, 0, 0].tolist())  # every clip once per epoch
    # The same clips, in the same order, as the in-memory source; resuming at step 2 continues the epoch.
    in_memory = list(data_sources.ArraySource({"train": arrays}).train_batches(0, 0, 8, seed=1))
    for a, b in zip(epoch, in_memory):
      for k in ("mfcc", "frames", "label"):
        np.testing.assert_array_equal(np.asarray(a[k]), b[k])
    resumed = list(cache.train_batches(0, 2, 8, seed=1))
    np.testing.assert_array_equal(np.asarray(resumed[0]["mfcc"]), np.asarray(epoch[2]["mfcc"]))
    other = next(cache.train_batches(1, 0, 8, seed=1))
    assert not np.array_equal(np.asarray(other["mfcc"]), np.asarray(epoch[0]["mfcc"]))
    print("OK")
""")


def test_batches_placed_on_two_devices_with_batch_sharding(dataset_dir):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-c", _DEVICE_SCRIPT, str(dataset_dir)], env=env,
                          capture_output=True, text=True, timeout=300,
                          cwd=str(Path(__file__).resolve().parents[1]))
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def test_every_source_yields_the_batch_contract(dataset_dir):
  """tf.data batches, in-memory training and evaluation batches: the keys, dtypes and shapes of avtca_jax.batch
  (the mask is bool everywhere)."""
  from avtca_jax import batch as batch_lib, data_sources, synthetic
  for train in (True, False):
    tfds_batch = next(input_pipeline.create_dataset(str(dataset_dir), "fold1_test", batch_size=8, train=train,
                                                    seed=0).as_numpy_iterator())
    batch_lib.check(tfds_batch, 15, 32)
  arrays = synthetic.make_split(10, 32, 8, splits_lib.ACTORS)
  source = data_sources.ArraySource({"train": arrays, "test": arrays})
  batch_lib.check(next(source.train_batches(0, 0, 4, seed=0)), 15, 32)
  padded = list(source.eval_batches("test", 8))[-1]
  batch_lib.check(padded, 15, 32)
  assert padded["mask"].tolist() == [True, True] + [False] * 6
  with pytest.raises(ValueError, match="mask is int32, expected bool"):
    batch_lib.check(dict(padded, mask=padded["mask"].astype(np.int32)), 15, 32)
