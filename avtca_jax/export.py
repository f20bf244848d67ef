"""Export a trained or converted model for serving: `python -m avtca_jax.export MODEL --output DIR`.

MODEL is any checkpoint kind of avtca_jax.checkpoint_kinds (training workdir, checkpoint step, converted
checkpoint, the original's .pth). DIR receives
  model.jaxexport   `jax.export` serialisation (StableHLO with the weights as constants) of
                    f(mfcc (B, 156, 10) float32, frames (B, 15, 224, 224, 3) uint8 RGB) -> logits (B, C)
                    (audio-only models: f(mfcc)); B is symbolic, any batch size works
  export.json       classes (the model's class names, in label order: logit i is classes[i]), input
                    contract, source checkpoint, platforms, warnings
Everything after preprocessing is inside: the run's MFCC normalisation, channel order, the resize to the
model's input size, the model. Inputs are what avtca_jax.preprocessing produces (raw MFCCs at 22050 Hz,
MTCNN face crops); `python -m avtca_jax.predict DIR clip.mp4` runs an export on a clip.

Why jax.export rather than a TensorFlow SavedModel (jax2tf): reloading needs only `jax`, `numpy` and
`flatbuffers` (which `jax.export.deserialize` imports; no TensorFlow, flax, orbax or this package), the
serialised StableHLO runs on every platform it was lowered for (CPU, CUDA, TPU by default) with the same
numerics as the trained model, and jax keeps deserialising an export for at least six months of newer
versions. A SavedModel suits TF Serving or TFLite users, but adds TensorFlow as a dependency and a second
conversion whose numerics differ (jax2tf's native lowering is jax.export underneath anyway).

Reload without this package (`pip install jax flatbuffers`):
    exported = jax.export.deserialize(bytearray(open("DIR/model.jaxexport", "rb").read()))
    logits = exported.call(mfcc, frames)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from avtca_jax import console
from avtca_jax.preprocessing.audio import MFCC_SHAPE  # numpy only: loading an export needs no flax
from avtca_jax.preprocessing.config import NUM_FRAMES, PreprocessConfig

MODEL_FILE = "model.jaxexport"
INFO_FILE = "export.json"
FORMAT = "avtca-jax export 1"
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")


def is_export(path: str) -> bool:
  return os.path.isfile(os.path.join(path, INFO_FILE)) and os.path.isfile(os.path.join(path, MODEL_FILE))


def export_model(loaded, platforms: Sequence[str] = DEFAULT_PLATFORMS):
  """jax.export.Exported of `loaded.forward()` (a checkpoint_kinds.LoadedModel) with a symbolic batch."""
  import jax
  from jax import export as jax_export
  batch, = jax_export.symbolic_shape("b")
  mfcc = jax.ShapeDtypeStruct((batch,) + MFCC_SHAPE, np.float32)
  forward = loaded.forward()
  if loaded.audio_only:
    return jax_export.export(jax.jit(lambda m: forward(m)), platforms=tuple(platforms))(mfcc)
  frames, crop = NUM_FRAMES, PreprocessConfig.crop_size  # what preprocessing writes
  if loaded.config.num_frames != frames:
    raise ValueError(f"{loaded.path}: the model takes {loaded.config.num_frames} frames per clip, preprocessing "
                     f"gives {frames}: it cannot run on preprocessed clips")
  video = jax.ShapeDtypeStruct((batch, frames, crop, crop, 3), np.uint8)
  return jax_export.export(jax.jit(forward), platforms=tuple(platforms))(mfcc, video)


def save(directory: str, loaded, exported) -> Dict[str, Any]:
  """Write DIR/model.jaxexport and DIR/export.json; returns the info."""
  from etils import epath
  out = epath.Path(directory)
  out.mkdir(parents=True, exist_ok=True)
  out.joinpath(MODEL_FILE).write_bytes(bytes(exported.serialize()))
  import jax
  info = dict(
      format=FORMAT, classes=list(loaded.class_names), audio_only=loaded.audio_only,
      inputs=({"mfcc": "float32 (B, 156, 10): raw MFCCs of avtca_jax.preprocessing.audio (22050 Hz, 3.6 s)"} |
              ({} if loaded.audio_only else
               {"frames": "uint8 (B, 15, 224, 224, 3): RGB MTCNN face crops of avtca_jax.preprocessing"})),
      outputs="float32 (B, C) logits; softmax gives the probabilities",
      mfcc_normalization=loaded.mfcc_normalization()["mode"], model_image_size=loaded.config.image_size,
      channel_order=loaded.config.channel_order, source=os.path.abspath(loaded.checkpoint), kind=loaded.kind,
      step=loaded.step, platforms=list(exported.platforms), jax_version=jax.__version__,
      warnings=loaded.warnings())
  out.joinpath(INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
  return info


class ExportedModel:
  """A reloaded export: `logits(mfcc, frames)` with only jax, numpy and flatbuffers (no flax, orbax or
  TensorFlow)."""

  def __init__(self, directory: str):
    import jax
    from jax import export as jax_export
    # pathlib, not etils: a consumer of an export may have only jax, numpy and flatbuffers.
    self.info = json.loads(Path(directory, INFO_FILE).read_text())
    if self.info.get("format") != FORMAT:
      raise ValueError(f"{directory}/{INFO_FILE}: format {self.info.get('format')!r}, expected {FORMAT!r}: "
                       "export it again with this version")
    try:
      self.exported = jax_export.deserialize(bytearray(Path(directory, MODEL_FILE).read_bytes()))
    except Exception as error:  # a truncated or foreign file: flatbuffers/jax raise various errors
      raise ValueError(f"{directory}/{MODEL_FILE} cannot be deserialised ({type(error).__name__}): export "
                       "the model again") from error
    platform = jax.default_backend()
    if platform not in self.exported.platforms:
      raise ValueError(f"{directory} was exported for {self.exported.platforms}, this machine runs {platform}: "
                       f"export again with --platforms={platform}")
    self.audio_only = bool(self.info["audio_only"])
    self.class_names = tuple(str(c) for c in self.info["classes"])  # label order
    self.num_classes = len(self.class_names)
    self.warnings: List[str] = list(self.info.get("warnings", []))
    self._call = jax.jit(self.exported.call)

  def logits(self, mfcc: np.ndarray, frames: Optional[np.ndarray] = None) -> np.ndarray:
    if self.audio_only:
      return np.asarray(self._call(np.asarray(mfcc, np.float32)))
    return np.asarray(self._call(np.asarray(mfcc, np.float32), np.asarray(frames, np.uint8)))


def load(directory: str) -> ExportedModel:
  return ExportedModel(directory)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m avtca_jax.export", description=__doc__.split("\n\n")[0])
  parser.add_argument("model", help="training workdir, checkpoint step, converted checkpoint or PyTorch .pth")
  parser.add_argument("--output", required=True, help="folder to create (model.jaxexport, export.json)")
  parser.add_argument("--platforms", default=",".join(DEFAULT_PLATFORMS),
                      help="platforms to lower for, comma-separated (cpu, cuda, rocm, tpu)")
  console.add_common_arguments(parser)
  args = parser.parse_args(argv)
  console.start(args)
  try:
    if os.path.exists(args.output) and not os.path.isdir(args.output):
      raise FileExistsError(f"--output {args.output} is a file: choose a new folder")
    if os.path.exists(args.output) and os.listdir(args.output):
      raise FileExistsError(f"--output {args.output} exists and is not empty: choose a new folder")
    platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
    unknown = sorted(set(platforms) - {"cpu", "cuda", "rocm", "tpu"})
    if unknown or not platforms:
      raise ValueError(f"--platforms {args.platforms}: expected some of cpu, cuda, rocm, tpu")
    from avtca_jax import checkpoint_kinds
    loaded = checkpoint_kinds.load(args.model)
    exported = export_model(loaded, platforms)
    info = save(args.output, loaded, exported)
  except Exception as error:  # a user error is one line; a bug keeps its traceback
    console.exit_on_user_error(error, args.verbose)
  for warning in info["warnings"]:
    print(f"warning: {warning}", file=sys.stderr)
  size = os.path.getsize(os.path.join(args.output, MODEL_FILE))
  print(f"exported {info['kind']} {args.model} ({'audio-only' if info['audio_only'] else 'audio-video'}, "
        f"{len(info['classes'])} classes) for {', '.join(info['platforms'])}: "
        f"{os.path.join(args.output, MODEL_FILE)} ({size / 1e6:.1f} MB)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
