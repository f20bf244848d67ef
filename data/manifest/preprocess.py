"""Face crops and MFCCs of a manifest's clips, cached per clip: run in a clean process by the builder.

The builder's process has TensorFlow loaded (with the CUDA build of torch, tensorflow before torchvision
segfaults), so it runs `python -c` with `main(args)` of this module, which imports only numpy and
`avtca_jax.preprocessing`. Each clip is `avtca_jax.preprocessing.clips.clip_features` of its video and audio
(any file names), cached as `<out_dir>/<stem>.npz` with the preprocessing's own format: the cache is keyed on
the settings and on the inputs' size and modification time, so a rerun only does the clips not done yet.
Workers are spawned processes with one torch thread each (as `python -m avtca_jax.preprocess`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _run_one(task):
  """One clip -> its cache file. Never raises: a problem comes back as data (the clip is skipped)."""
  from avtca_jax.preprocessing import clips
  from avtca_jax.preprocessing.config import PreprocessConfig
  line, stem, video, audio, out_path, config_json, source = task
  start = time.perf_counter()
  try:
    clip = clips.clip_features(video, audio, PreprocessConfig.from_json(config_json))
    clips.save_clip(out_path, dict(clip, stem=stem), PreprocessConfig.from_json(config_json), source)
    return dict(line=line, stem=stem, video=video, status="written", filled_frames=int(clip["filled_frames"]),
                seconds=time.perf_counter() - start)
  except Exception as e:  # every failure is reported with the file and the reason; the run goes on
    return dict(line=line, stem=stem, video=video, status="skipped", reason=clips.failure_reason(e),
                seconds=time.perf_counter() - start)


def main(args_path: str) -> None:
  """args_path: a JSON file {out_dir, config (PreprocessConfig JSON), workers, progress, clips [{line, stem,
  video, audio}]}. Writes <out_dir>/report.json: written / cached stems, skipped clips with their reason,
  filled frames per clip."""
  from avtca_jax.preprocessing import clips
  from avtca_jax.preprocessing.config import PreprocessConfig

  args = json.loads(Path(args_path).read_text())
  started = time.time()
  out_dir = Path(args["out_dir"])
  out_dir.mkdir(parents=True, exist_ok=True)
  config = PreprocessConfig.from_json(args["config"])
  cached, tasks = [], []
  for c in args["clips"]:
    path = clips.cache_path(out_dir, c["stem"])
    source = clips.source_fingerprint(c["video"], c["audio"])
    if clips._cached_ok(path, config, source):
      cached.append(c)
    else:
      tasks.append((c["line"], c["stem"], c["video"], c["audio"], str(path), args["config"], source))
  workers = min(int(args["workers"]), len(tasks))
  bar = clips.progress_bar(len(tasks)) if tasks and args.get("progress", True) else None
  if tasks and workers <= 1:
    clips._init_worker()  # in this process: one torch and OpenCV thread, as every worker process has
  results = clips.run_tasks(_run_one, tasks, workers if workers > 1 else 0, bar,
                            lambda r: f"skipped line {r['line']} {r['video']}: {r['reason']}")
  filled = {r["stem"]: r["filled_frames"] for r in results if r["status"] == "written" and r["filled_frames"]}
  filled.update(clips.cached_frame_counts(out_dir, [c["stem"] for c in cached])[0])
  written = sorted(r["stem"] for r in results if r["status"] == "written")
  skipped = sorted(({"line": r["line"], "path": r["video"], "reason": r["reason"]} for r in results
                    if r["status"] == "skipped"), key=lambda s: s["line"])
  report = dict(source="manifest", output=str(out_dir), config=json.loads(args["config"]),
                seconds=round(time.time() - started, 2), workers=int(args["workers"]),
                clips_found=len(args["clips"]), clips_written=len(written), clips_cached=len(cached),
                clips_skipped=len(skipped), frames_filled=int(sum(filled.values())),
                filled_frames_by_clip=dict(sorted(filled.items())), written=written,
                cached=sorted(c["stem"] for c in cached), skipped=skipped)
  clips.write_report(out_dir, report, indent=1)


if __name__ == "__main__":
  main(sys.argv[1])
