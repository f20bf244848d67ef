"""Which buffers a compiled step materialises: XLA's buffer assignment, read back and attributed to the model.

    python -m benchmarks.aot --target=v5e-8 --config=configs/ravdess.py:fold1 --config.dtype=bfloat16 \
        --config.batch_size=64 --skip_eval_step --buffers=30 --out=runs/aot/v5e-8-buffers.json

`benchmarks.aot --buffers[=N]` compiles the train step with XLA's dump options (`xla_dump_to`,
`xla_dump_hlo_as_text`; debug output, the program is the same) and reads three of the files XLA writes for
the optimised module:

- `*after_optimizations-buffer-assignment.txt`: every allocation (its size, memory space ("color"), and
  whether it holds a parameter, an output, a constant or temporaries) and the logical buffers ("values") it
  holds, each with its size and offset and its shape with the layout XLA chose (tiling included, e.g.
  `bf16[480,56,56,58]{0,3,2,1:T(8,128)(2,1)}`);
- `*after_optimizations-buffer-assignment-values.txt`: for each value, the HLO instruction that defines it,
  with its `op_name` metadata (the jax function and Flax module path) and `stack_frame_id`;
- `*after_optimizations.txt`: the module, whose stack-frame tables turn a `stack_frame_id` into the Python
  functions that made the instruction (`BatchNorm.__call__`, `_warp_clip`, `dampened_momentum...`).

Each value is a buffer the program writes: its size is the padded size of its tiled layout (what memory it
takes); `data_bytes` is its elements times their width, so `size / data_bytes` is the padding. Thread-local
values (scalars inside reductions and other called computations) are left out. Buffers whose lives do not
overlap share memory, so sums of value sizes exceed the peak: they count bytes written, not bytes held.

Each buffer is attributed to a part of the model (PARTS) from its function stack and op_name; the account
sums the bytes per part and per kind (temporary, argument, output) and memory space.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Dict, Iterable, List, Optional, Tuple

PARTS = ("augmentation", "efficientface stem", "efficientface stages", "batch norm", "temporal convs",
         "audio branch", "fusion", "optimizer", "inputs", "other")

# TPU memory spaces ("colors"): 0 is HBM; the others are on-chip. GPU and CPU use color 0 for device memory.
TPU_SPACES = {0: "hbm", 1: "vmem", 2: "smem", 6: "sflag"}

_DTYPE_BITS = {"pred": 8, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "s16": 16, "u16": 16, "s32": 32, "u32": 32,
               "s64": 64, "u64": 64, "f16": 16, "bf16": 16, "f32": 32, "f64": 64, "c64": 64, "c128": 128,
               "f8e4m3fn": 8, "f8e5m2": 8, "token": 0}

_ALLOCATION = re.compile(r"^allocation (\d+): size (\d+)(.*):\s*$")
_VALUE = re.compile(r"^\s*value: <(\d+) ([^ >]+) @(\d+)> \(size=(\d+),offset=(\d+)\): (.*)$")
_ARRAY = re.compile(r"^([a-z0-9]+)\[([\d,]*)\](\{[^}]*\})?$")


def parse_buffer_assignment(text: str) -> List[dict]:
  """The allocations of a `*buffer-assignment.txt`: index, size, color, kind, parameter number, values."""
  allocations, current = [], None
  for line in text.splitlines():
    m = _ALLOCATION.match(line)
    if m:
      flags = m.group(3)
      color = re.search(r"\bcolor (\d+)", flags)
      parameter = re.search(r"\bparameter (\d+)", flags)
      if "thread-local" in flags:
        kind = "thread-local"
      elif parameter:
        kind = "argument"
      elif "constant" in flags:
        kind = "constant"
      elif "output shape is" in flags or "maybe-live-out" in flags:  # the output tuple and its leaves
        kind = "output"
      else:
        kind = "temp"
      current = {"index": int(m.group(1)), "size": int(m.group(2)), "color": int(color.group(1)) if color else 0,
                 "kind": kind, "parameter": int(parameter.group(1)) if parameter else None,
                 "live_out": "maybe-live-out" in flags or "output shape is" in flags, "values": []}
      allocations.append(current)
      continue
    m = _VALUE.match(line)
    if m and current is not None:
      current["values"].append({"id": int(m.group(1)), "name": m.group(2), "size": int(m.group(4)),
                                "offset": int(m.group(5)), "shape": m.group(6).strip()})
  return allocations


def parse_defining_instructions(text: str) -> Dict[int, str]:
  """Value id -> the text of the HLO instruction that defines it (`*buffer-assignment-values.txt`)."""
  out, current = {}, None
  for line in text.splitlines():
    if line.startswith("<"):
      m = re.match(r"<(\d+) ", line)
      current = int(m.group(1)) if m else None
    elif current is not None and line.startswith(" from instruction: "):
      out[current] = line[len(" from instruction: "):]
  return out


def parse_stack_frames(hlo_text: str) -> Dict[int, List[Tuple[str, str]]]:
  """stack_frame_id -> [(file, function)], innermost first, from the module's stack-frame tables."""
  sections: Dict[str, Dict[int, str]] = {}
  section = None
  for line in hlo_text.splitlines():
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      section = sections.setdefault(line, {})
      continue
    if section is None:
      continue
    m = re.match(r"^(\d+) (.*)$", line)
    if not m:
      if line.startswith(("%", "ENTRY", "HloModule")):
        section = None
        if "StackFrames" in sections:
          break
      continue
    section[int(m.group(1))] = m.group(2)
  unquote = lambda s: s.strip().strip('"')
  files = {k: unquote(v) for k, v in sections.get("FileNames", {}).items()}
  functions = {k: unquote(v) for k, v in sections.get("FunctionNames", {}).items()}
  locations = {}
  for k, v in sections.get("FileLocations", {}).items():
    f, fn = re.search(r"file_name_id=(\d+)", v), re.search(r"function_name_id=(\d+)", v)
    locations[k] = (files.get(int(f.group(1)), "") if f else "", functions.get(int(fn.group(1)), "") if fn else "")
  parents, frame_locations = {}, {}
  for k, v in sections.get("StackFrames", {}).items():
    loc, parent = re.search(r"file_location_id=(\d+)", v), re.search(r"parent_frame_id=(\d+)", v)
    frame_locations[k] = locations.get(int(loc.group(1)), ("", "")) if loc else ("", "")
    parents[k] = int(parent.group(1)) if parent else 0
  stacks = {}
  for frame in frame_locations:
    stack, seen, f = [], set(), frame
    while f in frame_locations and f not in seen:
      seen.add(f)
      stack.append(frame_locations[f])
      f = parents[f]
    stacks[frame] = stack
  return stacks


