"""The builder's bridge to avtca_jax.preprocessing: run the resumable per-clip cache, list what it holds.

Face detection runs in a separate, clean Python process (which spawns the preprocessing workers): the
builder's process has TensorFlow loaded, and with the CUDA build of torch, tensorflow imported before
torchvision segfaults (inside triton). The per-clip .npz cache lives under
`<cache_dir>/<settings hash>/`, so an interrupted build, or a build of another config (with or without the
video-only copies), reuses every clip already done.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Tuple

_RUNNER = """
import json, sys
from avtca_jax.preprocessing.clips import preprocess_directory
from avtca_jax.preprocessing.config import PreprocessConfig
from avtca_jax import console
args = json.loads(sys.argv[1])
console.configure_logging(False)
config = PreprocessConfig.from_json(args["config"])
try:
  preprocess_directory(args["root"], args["out_dir"], args["workers"], config,
                       modalities=tuple(args["modalities"]), progress=True)
except Exception as error:  # one line (e.g. no usable clip in manual_dir), then the builder's own error
  console.exit_on_user_error(error)
"""


def default_workers() -> int:
  """One worker per core (each runs one torch thread), as `python -m avtca_jax.preprocess`."""
  return os.cpu_count() or 1


def preprocess_config(image_size: int):
  from avtca_jax.preprocessing.config import PreprocessConfig
  return PreprocessConfig(crop_size=image_size)


def run_preprocessing(manual_dir: Path, cache_dir: Path, *, include_video_only: bool, image_size: int,
                      workers: Optional[int] = None) -> Tuple[Path, dict]:
  """Preprocess `manual_dir` into the cache (only clips not cached yet); returns (clip folder, report)."""
  config = preprocess_config(image_size)
  settings = config.to_json()
  out_dir = Path(cache_dir) / hashlib.sha1(settings.encode()).hexdigest()[:12]
  out_dir.mkdir(parents=True, exist_ok=True)
  report_path = out_dir / "report.json"
  if report_path.exists():
    report_path.unlink()  # never read a previous run's report as this one's
  args = dict(root=str(manual_dir), out_dir=str(out_dir), workers=workers or default_workers(),
              config=settings, modalities=[1, 2] if include_video_only else [1])
  env = dict(os.environ)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  result = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(args)], env=env)
  if result.returncode != 0 or not report_path.exists():
    raise ValueError(f"preprocessing of {manual_dir} failed (exit status {result.returncode}, the reason is "
                     f"printed above); rerun to continue from the cache in {out_dir}")
  return out_dir, json.loads(report_path.read_text())


def records(manual_dir: Path, cache_dir: Path, *, include_video_only: bool, image_size: int,
            workers: Optional[int] = None) -> Tuple[List[dict], dict]:
  """One record per usable clip (stem, label, actor, modality, filled_frames, load()), and the report."""
  from avtca_jax.preprocessing.clips import cache_path, load_clip
  from avtca_jax.preprocessing.names import parse_name
  manual_dir = Path(manual_dir)
  if not manual_dir.is_dir():
    raise FileNotFoundError(f"manual_dir {manual_dir} does not exist: download RAVDESS into it (docs/data.md)")
  out_dir, report = run_preprocessing(manual_dir, cache_dir, include_video_only=include_video_only,
                                      image_size=image_size, workers=workers)
  filled = report.get("filled_frames_by_clip", {})
  out = []
  for stem in sorted(set(report.get("written", [])) | set(report.get("cached", []))):
    name = parse_name(stem)
    path = cache_path(out_dir, stem)
    out.append(dict(stem=stem, label=name.label, actor=name.actor, modality=name.modality,
                    filled_frames=int(filled.get(stem, 0)), load=lambda path=path: load_clip(path)))
  return out, report
