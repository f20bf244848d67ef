"""Checkpoint conversion: the PyTorch reference's format, layouts, strictness, CLI and orbax round trip.

Nothing here runs a model: conversion only traces the Flax model for its shapes, so this file takes seconds.
Numerical parity of converted models is in test_parity.py.
"""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from avtca_jax import convert  # noqa: E402
from avtca_jax.reference import torch_avtca  # noqa: E402

SPEC_STATE_DICT = Path(__file__).resolve().parent / "data/avtca_it_state_dict.txt"  # from the spec, 510 lines
# Parameters the Flax model uses per fusion (models/avtca.py) and the PyTorch totals (docs/original.md#parameter-counts).
FLAX_PARAMS = {"it": 2_002_398, "ia": 1_832_030, "lt": 2_043_486}
TORCH_PARAMS = {"it": 2_004_462, "ia": 1_920_814, "lt": 2_111_598}


def _torch_model(fusion: str, seed: int = 0):
  torch.manual_seed(seed)
  return torch_avtca.randomize_(torch_avtca.MultiModalCNN(fusion=fusion), seed=seed)


def _state(fusion: str) -> dict:
  return dict(_torch_model(fusion).state_dict())


def test_reference_state_dict_matches_spec():
  want = SPEC_STATE_DICT.read_text().splitlines()
  got = [f"{k} {tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}"
         for k, v in torch_avtca.MultiModalCNN(fusion="it").state_dict().items()]
  assert len(want) == 510
  assert got == want  # names, order, shapes and dtypes


@pytest.mark.parametrize("fusion", ["it", "ia", "lt"])
def test_reference_parameter_counts(fusion):
  model = torch_avtca.MultiModalCNN(fusion=fusion)
  assert sum(p.numel() for p in model.parameters()) == TORCH_PARAMS[fusion]
  variables, report = convert.convert_avtca(model.state_dict(), fusion)
  assert sum(v.size for _, v in convert._flatten(variables["params"])) == FLAX_PARAMS[fusion]
  # What the Flax model leaves out is exactly the parameters of the ignored entries.
  ignored = sum(model.state_dict()[k].numel() for k, _ in report.ignored if not k.endswith("num_batches_tracked"))
  assert FLAX_PARAMS[fusion] + ignored == TORCH_PARAMS[fusion]


def test_efficientface_reference_matches_published_format():
  checkpoint = torch_avtca.efficientface_checkpoint(torch_avtca.EfficientFace())
  state = checkpoint["state_dict"]
  assert len(state) == 418 and all(k.startswith("module.") for k in state)
  assert tuple(state["module.fc.weight"].shape) == (7, 1024)
  # Its backbone entries are the AVT-CA visual_model's, minus the temporal convs and classifier_1.
  avtca = {k.removeprefix("visual_model."): tuple(v.shape) for k, v in torch_avtca.MultiModalCNN().state_dict().items()
           if k.startswith("visual_model.") and not re.match(r"visual_model\.(conv1d_|classifier_1)", k)}
  backbone = {k.removeprefix("module."): tuple(v.shape) for k, v in state.items() if not k.startswith("module.fc.")}
  assert backbone == avtca and len(backbone) == 416


def test_layouts():
  """Spot checks written out index by index, independent of the converter's permutation table."""
  state = _state("it")
  variables, _ = convert.convert_avtca(state, "it")
  params, stats = variables["params"], variables["batch_stats"]
  w = state["visual_model.conv1.0.weight"].numpy()  # Conv2d (O, I, kh, kw)
  assert params["visual_backbone"]["conv1_0"]["kernel"][2, 0, 1, 5] == w[5, 1, 2, 0]
  w = state["visual_model.local.conv3_1.weight"].numpy()  # grouped (O, 1, kh, kw)
  assert params["visual_backbone"]["local"]["conv3_1"]["kernel"][0, 2, 0, 77] == w[77, 0, 0, 2]
  w = state["audio_model.conv1d_1.0.weight"].numpy()  # Conv1d (O, I, k)
  assert params["audio_conv1d_1"]["conv"]["kernel"][2, 40, 100] == w[100, 40, 2]
  w = state["av1.attn.kv.weight"].numpy()  # Linear (out, in)
  assert params["av1"]["attn"]["kv"]["kernel"][63, 200] == w[200, 63]
  w = state["finalAttention.in_proj_weight"].numpy()  # (3E, E): rows Wq, Wk, Wv
  assert params["final_attention"]["in_proj_kernel"][7, 300] == w[300, 7]
  np.testing.assert_array_equal(params["visual_backbone"]["modulator"]["gate_s_conv_di_1"]["bias"],
                                state["visual_model.modulator.spatial_att.gate_s.gate_s_conv_di_1.bias"].numpy())
  np.testing.assert_array_equal(stats["visual_conv1d_2"]["bn"]["var"], state["visual_model.conv1d_2.1.running_var"])
  np.testing.assert_array_equal(params["va1"]["norm1_k"]["scale"], state["va1.norm1_k.weight"])