def instruction_facts(instruction: str) -> dict:
  """Opcode, fusion kind, op_name and stack_frame_id of an HLO instruction's text."""
  after = instruction.split(" = ", 1)[1] if " = " in instruction else instruction
  opcode = re.search(r"(?:^|[\s)}\]])([a-z][a-z0-9\-]*)\(", after)
  fusion_kind = re.search(r"\bkind=(k[A-Za-z]+)", instruction)
  op_name = re.search(r'op_name="((?:[^"\\]|\\.)*)"', instruction)
  frame = re.search(r"stack_frame_id=(\d+)", instruction)
  name = re.match(r"\s*%?([^\s=]+)", instruction)
  operands = re.search(r"\(([^()]*)\)", after[opcode.end() - 1:]) if opcode else None
  return {"operands": re.findall(r"%([^\s,)]+)", operands.group(1)) if operands else [],
          "instruction": name.group(1) if name else "", "opcode": opcode.group(1) if opcode else "",
          "fusion_kind": fusion_kind.group(1) if fusion_kind else None,
          "op_name": op_name.group(1).replace("\\'", "'") if op_name else "",
          "stack_frame_id": int(frame.group(1)) if frame else None}


def with_operand_name(facts: dict, by_name: Dict[str, dict]) -> dict:
  """Copies, bitcasts, async slices and other data movement carry no op_name: take their operand's (a few hops)."""
  for _ in range(4):
    if facts["op_name"] or not facts["operands"] or facts["operands"][0] not in by_name:
      break
    source = by_name[facts["operands"][0]]
    facts = dict(facts, op_name=source["op_name"], stack_frame_id=source["stack_frame_id"],
                 operands=source["operands"])
  return facts


