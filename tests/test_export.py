"""`python -m avtca_jax.export`: the reloaded export gives the trained model's logits on real clips, loading
it needs neither flax, orbax nor TensorFlow, and the packages docs/export.md names are enough to load it."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "ravdess"
ACTOR05 = SHARED / "video_actor05"
CLIPS = ("01-01-01-01-02-01-05.mp4", "01-01-06-02-02-02-05.mp4")
needs_clips = pytest.mark.skipif(not ACTOR05.is_dir(), reason=f"real RAVDESS clips not found at {ACTOR05}")
TRAINING_STACK = ("flax", "orbax.checkpoint", "optax", "tensorflow", "ml_collections")


@pytest.fixture(scope="module")
def exported(small_avtca_workdir, tmp_path_factory):
  from avtca_jax import export
  out = tmp_path_factory.mktemp("export") / "model"
  assert export.main([str(small_avtca_workdir), "--output", str(out)]) == 0
  return out


def _training_stack_logits(workdir: Path, mfcc: np.ndarray, crops: np.ndarray) -> np.ndarray:
  """The trained model's logits through the training code itself: the run's config, its checkpoint, the
  trainer's input conversion (steps.model_inputs) and the Flax model."""
  from avtca_jax import checkpoint_kinds, checkpointing, steps as steps_lib
  config = checkpoint_kinds.load_config(str(workdir))
  restored = checkpointing.restore_numpy(checkpoint_kinds.default_checkpoint(str(workdir)))
  model = steps_lib.create_model(config)
  batch = {"mfcc": mfcc, "frames": crops, "label": np.zeros(len(mfcc), np.int32)}
  model_mfcc, frames, _, _ = steps_lib.model_inputs(config, batch)
  return np.asarray(model.apply({"params": restored["params"], "batch_stats": restored["batch_stats"]},
                                model_mfcc, frames, train=False))


@needs_clips
@pytest.mark.slow
def test_export_gives_the_trained_models_logits_on_real_clips(small_avtca_workdir, exported):
  pytest.importorskip("facenet_pytorch")
  from avtca_jax import export, predict
  info = json.loads((exported / "export.json").read_text())
  assert info["platforms"] == ["cpu", "cuda", "tpu"] and info["kind"] == "workdir" and not info["audio_only"]
  assert info["classes"] == list(predict.EMOTIONS)  # a RAVDESS run: model.json's names, RAVDESS's eight
  assert any("generated data" in w for w in info["warnings"])
  features = [predict.features(str(ACTOR05 / name), None, audio_only=False) for name in CLIPS]
  mfcc = np.stack([m for m, _ in features]).astype(np.float32)  # (2, 156, 10)
  crops = np.stack([c for _, c in features])  # (2, 15, 224, 224, 3) uint8
  expected = _training_stack_logits(small_avtca_workdir, mfcc, crops)
  reloaded = export.load(str(exported))
  got = reloaded.logits(mfcc, crops)  # the batch of 2 through the symbolic batch dimension
  assert got.shape == (2, 8)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
  one = reloaded.logits(mfcc[:1], crops[:1])  # and a batch of 1 through the same export
  np.testing.assert_allclose(one, expected[:1], rtol=1e-5, atol=1e-5 * np.abs(expected).max())
  assert not np.allclose(got[0], got[1])  # two different clips, two different answers


@needs_clips
@pytest.mark.slow
def test_predict_with_an_export_needs_no_training_stack(exported):
  """`predict EXPORT clip.mp4` in a fresh process: probabilities, and none of flax/orbax/optax/TF imported."""
  pytest.importorskip("facenet_pytorch")
  code = (f"import sys; from avtca_jax import predict; rc = predict.main([{str(exported)!r}, "
          f"{str(ACTOR05 / CLIPS[0])!r}]); loaded = [m for m in {TRAINING_STACK!r} if m in sys.modules]; "
          "print('loaded:', loaded); sys.exit(rc)")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.strip().splitlines()
  assert lines[0].startswith(CLIPS[0] + ": ") and lines[-1] == "loaded: []"
  assert sum(float(line.split()[-1]) for line in lines[1:9]) == pytest.approx(1.0, abs=1e-3)
  assert "trained on generated data" in result.stderr  # the export keeps the model's warnings


