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
         "--config.compilation_cache_dir=none", "--buffers", f"--out={out}"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  # `--buffers` alone: the 20 largest buffers of XLA's buffer assignment, in the log and the report; the
  # TPU's allocations in HBM hold the arguments memory_analysis counts, and the donated state.
  account = report["at_batch"]["buffers"]
  assert len(account["largest"]) == aot.DEFAULT_BUFFERS and "largest buffers of" in proc.stdout
  assert account["allocation_totals"]["hbm argument"] == report["at_batch"]["memory"]["argument"]
  assert account["live_out_argument_totals"]["hbm"] == report["at_batch"]["memory"]["alias"]
  assert {r["memory_space"] for r in account["largest"]} <= {"hbm", "vmem", "smem", "sflag"}
  assert all(r["layout"] and ":T(" in r["layout"] for r in account["largest"] if r["dims"])  # tiled layouts
  assert "buffers" not in report["eval"]  # the train step only
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
  from avtca_jax import config_validation
  config = config_validation.default_config("fold1")
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


def test_batch_search_counts_a_batch_that_recomputes_as_not_fitting(monkeypatch):
  """A batch that compiles on the memory line but with more FLOPs per clip (the compiler recomputing
  activations to fit) is not a fit, and the search steps back."""
  from benchmarks import aot, hardware
  gib = 2**30

  def fake_compile(batch, mesh):
    flops = 1e9 * batch * (1.2 if batch >= 24 else 1.0)
    return {"compile_s": 1.0, "memory": {"total": int(gib + batch * gib / 2), "argument": gib},
            "cost": {"flops": flops, "bytes_accessed": 1e8 * batch}}

  monkeypatch.setattr(aot, "compile_step", fake_compile)
  chip = hardware.CHIPS["tpu-v5e"]
  best, result, probes, model = aot.find_largest(lambda b: b, None, chip, "tpu", 0.75, probes=(8, 16),
                                                 max_compiles=4, log=lambda *_: None)
  assert best == 16 and model["predicted_largest"] == 24
  assert [(p["batch_per_device"], p["fits"], p["recomputes"]) for p in probes] == [
      (8, True, False), (16, True, False), (24, False, True)]


# ---- The buffer account (`--buffers`, benchmarks/buffers.py) --------------------------------------------

# Excerpts of what XLA dumps for a small program compiled for TPU v5e (a matmul's gradient over 4 chips).
_ASSIGNMENT = """BufferAssignment:
allocation 0: size 512, thread-local:
 value: <2 add.1 @0> (size=512,offset=0): f32[]{:T(128)}
allocation 1: size 131072, output shape is |f32[128,256]|, maybe-live-out:
 value: <32 all-reduce @0> (size=131072,offset=0): f32[128,256]{1,0:T(8,128)}
allocation 2: size 131072, parameter 1, shape |f32[128,256]| at ShapeIndex {}:
 value: <27 param.1 @0> (size=131072,offset=0): f32[128,256]{1,0:T(8,128)}
allocation 3: size 8192, parameter 0, shape |f32[16,100]| at ShapeIndex {}:
 value: <26 param @0> (size=8192,offset=0): f32[16,100]{1,0:T(8,128)}
allocation 8: size 262144, color 1, preallocated-temp:
 value: <29 copy-start{0} @1> (size=131072,offset=0): f32[128,256]{1,0:T(8,128)S(1)}
 value: <31 fusion @1> (size=131072,offset=131072): f32[128,256]{1,0:T(8,128)S(1)}
"""
_VALUES = """
<26 param @0>
 from instruction: %param = f32[16,100]{1,0:T(8,128)} parameter(0), sharding={devices=[4,1]<=[4]}, metadata={op_name="batch[\\'frames\\']"}
<29 copy-start{0} @1>
 from instruction: %copy-start = (f32[128,256]{1,0:T(8,128)S(1)}, f32[128,256]{1,0:T(8,128)}, u32[]{:S(2)}) copy-start(%param.1), cross_program_prefetch_index=0
<27 param.1 @0>
 from instruction: %param.1 = f32[128,256]{1,0:T(8,128)} parameter(1), sharding={replicated}, metadata={op_name="state.opt_state[1].momentum[\\'x\\']"}
<31 fusion @1>
 from instruction: %fusion = f32[128,256]{1,0:T(8,128)S(1)} fusion(%param, %copy-done), kind=kOutput, calls=%fused_computation.1, metadata={op_name="jit(f)/transpose(jvp(AVTCA))/visual_backbone/stage2_0/branch2_1/mul" stack_frame_id=2}
<32 all-reduce @0>
 from instruction: %all-reduce = f32[128,256]{1,0:T(8,128)} all-reduce(%fusion), channel_id=1, to_apply=%add.clone, metadata={op_name="jit(f)/psum" stack_frame_id=1}
"""
_MODULE = """HloModule jit_f

FileNames
1 "/repo/avtca_jax/steps.py"
2 "/repo/avtca_jax/models/layers.py"

FunctionNames
1 "train_step"
2 "batch_norm_train"

FileLocations
1 {file_name_id=1 function_name_id=1 line=15}
2 {file_name_id=2 function_name_id=2 line=10}

StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=2 parent_frame_id=1}

ENTRY %main {
}
"""