def shape_facts(shape: str) -> dict:
  """dtype, dimensions, layout text and unpadded data bytes of `f32[8,64]{1,0:T(8,128)}` (None for tuples)."""
  m = _ARRAY.match(shape.strip())
  if not m:
    return {"dtype": "tuple" if shape.strip().startswith("(") else shape.strip(), "dims": None, "layout": None,
            "data_bytes": None}
  dims = [int(d) for d in m.group(2).split(",") if d]
  elements = 1
  for d in dims:
    elements *= d
  bits = _DTYPE_BITS.get(m.group(1))
  return {"dtype": m.group(1), "dims": dims, "layout": m.group(3)[1:-1] if m.group(3) else "",
          "data_bytes": elements * bits // 8 if bits is not None else None}


_AUGMENT_FUNCTIONS = ("model_inputs", "modality_dropout", "softhard", "noise", "sample_flip_and_angle",
                      "random_flip_and_rotate", "flip_and_rotate", "_warp_clip", "_source_coordinates",
                      "frames_from_uint8")
_BN_FUNCTIONS = ("BatchNorm.", "batch_norm_train", "_batch_stats", "_row_weights", "_batch_norm_fwd",
                 "_batch_norm_bwd", "weighted_batch_norm_train", "_weighted_batch_norm_fwd", "_weighted_batch_norm_bwd")


def part_of_model(op_name: str, stack: Iterable[Tuple[str, str]] = (), kind: str = "temp") -> str:
  """Which part of the model a buffer belongs to (one of PARTS), from the defining instruction's op_name
  and the Python functions of its stack (innermost first). Arguments are named by their path in the step's
  arguments (`state.params['visual_backbone'][...]`, `state.opt_state...`, `batch['frames']`)."""
  stack = list(stack)
  functions = [fn for _, fn in stack]
  files = [f.replace("\\", "/") for f, _ in stack]
  if kind == "argument" or op_name.startswith(("state.", "batch[")):
    if op_name.startswith("batch["):
      return "inputs"
    if op_name.startswith("state.opt_state"):
      return "optimizer"
    if op_name.startswith("state.batch_stats"):
      return "batch norm"
  if (any(f.endswith("/augment.py") for f in files) or any(fn in _AUGMENT_FUNCTIONS for fn in functions)
      or re.search(r"jit\((random_flip_and_rotate|flip_and_rotate|softhard|modality_dropout|noise)\)", op_name)):
    return "augmentation"
  if (any("/optax/" in f and "/optax/losses/" not in f for f in files)
      or any(fn.startswith(("dampened_momentum", "apply_updates")) for fn in functions)):
    return "optimizer"
  if any(fn.startswith(_BN_FUNCTIONS) for fn in functions) or "/bn/" in op_name or "['bn']" in op_name:
    return "batch norm"
  path = op_name.replace("']['", "/").replace("['", "/").replace("']", "/")
  if (any(fn == "EfficientFace.__call__.<locals>.stem" or fn.startswith("max_pool") for fn in functions)
      or "visual_backbone/conv1_" in path):
    return "efficientface stem"
  if "visual_backbone/" in path or any(fn.startswith("EfficientFace.") for fn in functions):
    return "efficientface stages"
  if "visual_conv1d_" in path:
    return "temporal convs"
  if "audio_conv1d_" in path:
    return "audio branch"
  if (re.search(r"(^|/)(av1?|va1?|final_attention|classifier)/", path)
      or any(f.endswith("/models/attention.py") for f in files)):
    return "fusion"
  return "other"


def _distinct(items: List[str]) -> List[str]:
  return [x for i, x in enumerate(items) if x not in items[:i]]


def _space_name(color: int, tpu: bool) -> str:
  return TPU_SPACES.get(color, f"color {color}") if tpu else ("device" if color == 0 else f"color {color}")


def account(assignment_text: str, values_text: str, hlo_text: str = "", top: int = 20, tpu: bool = False) -> dict:
  """The buffers of one compiled module: its `top` largest values (all memory spaces, thread-local values
  left out), the allocations' totals per kind and memory space, and the bytes of the values per part of the
  model, kind and memory space."""
  allocations = parse_buffer_assignment(assignment_text)
  instructions = parse_defining_instructions(values_text)
  stacks = parse_stack_frames(hlo_text) if hlo_text else {}
  by_name = {}
  module_instructions = [line.strip().removeprefix("ROOT ") for line in hlo_text.splitlines()
                         if line.startswith("  ") and " = " in line and line.lstrip().startswith(("%", "ROOT %"))]
  for text in module_instructions + list(instructions.values()):
    facts = instruction_facts(text)
    by_name[facts["instruction"]] = facts

  named = lambda facts: with_operand_name(facts, by_name)
  records, totals, live_out = [], {}, {}
  for allocation in allocations:
    if allocation["kind"] == "thread-local":
      continue
    space = _space_name(allocation["color"], tpu)
    key = f"{space} {allocation['kind']}"
    totals[key] = totals.get(key, 0) + allocation["size"]
    if allocation["kind"] == "argument" and allocation["live_out"]:  # donated: an output reuses it
      live_out[space] = live_out.get(space, 0) + allocation["size"]
    for value in allocation["values"]:
      facts = named(instruction_facts(instructions.get(value["id"], "")))
      stack = stacks.get(facts["stack_frame_id"], []) if facts["stack_frame_id"] is not None else []
      shape = shape_facts(value["shape"])
      records.append({
          "size": value["size"], "data_bytes": shape["data_bytes"], "dtype": shape["dtype"], "dims": shape["dims"],
          "layout": shape["layout"], "shape": value["shape"], "memory_space": space, "kind": allocation["kind"],
          "allocation": allocation["index"], "offset": value["offset"], "value": value["name"],
          "instruction": facts["instruction"], "opcode": facts["opcode"], "fusion_kind": facts["fusion_kind"],
          "op_name": facts["op_name"], "functions": _distinct([fn for _, fn in stack])[:4],
          "part": part_of_model(facts["op_name"], stack, allocation["kind"])})
  records.sort(key=lambda r: (-r["size"], r["allocation"], r["offset"]))
  by_part: Dict[str, Dict[str, int]] = {}
  for r in records:
    row = by_part.setdefault(r["part"], {})
    key = f"{r['memory_space']} {r['kind']}"
    row[key] = row.get(key, 0) + r["size"]
  return {"largest": records[:top], "values": len(records), "allocation_totals": totals,
          "live_out_argument_totals": live_out,
          "by_part": {p: by_part[p] for p in PARTS if p in by_part}}


def dump_files(dump_dir: str) -> Tuple[str, str, str]:
  """(buffer assignment, its values, optimised module) of the largest module XLA dumped into `dump_dir`."""
  found = [p for p in glob.glob(os.path.join(dump_dir, "*buffer-assignment.txt"))]
  if not found:
    raise RuntimeError(f"XLA wrote no *buffer-assignment.txt into {dump_dir}: this backend does not dump its "
                       "buffer assignment")
  path = max(found, key=os.path.getsize)
  values = path[:-len(".txt")] + "-values.txt"
  module = path[:-len("-buffer-assignment.txt")] + ".txt"
  return path, values if os.path.exists(values) else "", module if os.path.exists(module) else ""


def account_from_dump(dump_dir: str, top: int = 20, tpu: Optional[bool] = None) -> dict:
  """`account` of the module XLA dumped into `dump_dir` (TPU memory spaces named when the dump is libtpu's)."""
  path, values_path, module_path = dump_files(dump_dir)
  read = lambda p: open(p).read() if p else ""
  if tpu is None:
    tpu = bool(glob.glob(os.path.join(dump_dir, "*tpu_comp_env.txt")))
  out = account(read(path), read(values_path), read(module_path), top=top, tpu=tpu)
  out["module"] = os.path.basename(path)[:-len("-buffer-assignment.txt")]
  out["traffic"] = traffic(read(module_path), read(values_path), read(path), tpu=tpu, top=top)
  codegen = module_path[:-len(".after_optimizations.txt")] + ".after_codegen.txt" if module_path else ""
  if codegen and os.path.exists(codegen):
    out["estimated_cycles"] = estimated_cycles(read(codegen))
  return out


def _mib(b: Optional[float]) -> str:
  return "-" if b is None else f"{b / 2**20:.2f}"


def format_account(buffers: dict) -> str:
  """The listing and the per-part table, as text for the terminal."""
  lines = [f"  largest buffers of {buffers.get('module', 'the module')} (of {buffers['values']} values; "
           "MiB as laid out, padding = laid-out size / data size):",
           f"  {'MiB':>9} {'pad':>5} {'space':>6} {'kind':>8}  {'shape and layout':<56} {'instruction':<28} "
           "part: op_name"]
  for r in buffers["largest"]:
    pad = f"{r['size'] / r['data_bytes']:.2f}" if r.get("data_bytes") else "-"
    instr = f"{r['instruction']} ({r['opcode']}{'/' + r['fusion_kind'] if r.get('fusion_kind') else ''})"
    lines.append(f"  {_mib(r['size']):>9} {pad:>5} {r['memory_space']:>6} {r['kind']:>8}  {r['shape']:<56} "
                 f"{instr:<28} {r['part']}: {r['op_name']}")
  columns = sorted({k for row in buffers["by_part"].values() for k in row},
                   key=lambda k: (k.split(" ")[0] not in ("hbm", "device"), k))
  lines.append("  MiB of the buffers each part defines, by memory space and kind (a sum of sizes, not a peak):")
  lines.append("  " + f"{'part':<22}" + "".join(f"{c:>18}" for c in columns))
  for part, row in buffers["by_part"].items():
    lines.append("  " + f"{part:<22}" + "".join(f"{_mib(row.get(c, 0)):>18}" for c in columns))
  totals = sorted(buffers["allocation_totals"].items())
  lines.append("  allocations (MiB): " + ", ".join(f"{k} {_mib(v)}" for k, v in totals))
  flow = buffers.get("traffic")
  if flow:
    lines.append(f"  device-memory traffic of the {flow['instructions']} top-level instructions (operands read and "
                 f"results written once each, on-chip arrays left out): {flow['total'] / 1e9:.2f} GB")
    cycles = buffers.get("estimated_cycles") or {}
    if cycles:
      lines.append(f"  the TPU compiler's estimated cycles: {cycles['total'] / 1e6:.1f} M over {cycles['instructions']} "
                   "instructions")
    lines.append(f"  {'part':<22}{'read GB':>10}{'written GB':>12}{'share':>8}{'instructions':>14}"
                 + (f"{'cycles':>10}" if cycles else ""))
    for part, row in flow["by_part"].items():
      share = (row["read"] + row["written"]) / max(flow["total"], 1)
      part_cycles = cycles.get("by_part", {}).get(part, 0) / max(cycles.get("total", 1), 1)
      lines.append(f"  {part:<22}{row['read'] / 1e9:>10.2f}{row['written'] / 1e9:>12.2f}{share:>8.1%}"
                   f"{row['instructions']:>14}" + (f"{part_cycles:>10.1%}" if cycles else ""))
  return "\n".join(lines)


# ---- Memory traffic per part: the HBM bytes each top-level instruction reads and writes ------------------

# Instructions that move no data of their own (views, tuple plumbing, the second half of an async pair).
_NO_TRAFFIC = {"parameter", "constant", "get-tuple-element", "bitcast", "tuple", "copy-done", "async-done",
               "all-reduce-done", "all-gather-done", "collective-permute-done", "after-all", "partition-id",
               "replica-id", "opt-barrier", "add-dependency"}
_SHAPE_ITEM = re.compile(r"([a-z][a-z0-9]*)\[([\d,]*)\](\{[^}]*\})?")


def _array_bytes(shape_text: str, sizes: Dict[str, int], name: str, tpu: bool) -> Tuple[int, int]:
  """(HBM bytes, on-chip bytes) of an instruction's result: each array of a (tuple) shape, at its laid-out
  size from the buffer assignment when known, else its data size; `S(n)` in a layout is an on-chip space."""
  hbm = chip = 0
  items = _SHAPE_ITEM.findall(shape_text)
  for i, (dtype, dims, layout) in enumerate(items):
    elements = 1
    for d in dims.split(","):
      elements *= int(d) if d else 1
    data = elements * _DTYPE_BITS.get(dtype, 32) // 8
    key = name if len(items) == 1 else f"{name}{{{i}}}"
    size = sizes.get(key, data)
    if tpu and re.search(r"S\([1-9]\)", layout or ""):
      chip += size
    else:
      hbm += size
  return hbm, chip


def traffic(hlo_text: str, values_text: str = "", assignment_text: str = "", tpu: bool = False,
            top: int = 20) -> dict:
  """Device-memory bytes read and written by the entry computation's instructions, per part of the model.

  Each top-level instruction (a fusion, convolution, copy, collective...) reads its operands and writes its
  result; arrays in an on-chip space (`S(n)` layouts on TPU) are left out, so the sum is the traffic to HBM
  (device memory on GPU/CPU) if every operand were read once. XLA's own `bytes accessed` (cost analysis)
  counts the same kind of sum with unpadded sizes and its own view of partial reads, so the two differ."""
  sizes = {}
  for allocation in parse_buffer_assignment(assignment_text) if assignment_text else []:
    for value in allocation["values"]:
      sizes.setdefault(value["name"], value["size"])
  stacks = parse_stack_frames(hlo_text)
  entry = hlo_text.split("\nENTRY ", 1)[-1] if "\nENTRY " in hlo_text else ""
  shapes, named, rows = {}, {}, []
  line_re = re.compile(r"^\s*(?:ROOT )?%([^\s=]+) = (\([^=]*?\)|[a-z][a-z0-9]*\[[^\]]*\](?:\{[^}]*\})?) ([a-z][a-z0-9\-]*)\(")
  for line in entry.splitlines()[1:]:
    if line.startswith("}"):
      break
    m = line_re.match(line)
    if not m:
      continue
    name, shape, opcode = m.groups()
    shapes[name] = shape
    facts = named[name] = instruction_facts(line)
    if opcode in _NO_TRAFFIC:
      continue
    out_hbm, _ = _array_bytes(shape, sizes, name, tpu)
    read = sum(_array_bytes(shapes.get(op, ""), sizes, op, tpu)[0] for op in facts["operands"])
    if opcode in ("copy-start", "async-start"):
      # An asynchronous copy or slice moves its result's bytes: (destination, source, context) for a copy,
      # ((operands), result, context) for a wrapped slice, which reads only the part it keeps.
      items = [f"{d}[{s}]{l}" for d, s, l in _SHAPE_ITEM.findall(shape)]
      result = items[0] if opcode == "copy-start" else items[-2]
      out_hbm, out_chip = _array_bytes(result, {}, "", tpu)
      read = min(read, out_hbm + out_chip)
    if not read + out_hbm:
      continue
    facts = with_operand_name(facts, named)
    stack = stacks.get(facts["stack_frame_id"], []) if facts["stack_frame_id"] is not None else []
    rows.append({"instruction": name, "opcode": opcode, "fusion_kind": facts["fusion_kind"], "read": read,
                 "written": out_hbm, "shape": shape if len(shape) < 120 else shape[:117] + "...",
                 "op_name": facts["op_name"], "part": part_of_model(facts["op_name"], stack)})
  by_part: Dict[str, Dict[str, int]] = {}
  for r in rows:
    row = by_part.setdefault(r["part"], {"read": 0, "written": 0, "instructions": 0})
    row["read"] += r["read"]
    row["written"] += r["written"]
    row["instructions"] += 1
  rows.sort(key=lambda r: -(r["read"] + r["written"]))
  return {"total": sum(r["read"] + r["written"] for r in rows), "instructions": len(rows),
          "largest": rows[:top], "by_part": {p: by_part[p] for p in PARTS if p in by_part}}


# ---- The TPU compiler's own time estimate per part ---------------------------------------------------------


def estimated_cycles(codegen_text: str) -> dict:
  """Sum of the `estimated_cycles` libtpu writes into each entry instruction's backend_config (the module
  dumped as `*after_codegen.txt`), in total and per part of the model: the compiler's cost model of the time
  each instruction takes, memory stalls included. Empty when the dump has none (GPU and CPU backends)."""
  stacks = parse_stack_frames(codegen_text)
  entry = codegen_text.split("\nENTRY ", 1)[-1] if "\nENTRY " in codegen_text else ""
  named, by_part, total, count = {}, {}, 0, 0
  for line in entry.splitlines()[1:]:
    if line.startswith("}"):
      break
    facts = instruction_facts(line)
    named[facts["instruction"]] = facts
    m = re.search(r'"estimated_cycles":"(\d+)"', line)
    if not m:
      continue
    facts = with_operand_name(facts, named)
    stack = stacks.get(facts["stack_frame_id"], []) if facts["stack_frame_id"] is not None else []
    part = part_of_model(facts["op_name"], stack)
    by_part[part] = by_part.get(part, 0) + int(m.group(1))
    total += int(m.group(1))
    count += 1
  if not count:
    return {}
  return {"total": total, "instructions": count, "by_part": {p: by_part[p] for p in PARTS if p in by_part}}
