"""Ahead-of-time compilation of the trainer's step for accelerator targets (benchmarks/aot.py).

The TPU test compiles through libtpu's deviceless topology on this CPU machine: a small configuration (32 px
crops) of the real train step for a 16-chip, 4-host v5e slice. CI installs requirements-tpu.txt and sets
AVTCA_REQUIRE_TPU_COMPILER=1, so there the test fails rather than skips when libtpu is missing.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from benchmarks import aot, hardware

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _require_libtpu():
  if importlib.util.find_spec("libtpu") is None:
    if os.environ.get("AVTCA_REQUIRE_TPU_COMPILER"):
      pytest.fail("libtpu is not installed but AVTCA_REQUIRE_TPU_COMPILER is set: "
                  "pip install -r requirements-tpu.txt")
    pytest.skip("libtpu not installed (pip install -r requirements-tpu.txt); CI installs it")


def test_targets_are_consistent():
  for target in aot.TARGETS.values():
    assert target.chip in hardware.CHIPS
    assert target.num_devices % target.num_hosts == 0
    if target.platform == "cuda":
      assert target.topology == f"1x{target.num_hosts}x{target.num_devices // target.num_hosts}"
      assert hardware.CHIPS[target.chip].gpu is not None


def test_chip_lookup_by_device_kind():
  assert hardware.chip_for_device_kind("TPU v5 lite").name == "TPU v5e"
  assert hardware.chip_for_device_kind("TPU v5").name == "TPU v5p"
  assert hardware.chip_for_device_kind("NVIDIA H100 80GB HBM3").name.startswith("NVIDIA H100")
  assert hardware.chip_for_device_kind("cpu") is None


def test_hlo_facts_reads_partitions_parameters_and_all_reduces():
  hlo = ("HloModule jit_step, num_partitions=4\n\n%add {\n}\n\nENTRY %main.1 {\n"
         "  %p0 = f32[3]{0} parameter(0)\n  %p1 = u8[2,15,32,32,3]{4,3,2,1,0} parameter(1)\n"
         "  %ar = f32[3]{0} all-reduce(%p0), replica_groups=[1,4]<=[4], to_apply=%add\n}\n")
  facts = aot.hlo_facts(hlo)
  assert facts == {"num_partitions": 4, "entry_parameters": ["f32[3]", "u8[2,15,32,32,3]"], "all_reduce_ops": 1}


def test_estimate_is_the_slower_of_compute_and_memory():
  chip = hardware.CHIPS["tpu-v5e"]
  out = aot.estimate({"flops": 8 * 197e9, "bytes_accessed": 8 * 0.1e9}, 8, chip, "bfloat16")
  assert out["flops_per_clip"] == pytest.approx(197e9)
  assert out["roofline_clips_per_s"] == pytest.approx(1000.0)  # 197 GFLOP at 197 TFLOP/s: 1 ms
  assert out["bound"] == "compute"
  memory_bound = aot.estimate({"flops": 1e9, "bytes_accessed": 819e9}, 1, chip, "bfloat16")
  assert memory_bound["bound"] == "memory" and memory_bound["roofline_clips_per_s"] == pytest.approx(1.0)


@pytest.mark.slow
def test_train_step_compiles_for_a_multi_host_tpu_slice(tmp_path):
  """The trainer's own train step, 32 px crops, 2 clips per chip, for v5e 4x4 (16 chips on 4 hosts)."""
  _require_libtpu()
  out = tmp_path / "v5e-16.json"
  # The trainer's config and overrides, as `python -m avtca_jax.train` takes them: a global batch of 32 is
  # 2 clips on each of the 16 chips.
  cmd = [sys.executable, "-m", "benchmarks.aot", "--target=v5e-16", "--config=configs/ravdess.py:fold1",
         "--config.image_size=32", "--config.batch_size=32", "--config.dtype=bfloat16",
         "--config.compilation_cache_dir=none", f"--out={out}"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  # The report says when, where, with what and how it was made, and which config it compiled.
  assert {"date", "machine", "versions", "command"} <= set(report) and report["versions"]["jax"]
  assert report["command"].startswith("python -m benchmarks.aot --target=v5e-16 --config=configs/ravdess.py:fold1")
  assert report["config"]["batch_size"] == 32 and report["config"]["image_size"] == 32 and report["variant"] == "fold1"
  step = report["at_batch"]
  # The data axis spans every chip of every host: one SPMD program partitioned 16 ways, gradients all-reduced.
  assert report["devices"] == 16 and report["hosts"] == 4
  assert step["num_partitions"] == 16
  assert step["all_reduce_ops"] >= 1
  # The per-chip batch is the config's: the compiled program's frames parameter holds 2 clips of 15 frames.
  frames = [p for p in step["entry_parameters"] if p.startswith("u8[")]
  assert frames == ["u8[2,15,32,32,3]"], step["entry_parameters"]
  assert step["batch_per_device"] == 2
  # Memory is reported, and the state (about 2M float32 parameters, plus momentum) is among the arguments.
  memory = step["memory"]
  assert memory["temp"] > 0 and memory["argument"] > 2 * 2_000_000 * 4
  assert memory["total"] >= memory["temp"] and step["fits"]
  # The eval step compiles for the same mesh, with the same per-chip batch.
  assert report["eval"]["num_partitions"] == 16 and report["eval"]["memory"]["total"] > 0
  assert [p for p in report["eval"]["entry_parameters"] if p.startswith("u8[")] == ["u8[2,15,32,32,3]"]
  assert report["conv_impl"] == "grouped"  # backend choice made for the TPU, not for this CPU
  assert report["estimate"]["flops_per_clip"] > 0 and report["cost_source"] == "tpu"


def test_side_by_side_table_for_the_gpu_script(tmp_path):
  """benchmarks/gpu.sh's last step: measured step times beside the AOT roofline of the same dtype."""
  from benchmarks import side_by_side
  steps = {"step": [{"batch_size": 32, "dtype": "float32",
                     "jax": {"step": {"median_s": 0.1}}, "torch": {"step": {"median_s": 0.4}}}]}
  report = {"dtype": "float32", "estimate": {"roofline_clips_per_s": 800.0}, "largest": {"batch_per_device": 96}}
  (tmp_path / "gpu_step_float32.json").write_text(json.dumps(steps))
  (tmp_path / "aot_local_float32.json").write_text(json.dumps(report))
  found_steps, estimates = side_by_side.load([str(tmp_path / "gpu_step_float32.json"),
                                               str(tmp_path / "aot_local_float32.json")])
  row = side_by_side.table(found_steps, estimates).splitlines()[-1]
  assert row == "| float32 | 32 | 0.1000 | 0.4000 | 4.00x | 320.0 | 800 | 40% | 96 |"


def test_gpu_and_tpu_scripts_are_valid_bash():
  for script in ("gpu.sh", "tpu.sh"):
    assert subprocess.run(["bash", "-n", os.path.join(REPO, "benchmarks", script)]).returncode == 0


def test_aot_takes_the_trainers_config_and_refuses_a_batch_the_target_cannot_split():
  """`--config` and `--config.x=y` as the trainer takes them, validated as the trainer validates them; the
  batch is global, so it must split evenly over the target's devices (a one-line error before anything
  compiles); a config is required."""
  def aot(*args):
    return subprocess.run([sys.executable, "-m", "benchmarks.aot", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  proc = aot("--target=v5e-16", "--config=configs/ravdess.py:fold1", "--config.batch_size=8")
  assert proc.returncode == 1
  assert proc.stderr.strip() == ("error: config.batch_size=8 is not divisible by the 16 devices (global batch = "
                                 "devices x per-device batch); use a multiple of 16")
  assert "--config is required" in aot("--target=v5e-16").stderr
  # The trainer's validation: a value it refuses is refused here too, naming the key.
  refused = aot("--target=v5e-16", "--config=configs/ravdess.py:fold1", "--config.learning_rate=-1")
  assert refused.returncode == 1 and refused.stderr.strip().startswith("error: config.learning_rate=-1")
  assert "unknown config key 'no_such_key'" in aot("--target=v5e-16", "--config=configs/ravdess.py:fold1",
                                                   "--config.no_such_key=1").stderr


def test_config_for_batch_spreads_the_batch_over_the_devices():
  from avtca_jax import train
  config = train.default_config("fold1")
  config.lock()
  probe = aot.config_for_batch(config, 24, 8)
  assert probe.batch_size == 192 and config.batch_size == 8  # a copy: the parsed config stays as given
  assert probe.image_size == config.image_size and probe.variant == "fold1"


def test_batch_search_brackets_the_largest_and_keeps_each_probe_cost(monkeypatch):
  """find_largest on a fake compiler whose memory is 1 GiB + 0.5 GiB per clip (16 GiB chip): the line
  predicts 24, 24 fits, 32 does not, and every probe keeps its own cost (bytes per clip depend on the batch)."""
  from benchmarks import aot, hardware
  gib = 2**30

  def fake_compile(batch, mesh):
    return {"compile_s": 1.0, "memory": {"total": int(gib + batch * gib / 2), "argument": gib},
            "cost": {"flops": 1e9 * batch, "bytes_accessed": 1e8 * batch * batch}}

  monkeypatch.setattr(aot, "compile_step", fake_compile)
  chip = hardware.CHIPS["tpu-v5e"]
  best, result, probes, model = aot.find_largest(lambda b: b, None, chip, "tpu", 0.75, probes=(8, 16),
                                                 max_compiles=4, log=lambda *_: None)
  assert best == 24 and model["predicted_largest"] == 24 and model["bracketed"]
  assert [(p["batch_per_device"], p["fits"]) for p in probes] == [(8, True), (16, True), (24, True), (32, False)]
  assert [p["cost"]["bytes_accessed"] for p in probes] == [1e8 * b * b for b in (8, 16, 24, 32)]