def test_buffer_account_reads_xlas_buffer_assignment():
  """Values of every allocation but the thread-local ones, largest first, each with its laid-out size, data
  size, memory space and kind, the instruction that defines it and the part of the model it belongs to
  (from the instruction's Python stack, its op_name, or for arguments their path in the step's arguments)."""
  from benchmarks import buffers
  out = buffers.account(_ASSIGNMENT, _VALUES, _MODULE, top=10, tpu=True)
  assert out["values"] == 5  # the thread-local scalar is left out
  first = out["largest"][0]
  assert first["size"] == 131072 and first["dtype"] == "f32" and first["dims"] == [128, 256]
  assert first["layout"] == "1,0:T(8,128)" and first["data_bytes"] == 128 * 256 * 4
  parameter = next(r for r in out["largest"] if r["value"] == "param")
  assert parameter["data_bytes"] == 6400 and parameter["size"] == 8192  # 100 columns padded to 128 lanes
  assert parameter["part"] == "inputs" and parameter["kind"] == "argument" and parameter["memory_space"] == "hbm"
  fusion = next(r for r in out["largest"] if r["value"] == "fusion")
  assert (fusion["opcode"], fusion["fusion_kind"], fusion["memory_space"]) == ("fusion", "kOutput", "vmem")
  assert fusion["part"] == "batch norm" and fusion["functions"] == ["batch_norm_train", "train_step"]
  # A copy has no op_name of its own: it takes its operand's (here an optimizer argument).
  copy = next(r for r in out["largest"] if r["value"] == "copy-start{0}")
  assert copy["op_name"].startswith("state.opt_state") and copy["part"] == "optimizer"
  assert out["allocation_totals"] == {"hbm output": 131072, "hbm argument": 139264, "vmem temp": 262144}
  assert out["by_part"]["batch norm"] == {"vmem temp": 131072}
  assert "state.opt_state[1].momentum['x']" in buffers.format_account(out)


_ENTRY = """ENTRY %main (param: f32[16,100], param.1: f32[128,256]) -> f32[128,256] {
  %param = f32[16,100]{1,0:T(8,128)} parameter(0), sharding={devices=[4,1]<=[4]}, metadata={op_name="batch[\\'frames\\']"}
  %param.1 = f32[128,256]{1,0:T(8,128)} parameter(1), sharding={replicated}, metadata={op_name="state.opt_state[1].momentum[\\'x\\']"}
  %copy-start = (f32[128,256]{1,0:T(8,128)S(1)}, f32[128,256]{1,0:T(8,128)}, u32[]{:S(2)}) copy-start(%param.1), cross_program_prefetch_index=0
  %copy-done = f32[128,256]{1,0:T(8,128)S(1)} copy-done(%copy-start)
  %fusion = f32[128,256]{1,0:T(8,128)S(1)} fusion(%param, %copy-done), kind=kOutput, calls=%fused_computation.1, metadata={op_name="jit(f)/transpose(jvp(AVTCA))/visual_backbone/stage2_0/branch2_1/mul" stack_frame_id=2}
  ROOT %all-reduce = f32[128,256]{1,0:T(8,128)} all-reduce(%fusion), channel_id=1, to_apply=%add.clone, metadata={op_name="jit(f)/psum" stack_frame_id=1}
}
"""


