"""Strict conversion of PyTorch AVT-CA and EfficientFace checkpoints to Flax variables.

Two kinds of checkpoint:
- `efficientface`: an EfficientFace checkpoint as published (`{'state_dict': {'module.conv1.0.weight': ...,
  'module.fc.weight': ...}}`, 418 entries). Gives the `visual_backbone` subtree of AVTCA's variables; the
  7-class `fc` head is ignored on purpose (the original loads it the same way, spec section 4).
- `avtca`: a whole AVT-CA model, fusion 'it', 'ia' or 'lt': a bare `state_dict()` or a dict holding one
  under 'state_dict', with or without DataParallel's `module.` prefix. Gives complete variables.

Strict: every Flax leaf is filled from exactly one checkpoint entry with the expected shape, and every
checkpoint entry is either used or matches a named list of deliberately ignored entries
(`IGNORED_ALWAYS`, `IGNORED_AVTCA`, `IGNORED_BY_FUSION`, `IGNORED_EFFICIENTFACE`). Anything else raises
`ConversionError`, which lists the offending keys. A checkpoint of another fusion variant (or of the other
kind) is recognised and named in the error.

Layouts (PyTorch -> Flax): Conv2d (O, I/g, kh, kw) -> (kh, kw, I/g, O); Conv1d (O, I, k) -> (k, I, O);
Linear and MHA in_proj (out, in) -> (in, out); BatchNorm weight/bias/running_mean/running_var ->
params scale/bias, batch_stats mean/var. Names follow the table in `_efficientface_module`/`_avtca_module`.

Command line (writes an orbax checkpoint that training can start from):

  python -m avtca_jax.convert --checkpoint EfficientFace_Trained_on_AffectNet7.pth --kind efficientface \\
      --output /abs/or/relative/dir
  python -m avtca_jax.convert --checkpoint model_best.pth --kind avtca --fusion it --output DIR

Output layout: DIR is one orbax `StandardCheckpointer` checkpoint of the pytree
{'params': ..., 'batch_stats': ...} (float32 numpy arrays; for `efficientface` both hold only
'visual_backbone'), plus `DIR/conversion.json` (source, kind, fusion, mapped and ignored keys), which orbax
ignores. A plain `ocp.StandardCheckpointer().restore(os.path.abspath(DIR))` returns the pytree;
`load_init_checkpoint(DIR, into=variables)` restores it and overlays it on freshly initialised variables,
checking paths and shapes (what a trainer's `--config.init_checkpoint=DIR` should call).

torch is imported only to read `.pth` files (`load_torch_checkpoint`); the conversion itself takes any
mapping of names to arrays or tensors.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import sys
from typing import Any, Mapping, Optional, Sequence

import numpy as np

# (pattern over PyTorch keys without `module.`, reason). Matching entries are read past, not converted.
IGNORED_ALWAYS = (
    (r".*\.num_batches_tracked", "BatchNorm step counter; our BatchNorm uses a fixed momentum"),
)
IGNORED_AVTCA = (
    (r"(audio|visual)_model\.classifier_1\..*", "per-branch classifier, unused by the fusion model"),
)
IGNORED_BY_FUSION = {
    "it": (),
    "ia": ((r"(av1|va1)\.proj\..*", "'ia' uses only the attention weights, never the projected output"),
           (r"finalAttention\..*", "built in every AVTCA variant, used only by 'it'")),
    "lt": ((r"finalAttention\..*", "built in every AVTCA variant, used only by 'it'"),),
}
IGNORED_EFFICIENTFACE = (
    (r"fc\..*", "EfficientFace's 7-class FER head; AVT-CA has its own classifier"),
)

_LEAF_TO_TORCH = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("params", "in_proj_kernel"): "in_proj_weight",
    ("params", "in_proj_bias"): "in_proj_bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
# Conv2d (O, I/g, kh, kw) -> (kh, kw, I/g, O); Conv1d (O, I, k) -> (k, I, O); Linear (out, in) -> (in, out).
_KERNEL_PERMUTATION = {4: (2, 3, 1, 0), 3: (2, 1, 0), 2: (1, 0)}


class ConversionError(ValueError):
  """The checkpoint does not fit the model; the message lists the offending keys."""


@dataclasses.dataclass
class ConversionReport:
  kind: str
  fusion: Optional[str]
  mapped: list  # (PyTorch key, Flax path 'collection/a/b/leaf')
  ignored: list  # (PyTorch key, reason)

  def summary(self) -> str:
    lines = [f"{self.kind}" + (f" fusion '{self.fusion}'" if self.fusion else "") +
             f": mapped {len(self.mapped)} entries, ignored {len(self.ignored)}"]
    lines += [f"  mapped  {key} -> {path}" for key, path in self.mapped]
    lines += [f"  ignored {key}: {reason}" for key, reason in self.ignored]
    return "\n".join(lines)


# --- Names ---------------------------------------------------------------------------------------------


def _efficientface_module(path: Sequence[str]) -> str:
  """Flax module path inside EfficientFace -> PyTorch module name (EfficientFace's own, no prefix)."""
  head, rest = path[0], list(path[1:])
  if head == "modulator":  # gate_c_* live in channel_att.gate_c, gate_s_* in spatial_att.gate_s
    gate = "channel_att.gate_c" if rest[0].startswith("gate_c_") else "spatial_att.gate_s"
    return ".".join(["modulator", gate] + rest)
  if head == "local":  # conv{k}_{j} and bn{k}_{j} keep their names
    return ".".join([head] + rest)
  stage = re.fullmatch(r"stage(\d)_(\d+)", head)
  if stage:  # stage2_0/branch1_2 -> stage2.0.branch1.2 (Sequential indices)
    return f"stage{stage[1]}.{stage[2]}." + ".".join(name.replace("_", ".") for name in rest)
  return ".".join([head.replace("_", ".")] + rest)  # conv1_0 -> conv1.0, conv5_1 -> conv5.1


def _avtca_module(path: Sequence[str]) -> str:
  """Flax module path inside AVTCA -> PyTorch module name inside MultiModalCNN."""
  head, rest = path[0], list(path[1:])
  if head == "visual_backbone":
    return "visual_model." + _efficientface_module(rest)
  conv1d = re.fullmatch(r"(audio|visual)_conv1d_(\d)", head)
  if conv1d:  # Conv1dBlock's conv/bn are Sequential entries 0/1
    return f"{conv1d[1]}_model.conv1d_{conv1d[2]}." + {"conv": "0", "bn": "1"}.get(rest[0], rest[0])
  if head == "classifier":
    return ".".join(["classifier_1.0"] + rest)
  if head == "final_attention":
    return ".".join(["finalAttention"] + rest)
  return ".".join([head] + rest)  # av1, va1, av, va: attn/q/kv/proj/norm1_q/norm1_k/norm2/mlp/fc1/fc2 as is


def _torch_key(collection: str, path: Sequence[str], module_name) -> str:
  leaf = _LEAF_TO_TORCH[(collection, path[-1])]
  return f"{module_name(path[:-1])}.{leaf}"


# --- Checkpoint handling -------------------------------------------------------------------------------


def _to_numpy(value) -> np.ndarray:
  """A copy: torch's `.numpy()` shares memory, and the source model may keep training in place."""
  if hasattr(value, "detach"):  # a torch tensor, without importing torch
    value = value.detach().cpu().numpy()
  return np.array(value)


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> dict:
  """A training checkpoint {'state_dict': ...} or a bare state dict -> {key without `module.`: array}."""
  state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
  if not isinstance(state, Mapping):
    raise ConversionError(f"expected a state dict or a dict with 'state_dict', got {type(checkpoint).__name__}")
  out = {}
  for key, value in state.items():
    name = key[len("module."):] if key.startswith("module.") else key
    if name in out:
      raise ConversionError(f"key {name!r} appears both with and without the 'module.' prefix")
    out[name] = value
  return out


def detect_fusion(keys) -> Optional[str]:
  """The fusion variant an AVT-CA state dict was saved from, from its fusion module names."""
  keys = list(keys)
  if any(k.startswith("av1.attn.") for k in keys):
    return "it"
  if any(k.startswith("av1.q.") for k in keys):
    return "ia"
  if any(k.startswith("av.attn.") for k in keys):
    return "lt"
  return None


def _detect_kind(keys) -> Optional[str]:
  keys = list(keys)
  if any(k.startswith("visual_model.") or k.startswith("audio_model.") for k in keys):
    return "avtca"
  if any(k.startswith("conv1.0.") or k.startswith("stage2.") for k in keys):
    return "efficientface"
  return None


def _format_keys(keys) -> str:
  return "\n".join(f"    {k}" for k in sorted(keys))


@functools.lru_cache(maxsize=None)
def _target_shapes(kind: str, fusion: Optional[str], num_classes: int) -> dict:
  """{'params', 'batch_stats'} of the Flax model as ShapeDtypeStructs (traced, never compiled)."""
  import jax
  import jax.numpy as jnp

  from avtca_jax.models.avtca import AVTCA, MFCC_SHAPE
  from avtca_jax.models.efficientface import EfficientFace

  if kind == "avtca":
    model = AVTCA(num_classes=num_classes, fusion=fusion)
    init = lambda: model.init(jax.random.key(0), jnp.zeros((1,) + MFCC_SHAPE), jnp.zeros((1, 15, 224, 224, 3)))
  else:
    model = EfficientFace(train=False)
    init = lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  return jax.eval_shape(init)


def _flatten(tree, prefix=()):
  for name, value in tree.items():
    if isinstance(value, Mapping):
      yield from _flatten(value, prefix + (name,))
    else:
      yield prefix + (name,), value


def _set(tree: dict, path: Sequence[str], value):
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def _convert(state: dict, targets: dict, module_name, ignored, kind: str, fusion: Optional[str]):
  """Fill every leaf of `targets` from `state`; raise ConversionError listing every problem found."""
  variables = {collection: {} for collection in targets}
  mapped, missing, bad_shapes = [], [], []
  used = set()
  for collection, tree in targets.items():
    for path, target in _flatten(tree):
      key = _torch_key(collection, path, module_name)
      flax_path = "/".join((collection,) + path)
      if key not in state:
        missing.append(f"{key} (for {flax_path} {tuple(target.shape)})")
        continue
      used.add(key)
      value = _to_numpy(state[key])
      if path[-1] in ("kernel", "in_proj_kernel") and value.ndim in _KERNEL_PERMUTATION:
        value = np.transpose(value, _KERNEL_PERMUTATION[value.ndim])
      if value.shape != tuple(target.shape):
        bad_shapes.append(f"{key}: {tuple(_to_numpy(state[key]).shape)} in the checkpoint, "
                          f"{flax_path} needs {tuple(target.shape)} after layout conversion")
        continue
      _set(variables[collection], path, np.asarray(value, dtype=target.dtype))
      mapped.append((key, flax_path))

  ignored_entries, unexpected = [], []
  for key in state:
    if key in used:
      continue
    reason = next((why for pattern, why in ignored if re.fullmatch(pattern, key)), None)
    if reason is None:
      unexpected.append(key)
    else:
      ignored_entries.append((key, reason))

  if missing or unexpected or bad_shapes:
    what = kind + (f" fusion '{fusion}'" if fusion else "")
    parts = [f"checkpoint does not fit the Flax {what} model:"]
    if missing:
      parts.append(f"  {len(missing)} missing keys:\n" + _format_keys(missing))
    if unexpected:
      parts.append(f"  {len(unexpected)} unexpected keys (neither used nor in the ignore lists):\n" +
                   _format_keys(unexpected))
    if bad_shapes:
      parts.append(f"  {len(bad_shapes)} keys with the wrong shape:\n" + _format_keys(bad_shapes))
    raise ConversionError("\n".join(parts))
  return variables, ConversionReport(kind, fusion, mapped, sorted(ignored_entries))


def convert_avtca(checkpoint: Mapping[str, Any], fusion: str = "it", num_classes: int = 8):
  """Whole AVT-CA checkpoint -> ({'params', 'batch_stats'} for `AVTCA(fusion=fusion)`, ConversionReport)."""
  state = unwrap_state_dict(checkpoint)
  kind = _detect_kind(state)
  if kind == "efficientface":
    raise ConversionError("this is an EfficientFace checkpoint, not a whole AVT-CA model: convert it with "
                          "kind 'efficientface'. Its keys start with:\n" + _format_keys(list(state)[:5]))
  found = detect_fusion(state)
  if found is not None and found != fusion:
    fusion_keys = [k for k in state if re.match(r"(av1|va1|av|va)\.", k)]
    raise ConversionError(f"checkpoint is fusion '{found}', not '{fusion}': convert it with fusion '{found}' "
                          f"(--fusion {found}); its fusion keys are:\n" + _format_keys(fusion_keys))
  ignored = IGNORED_ALWAYS + IGNORED_AVTCA + IGNORED_BY_FUSION[fusion]
  return _convert(state, _target_shapes("avtca", fusion, num_classes), _avtca_module, ignored, "avtca", fusion)


def convert_efficientface(checkpoint: Mapping[str, Any]):
  """Published EfficientFace checkpoint -> ({'params': {'visual_backbone': ...}, 'batch_stats': {...}}, report).

  The result is the `visual_backbone` subtree of AVTCA's variables; overlay it on initialised variables
  with `merge_variables` (the AVT-CA code likewise loads EfficientFace into a fresh model).
  """
  state = unwrap_state_dict(checkpoint)
  if _detect_kind(state) == "avtca":
    raise ConversionError("this is a whole AVT-CA checkpoint (keys 'visual_model.*', 'audio_model.*'), not an "
                          "EfficientFace one: convert it with kind 'avtca'. Its keys start with:\n" +
                          _format_keys(list(state)[:5]))
  ignored = IGNORED_ALWAYS + IGNORED_EFFICIENTFACE
  backbone, report = _convert(state, _target_shapes("efficientface", None, 0), _efficientface_module, ignored,
                              "efficientface", None)
  report.mapped = [(key, path.replace("/", "/visual_backbone/", 1)) for key, path in report.mapped]
  return {collection: {"visual_backbone": tree} for collection, tree in backbone.items()}, report


def merge_variables(into: Mapping, partial: Mapping) -> dict:
  """Replace the leaves of `into` present in `partial`; every leaf of `partial` must exist with its shape."""
  out = {collection: dict(tree) for collection, tree in into.items()}
  problems = []
  flat_into = {(c,) + p: v for c, tree in into.items() for p, v in _flatten(tree)}
  for collection, tree in partial.items():
    for path, value in _flatten(tree):
      full = (collection,) + path
      if full not in flat_into:
        problems.append(f"{'/'.join(full)} is not in the model")
      elif tuple(np.shape(value)) != tuple(np.shape(flat_into[full])):
        problems.append(f"{'/'.join(full)}: {tuple(np.shape(value))} vs model {tuple(np.shape(flat_into[full]))}")
      else:
        node = out[collection]
        for name in path[:-1]:  # copy the dicts on the way so `into` is left untouched
          node[name] = dict(node[name])
          node = node[name]
        node[path[-1]] = value
  if problems:
    raise ConversionError("init checkpoint does not fit the model:\n" + _format_keys(problems))
  return out


# --- Files ---------------------------------------------------------------------------------------------


def load_torch_checkpoint(path: str, allow_pickle: bool = False):
  """torch.load on CPU; `weights_only` unless `allow_pickle` (only for files you trust).

  Raises ConversionError naming the file: a truncated or corrupt file says so (rerunning with
  --allow-pickle would fail the same way); only a readable file that holds more than tensors and plain
  containers suggests --allow-pickle."""
  import pickle
  import torch  # only needed to read .pth files

  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such checkpoint file")
  if os.path.getsize(path) == 0:
    raise ConversionError(f"{path}: zero-length file: copy the checkpoint again")
  try:
    return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
  except pickle.UnpicklingError as error:  # readable, but holds objects beyond tensors and containers
    if allow_pickle or "weights only load failed" not in str(error).lower():
      raise ConversionError(f"{path}: cannot be read as a PyTorch checkpoint ({str(error).splitlines()[0]}): "
                            "the file is corrupt or not a checkpoint") from error
    raise ConversionError(f"{path}: holds Python objects besides tensors, which torch.load(weights_only=True) "
                          "refuses. If you trust the file, rerun with --allow-pickle.") from error
  except Exception as error:  # torch raises RuntimeError for a truncated zip, EOFError for a cut pickle
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    raise ConversionError(f"{path}: cannot be read, truncated or corrupt ({first[:120]}): copy or download the "
                          "checkpoint again") from error


def save_checkpoint(directory: str, variables: Mapping, report: ConversionReport, source: str = "") -> str:
  """Write `variables` as an orbax StandardCheckpointer checkpoint at `directory`, plus conversion.json."""
  import orbax.checkpoint as ocp

  directory = os.path.abspath(directory)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory, dict(variables))
  checkpointer.wait_until_finished()
  with open(os.path.join(directory, "conversion.json"), "w") as f:
    json.dump({"source": source, "kind": report.kind, "fusion": report.fusion,
               "mapped": report.mapped, "ignored": report.ignored}, f, indent=1)
  return directory