@pytest.mark.parametrize("fusion,ignored", [
    ("it", set()),
    ("ia", {"av1.proj.weight", "av1.proj.bias", "va1.proj.weight", "va1.proj.bias", "finalAttention.in_proj_weight",
            "finalAttention.in_proj_bias", "finalAttention.out_proj.weight", "finalAttention.out_proj.bias"}),
    ("lt", {"finalAttention.in_proj_weight", "finalAttention.in_proj_bias", "finalAttention.out_proj.weight",
            "finalAttention.out_proj.bias"}),
])
def test_ignored_entries_are_exactly_the_unused_ones(fusion, ignored):
  state = _state(fusion)
  _, report = convert.convert_avtca(state, fusion)
  always = {k for k in state if k.endswith("num_batches_tracked") or (k.endswith(("_model.classifier_1.0.weight", "_model.classifier_1.0.bias")))}
  assert {k for k, _ in report.ignored} == always | ignored
  assert len(always) == 76 + 4
  assert len(report.mapped) + len(report.ignored) == len(state)


def test_training_checkpoint_with_module_prefix():
  state = _state("lt")
  direct, _ = convert.convert_avtca(state, "lt")
  wrapped = {"epoch": 3, "arch": "multimodalcnn", "best_prec1": 50.0,
             "state_dict": {f"module.{k}": v for k, v in state.items()}}
  from_wrapped, _ = convert.convert_avtca(wrapped, "lt")
  _assert_trees_equal(direct, from_wrapped)


def test_efficientface_checkpoint_converts_with_prefix_and_fc_ignored():
  torch.manual_seed(1)
  model = torch_avtca.randomize_(torch_avtca.EfficientFace(), seed=1)
  variables, report = convert.convert_efficientface(torch_avtca.efficientface_checkpoint(model))
  assert set(variables) == {"params", "batch_stats"}
  assert set(variables["params"]) == {"visual_backbone"}
  assert {k for k, _ in report.ignored} == {"fc.weight", "fc.bias"} | {
      k for k in model.state_dict() if k.endswith("num_batches_tracked")}
  # The same weights inside a whole AVT-CA model convert to the same backbone.
  avtca = torch_avtca.MultiModalCNN()
  avtca.visual_model.load_state_dict(model.state_dict(), strict=False)
  whole, _ = convert.convert_avtca(avtca.state_dict(), "it")
  for collection in ("params", "batch_stats"):
    _assert_trees_equal(variables[collection]["visual_backbone"], whole[collection]["visual_backbone"])


def _error(checkpoint, fusion="it", kind="avtca") -> str:
  with pytest.raises(convert.ConversionError) as info:
    if kind == "avtca":
      convert.convert_avtca(checkpoint, fusion)
    else:
      convert.convert_efficientface(checkpoint)
  return str(info.value)


def test_missing_key_is_listed():
  state = _state("it")
  del state["va1.attn.kv.weight"], state["visual_model.local.bn2_2.running_var"]
  message = _error(state)
  assert "2 missing keys" in message
  assert "va1.attn.kv.weight (for params/va1/attn/kv/kernel (128, 128))" in message
  assert "visual_model.local.bn2_2.running_var" in message


def test_unexpected_key_is_listed():
  state = _state("it")
  state["visual_model.extra_head.weight"] = torch.zeros(3)
  state["finalAttention.bias_k"] = torch.zeros(1, 1, 128)
  message = _error(state)
  assert "2 unexpected keys" in message
  assert "visual_model.extra_head.weight" in message and "finalAttention.bias_k" in message


def test_wrong_shape_is_listed():
  state = _state("it")
  state["classifier_1.0.weight"] = torch.zeros(7, 256)  # a 7-class head
  state["visual_model.stage3.2.branch2.3.weight"] = torch.zeros(116, 1, 5, 5)
  message = _error(state)
  assert "2 keys with the wrong shape" in message
  assert "classifier_1.0.weight: (7, 256) in the checkpoint, params/classifier/kernel needs (256, 8)" in message
  assert "visual_model.stage3.2.branch2.3.weight: (116, 1, 5, 5)" in message