def test_traffic_counts_the_device_memory_each_instruction_reads_and_writes():
  """Per top-level instruction: operands read and result written in HBM (on-chip `S(1)` arrays are free),
  at their laid-out sizes from the buffer assignment; an asynchronous copy moves its result's bytes; views
  and the done halves of async pairs move nothing."""
  from benchmarks import buffers
  out = buffers.traffic(_MODULE.replace("ENTRY %main {\n}\n", _ENTRY), _VALUES, _ASSIGNMENT, tpu=True)
  rows = {r["instruction"]: r for r in out["largest"]}
  assert set(rows) == {"copy-start", "fusion", "all-reduce"}
  assert (rows["copy-start"]["read"], rows["copy-start"]["written"]) == (131072, 0)  # HBM -> VMEM prefetch
  assert rows["copy-start"]["part"] == "optimizer"  # its operand's op_name
  assert (rows["fusion"]["read"], rows["fusion"]["written"]) == (8192, 0)  # the padded parameter; VMEM output
  assert rows["fusion"]["part"] == "batch norm"
  assert (rows["all-reduce"]["read"], rows["all-reduce"]["written"]) == (0, 131072)
  assert out["total"] == 131072 + 8192 + 131072
  assert out["by_part"]["batch norm"] == {"read": 8192, "written": 0, "instructions": 1}
  # Without the TPU's memory spaces every array is device memory.
  assert buffers.traffic(_MODULE.replace("ENTRY %main {\n}\n", _ENTRY), _VALUES, _ASSIGNMENT)["total"] > out["total"]


def test_parts_of_the_model_from_op_names():
  from benchmarks import buffers
  part = lambda op_name, functions=(): buffers.part_of_model(op_name, [("", f) for f in functions])
  assert part("jit(train_step)/shard_map/jit(random_flip_and_rotate)/jit(flip_and_rotate)/gather") == "augmentation"
  assert part("jit(train_step)/shard_map/jvp(AVTCA)/visual_backbone/conv1_0/conv_general_dilated") == \
      "efficientface stem"
  assert part("transpose(jvp(AVTCA))/visual_backbone/stage3_2/branch2_3/conv_general_dilated") == \
      "efficientface stages"
  assert part("transpose(jvp(AVTCA))/visual_backbone/stage3_2/branch2_4/mul", ["_batch_stats"]) == "batch norm"
  assert part("jit(train_step)/shard_map/jvp(AVTCA)/visual_conv1d_2/conv/conv_general_dilated") == "temporal convs"
  assert part("transpose(jvp(AVTCA))/audio_conv1d_0/conv/conv_general_dilated") == "audio branch"
  assert part("jit(train_step)/shard_map/jvp(AVTCA)/final_attention/sub") == "fusion"
  assert part("jit(train_step)/shard_map/add", ["dampened_momentum.<locals>.update"]) == "optimizer"
  assert part("state.params['av1']['attn']['q']['kernel']") == "fusion"
  assert part("jit(train_step)/shard_map/psum_invariant") == "other"


def test_buffers_of_the_compiled_step_add_up_to_its_memory_analysis():
  """The trainer's train step (smoke config, 32 px, 1 clip) compiled for this CPU with the buffer account:
  real buffers, and the allocations add up to what `memory_analysis` says the program holds."""
  import jax
  from avtca_jax import config_validation
  from benchmarks import buffers
  config = config_validation.default_config("smoke")
  config.image_size, config.batch_size, config.compilation_cache_dir = 32, 1, "none"
  result = aot.compile_step(config, aot.data_mesh(jax.devices("cpu")[:1]), buffers=12)
  account, memory = result["buffers"], result["memory"]
  largest = account["largest"]
  assert len(largest) == 12 and account["values"] > 100
  assert [r["size"] for r in largest] == sorted((r["size"] for r in largest), reverse=True)
  for r in largest:
    assert r["size"] > 0 and r["dtype"] in ("f32", "bf16", "s32", "u8", "u32", "pred", "tuple")
    assert r["instruction"] and r["opcode"] and r["kind"] in ("argument", "output", "temp", "constant")
    assert r["part"] in buffers.PARTS
    if r["data_bytes"]:
      assert r["size"] >= r["data_bytes"]
  # The largest parameter and its momentum are among them, named by their path in the state.
  op_names = [r["op_name"] for r in largest]
  assert "state.params['visual_backbone']['conv5_0']['kernel']" in op_names
  assert any(n.startswith("state.opt_state") for n in op_names)
  totals = account["allocation_totals"]
  assert totals["device argument"] == memory["argument"]
  assert totals["device temp"] == memory["temp"]
  assert account["live_out_argument_totals"]["device"] == memory["alias"]  # the donated state
  assert totals["device output"] + memory["alias"] == memory["output"]
  # Every part of the model defines some of the temporaries.
  for part in ("augmentation", "efficientface stem", "efficientface stages", "batch norm", "temporal convs",
               "audio branch", "fusion"):
    assert account["by_part"][part].get("device temp", 0) > 0, part
  assert "optimizer" in account["by_part"]
  text = buffers.format_account(account)
  assert "efficientface stages" in text and "state.params['visual_backbone']['conv5_0']['kernel']" in text