def load_init_checkpoint(path: str, into: Optional[Mapping] = None) -> dict:
  """Restore a converted checkpoint: {'params', 'batch_stats'}; overlaid on `into` when given.

  For an EfficientFace conversion (only 'visual_backbone') pass the freshly initialised AVTCA variables
  as `into`; for a whole AVT-CA conversion `into` is optional and, when given, checks every path and shape.
  """
  import orbax.checkpoint as ocp

  from avtca_jax import checkpointing
  restored = ocp.StandardCheckpointer().restore(checkpointing.absolute(path))
  restored = {collection: restored[collection] for collection in ("params", "batch_stats") if collection in restored}
  return restored if into is None else merge_variables(into, restored)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m avtca_jax.convert", description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkpoint", required=True, help="PyTorch .pth/.pth.tar file")
  parser.add_argument("--kind", required=True, choices=("efficientface", "avtca"))
  parser.add_argument("--fusion", default="it", choices=("it", "ia", "lt"), help="AVTCA fusion variant")
  parser.add_argument("--num_classes", type=int, default=8)
  parser.add_argument("--output", required=True, help="orbax checkpoint directory to create")
  parser.add_argument("--allow-pickle", action="store_true",
                      help="torch.load(weights_only=False): only for checkpoints you trust")
  parser.add_argument("--print-keys", action="store_true", help="list every mapped and ignored key")
  parser.add_argument("--verbose", action="store_true", help="library log messages and full error tracebacks")
  args = parser.parse_args(argv)
  from avtca_jax import console
  console.configure_logging(args.verbose)
  try:
    if os.path.exists(args.output):
      raise FileExistsError(f"--output {args.output} already exists; choose a new directory")
    checkpoint = load_torch_checkpoint(args.checkpoint, args.allow_pickle)
    try:
      if args.kind == "avtca":
        variables, report = convert_avtca(checkpoint, args.fusion, args.num_classes)
      else:
        variables, report = convert_efficientface(checkpoint)
    except ConversionError as error:
      raise ConversionError(f"{args.checkpoint}: {error}") from error
    directory = save_checkpoint(args.output, variables, report, source=os.path.abspath(args.checkpoint))
  except Exception as error:  # a user error is one line; a bug keeps its traceback
    console.exit_on_user_error(error, args.verbose)
  print(report.summary() if args.print_keys or args.verbose else report.summary().splitlines()[0])
  print(f"wrote {directory}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
