"""The benchmark suite's machinery in its reduced (CI) mode: fields present and sane, not speed."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

STEP_FIELDS = {"framework", "device", "compile_s", "step", "eval_forward", "step_flops", "step_bytes_accessed", "peaks",
               "mfu", "roofline", "step_over_roofline", "clips_per_s", "images_per_s", "peak_rss_mb", "versions"}


def test_step_suite_quick_writes_every_field(tmp_path):
  out = tmp_path / "results.json"
  subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite=step", "--quick", "--no_append",
                  f"--workdir={tmp_path}", f"--out={out}"], check=True, cwd=REPO, timeout=900)
  results = json.loads(out.read_text())
  assert {"command", "date", "machine", "versions", "step"} <= set(results)
  (row,) = results["step"]
  assert row["batch_size"] == 1 and row["dtype"] == "float32"
  assert STEP_FIELDS <= set(row["jax"]), STEP_FIELDS - set(row["jax"])
  assert {"step", "eval_forward", "clips_per_s", "peak_rss_mb", "versions"} <= set(row["torch"])
  for framework in ("jax", "torch"):
    assert row[framework]["step"]["median_s"] > 0
  assert row["jax"]["step_flops"] > 1e8  # a real program was analysed (the 32 px model is ~0.4 GFLOP per clip)
  assert 0 < row["jax"]["mfu"] < 1