def test_audio_only_export_round_trip(tmp_path):
  """An audio model exports to f(mfcc) and reloads to the same logits (any batch size)."""
  from avtca_jax import checkpoint_kinds, export
  from test_evaluate import _config, write_untrained_workdir
  workdir = write_untrained_workdir(tmp_path / "audio", _config(model="audio", **{"data.source": "synthetic"}))
  loaded = checkpoint_kinds.load(str(workdir))
  exported = export.export_model(loaded, platforms=("cpu",))
  export.save(str(tmp_path / "exported"), loaded, exported)
  reloaded = export.load(str(tmp_path / "exported"))
  assert reloaded.audio_only and reloaded.num_classes == 8
  assert reloaded.class_names == loaded.class_names == ("neutral", "calm", "happy", "sad", "angry", "fearful",
                                                        "disgust", "surprised")
  mfcc = np.random.default_rng(0).normal(size=(3, 156, 10)).astype(np.float32) * 50
  import jax
  expected = np.asarray(jax.jit(loaded.forward())(mfcc))
  np.testing.assert_allclose(reloaded.logits(mfcc), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_export_json_lists_the_models_classes(tmp_path_factory, tmp_path, capsys):
  """A CREMA-D run exports with CREMA-D's six classes in export.json (label order: logit i is classes[i]),
  and predict on the export names them for CREMA-D's own flv."""
  from avtca_jax import export, predict
  from test_predict import CREMA_D_CLASSES, CREMA_D_CLIP, crema_d_workdir
  out = tmp_path / "crema_d_export"
  assert export.main([str(crema_d_workdir(tmp_path_factory)), "--output", str(out), "--platforms", "cpu"]) == 0
  assert "6 classes" in capsys.readouterr().out
  info = json.loads((out / "export.json").read_text())
  assert info["classes"] == list(CREMA_D_CLASSES)
  reloaded = export.load(str(out))
  assert reloaded.class_names == CREMA_D_CLASSES and reloaded.num_classes == 6
  if not CREMA_D_CLIP.is_file() or importlib.util.find_spec("facenet_pytorch") is None:
    return
  assert predict.main([str(out), str(CREMA_D_CLIP)]) == 0
  first, *rest = capsys.readouterr().out.strip().splitlines()
  assert first.startswith("1001_DFA_ANG_XX.flv: ") and "; label anger; audio: the video's soundtrack" in first
  assert [line.split()[0] for line in rest] == list(CREMA_D_CLASSES)


# ---- The consumer's environment ------------------------------------------------------------------------

SERVING_DOC = ROOT / "docs" / "export.md"


def _serving_pins() -> dict:
  """{distribution: version} from the `pip install jax==...` line of docs/export.md."""
  line = next(line for line in SERVING_DOC.read_text().splitlines() if line.strip().startswith("pip install jax=="))
  return dict(item.split("==") for item in line.split()[2:])


def _with_requirements(names) -> set:
  """`names` and every distribution they require, as installed (extras left out)."""
  from importlib import metadata
  found, todo = set(), [n.lower().replace("-", "_") for n in names]
  while todo:
    name = todo.pop()
    if name in found:
      continue
    found.add(name)
    for requirement in metadata.requires(name) or []:
      if "extra ==" not in requirement:
        todo.append(re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("-", "_"))
  return found


def _serving_site(directory: Path, distributions) -> Path:
  """A folder holding only `distributions` (links to their installed top-level folders and metadata)."""
  from importlib import metadata
  directory.mkdir()
  for name in distributions:
    dist = metadata.distribution(name)
    for top in sorted({str(f).split("/")[0] for f in dist.files if not str(f).startswith("..")}):
      source = Path(dist.locate_file(top))
      if source.exists() and not (directory / top).exists():
        (directory / top).symlink_to(source)
  return directory


def _run_isolated(site: Path, code: str) -> subprocess.CompletedProcess:
  """Python without site-packages or environment variables (-I -S): the standard library plus `site`."""
  return subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {str(site)!r})\n{code}"],
                        cwd=site, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}, capture_output=True,
                        text=True, timeout=600)


LOAD_EXPORT = """
import importlib.util, json, sys
import jax, numpy as np
assert all(importlib.util.find_spec(m) is None for m in ("flax", "orbax", "tensorflow", "avtca_jax", "torch"))
exported = jax.export.deserialize(bytearray(open(sys.argv[1] if len(sys.argv) > 1 else "{model}", "rb").read()))
inputs = np.load("{inputs}")
np.save("{out}", np.asarray(jax.jit(exported.call)(inputs["mfcc"], inputs["frames"])))
"""


@pytest.mark.slow
def test_an_export_loads_with_the_documented_packages_alone(small_avtca_workdir, exported, tmp_path):
  """docs/export.md's `pip install` line is the serving environment: with only those distributions and what
  they require (its pins agree with requirements.txt) an export gives the full environment's logits exactly
  and the training code's within 1e-5; without flatbuffers `jax.export.deserialize` fails."""
  from avtca_jax import export
  pins = _serving_pins()
  assert set(pins) == {"jax", "jaxlib", "numpy", "flatbuffers"}
  required = dict(re.findall(r"^([\w.-]+)==(\S+)", (ROOT / "requirements.txt").read_text(), flags=re.M))
  assert {n: v for n, v in pins.items() if n in required} == {n: required[n] for n in pins if n in required}

  rng = np.random.default_rng(0)
  mfcc = (rng.normal(0.0, 25.0, (2, 156, 10)) - np.array([400.0] + [0.0] * 9)).astype(np.float32)
  crops = rng.integers(0, 256, (2, 15, 224, 224, 3), dtype=np.uint8)
  np.savez(tmp_path / "inputs.npz", mfcc=mfcc, frames=crops)
  code = LOAD_EXPORT.format(model=exported / export.MODEL_FILE, inputs=tmp_path / "inputs.npz",
                            out=tmp_path / "logits.npy")

  result = _run_isolated(_serving_site(tmp_path / "site", _with_requirements(pins)), code)
  assert result.returncode == 0, result.stderr[-3000:]
  got = np.load(tmp_path / "logits.npy")
  np.testing.assert_array_equal(got, export.load(str(exported)).logits(mfcc, crops))
  expected = _training_stack_logits(small_avtca_workdir, mfcc, crops)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())

  without = _run_isolated(_serving_site(tmp_path / "site_without_flatbuffers",
                                        _with_requirements(set(pins) - {"flatbuffers"})), code)
  assert without.returncode != 0 and "flatbuffers" in without.stderr, without.stderr[-3000:]