@pytest.mark.parametrize("saved,model", [("ia", "it"), ("it", "lt"), ("lt", "ia")])
def test_wrong_fusion_variant_is_named(saved, model):
  message = _error(_state(saved), fusion=model)
  assert f"checkpoint is fusion '{saved}', not '{model}': convert it with fusion '{saved}' (--fusion {saved})" in message
  fusion_key = {"it": "av1.attn.q.weight", "ia": "av1.q.weight", "lt": "av.attn.q.weight"}[saved]
  assert fusion_key in message


def test_wrong_kind_is_named():
  efficientface = torch_avtca.efficientface_checkpoint(torch_avtca.EfficientFace())
  assert "this is an EfficientFace checkpoint" in _error(efficientface, kind="avtca")
  assert "this is a whole AVT-CA checkpoint" in _error({"state_dict": _state("it")}, kind="efficientface")


def test_efficientface_strictness():
  checkpoint = torch_avtca.efficientface_checkpoint(torch_avtca.EfficientFace())
  del checkpoint["state_dict"]["module.conv5.1.running_mean"]
  checkpoint["state_dict"]["module.fc2.weight"] = torch.zeros(2)
  message = _error(checkpoint, kind="efficientface")
  assert "conv5.1.running_mean (for batch_stats/conv5_1/mean (1024,))" in message
  assert "fc2.weight" in message


def _assert_trees_equal(a, b):
  flat_a, flat_b = dict(convert._flatten(a)), dict(convert._flatten(b))
  assert flat_a.keys() == flat_b.keys()
  for path in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[path]), np.asarray(flat_b[path]), err_msg="/".join(path))


def test_cli_round_trip(tmp_path, capsys):
  state = _state("ia")
  path = tmp_path / "RAVDESS_multimodalcnn_15_best0.pth"
  torch.save({"epoch": 7, "arch": "multimodalcnn", "best_prec1": 61.5,
              "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
  output = tmp_path / "converted"
  assert convert.main(["--checkpoint", str(path), "--kind", "avtca", "--fusion", "ia", "--output", str(output),
                       "--print-keys"]) == 0
  printed = capsys.readouterr().out
  assert "mapped  av1.q.weight -> params/av1/q/kernel" in printed
  assert "ignored finalAttention.in_proj_weight" in printed

  direct, _ = convert.convert_avtca(state, "ia")
  _assert_trees_equal(convert.load_init_checkpoint(str(output)), direct)
  # `into` checks paths and shapes: a model of another variant does not fit.
  other, _ = convert.convert_avtca(_state("it"), "it")
  with pytest.raises(convert.ConversionError, match="params/av1/q/kernel is not in the model"):
    convert.load_init_checkpoint(str(output), into=other)


def test_cli_efficientface_overlays_backbone(tmp_path):
  torch.manual_seed(2)
  model = torch_avtca.randomize_(torch_avtca.EfficientFace(), seed=2)
  path = tmp_path / "EfficientFace_Trained_on_AffectNet7.pth.tar"
  torch.save(torch_avtca.efficientface_checkpoint(model), path)
  output = tmp_path / "ef"
  assert convert.main(["--checkpoint", str(path), "--kind", "efficientface", "--output", str(output)]) == 0

  fresh, _ = convert.convert_avtca(_state("it"), "it")  # stands in for freshly initialised variables
  merged = convert.load_init_checkpoint(str(output), into=fresh)
  expected, _ = convert.convert_efficientface(torch_avtca.efficientface_checkpoint(model))
  for collection in ("params", "batch_stats"):
    _assert_trees_equal(merged[collection]["visual_backbone"], expected[collection]["visual_backbone"])
  _assert_trees_equal(merged["params"]["av1"], fresh["params"]["av1"])
  assert not np.array_equal(merged["params"]["visual_backbone"]["conv1_0"]["kernel"],
                            fresh["params"]["visual_backbone"]["conv1_0"]["kernel"])


def test_conversion_does_not_import_torch():
  code = ("import sys, avtca_jax.convert, avtca_jax.reference, avtca_jax.models.avtca; "
          "assert 'torch' not in sys.modules, 'torch imported'")
  subprocess.run([sys.executable, "-c", code], check=True)
