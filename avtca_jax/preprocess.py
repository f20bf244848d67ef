"""Preprocess a RAVDESS or CREMA-D folder into per-clip .npz files (face crops + MFCC) and a report.

  python -m avtca_jax.preprocess --input ~/RAVDESS --output ~/ravdess_npz --workers 2
  python -m avtca_jax.preprocess --dataset crema_d --input ~/CREMA-D --output ~/crema_d_npz

A CREMA-D folder holds VideoFlash/*.flv and, optionally, AudioWAV/*.wav (else each video's own soundtrack).

The input is the official zips unpacked into Actor_XX/ folders (Video_Speech_Actor_XX.zip and
Audio_Speech_Actors_01-24.zip; mp4 and wav side by side or in separate trees). Rerunning the same command
continues an interrupted run; a clip is redone when its settings or its input files (size, mtime) changed.
Symlinked files and folders are followed. `--audio DIR` adds a separate folder of audio files. The report
(cumulative for the output folder, with one line per run) is printed and saved as <output>/report.json.
Exit status 0 when every clip was written (or was cached), 1 when some were skipped or when nothing usable
was found (then no output folder is created); a bad argument ends with a one-line error.
"""

from __future__ import annotations

import argparse
import os
import sys

from avtca_jax import console
from avtca_jax.preprocessing.clips import format_report, preprocess_directory
from avtca_jax.preprocessing.config import PreprocessConfig
from avtca_jax.preprocessing.names import NAMINGS


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m avtca_jax.preprocess", description=__doc__.split("\n\n")[0])
  p.add_argument("--input", required=True, help="RAVDESS folder (Actor_XX/ with .mp4 and .wav), or a CREMA-D "
                 "folder with --dataset crema_d")
  p.add_argument("--dataset", choices=sorted(NAMINGS), default="ravdess", help="whose file names the clips carry")
  p.add_argument("--output", required=True, help="folder for <stem>.npz files and report.json")
  p.add_argument("--audio", default=None, help="a separate folder with the audio (.wav/.flac) files (searched "
                 "recursively, in addition to --input)")
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                 help="worker processes, one torch thread each (default: CPU cores; 0 = in this process)")
  p.add_argument("--modalities", default="1,2", help="video modalities to use: '1,2' (default) or '1' "
                 "(drop the video-only copies, which share their audio with the 01 clips)")
  p.add_argument("--margin", type=float, default=0.0, help="face box margin, fraction of the box per side")
  p.add_argument("--past-end", choices=("hold", "zeros"), default="hold",
                 help="window positions after a short clip's last frame: repeat it, or black (the original)")
  p.add_argument("--detect-max-side", type=int, default=320,
                 help="longer side of the frames MTCNN sees, in pixels; 0 = full resolution (slow)")
  p.add_argument("--no-soundtrack-fallback", action="store_true",
                 help="report 01 clips without a wav instead of using the mp4's own soundtrack")
  p.add_argument("--device", default=None, help="torch device for MTCNN (default: cuda if available)")
  p.add_argument("--limit", type=int, default=None, help="only the first N clips (for a quick try)")
  p.add_argument("--verbose", action="store_true", help="library log messages and full error tracebacks")
  args = p.parse_args(argv)
  console.configure_logging(args.verbose)
  try:
    modalities = tuple(int(m) for m in args.modalities.split(","))
    if not set(modalities) <= {1, 2}:
      raise ValueError(f"--modalities {args.modalities}: expected '1,2' or '1'")
    config = PreprocessConfig(margin=args.margin, past_end=args.past_end,
                              detect_max_side=args.detect_max_side or None, device=args.device)
    report = preprocess_directory(args.input, args.output, args.workers, config, modalities=modalities,
                                  soundtrack_fallback=not args.no_soundtrack_fallback, limit=args.limit,
                                  audio_root=args.audio, naming=args.dataset)
  except Exception as error:  # a user error is one line; a bug keeps its traceback
    console.exit_on_user_error(error, args.verbose)
  print(format_report(report))
  return 0 if report["clips_skipped"] == 0 else 1


if __name__ == "__main__":
  sys.exit(main())
