"""Numerical parity of the Flax AVT-CA with the PyTorch reference, through `avtca_jax.convert`.

Random PyTorch weights (every norm scale/bias, MHA bias and BatchNorm statistic randomised, see
`torch_avtca.randomize_`) are converted and both models run on the same inputs: eval-mode logits for each
fusion variant, train-mode logits, updated running statistics and cross-entropy gradients for 'it', the two
depthwise-conv forms, and the input contract on a real MFCC and uint8 frames. Each comparison comes with a
control showing that the quantity it compares actually depends on what is being checked.

One clip per batch (two for training) and one compilation per fusion variant keep this under ~2 minutes on
2 CPU cores. `pytest -s` prints the measured differences.
"""

import copy
import functools
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from avtca_jax import convert  # noqa: E402
from avtca_jax.models.avtca import AVTCA, frames_from_uint8  # noqa: E402
from avtca_jax.models.layers import DepthwiseConv  # noqa: E402
from avtca_jax.reference import torch_avtca  # noqa: E402

RAVDESS = Path(__file__).resolve().parents[1].parent / "shared/data/ravdess"
LOGIT_RTOL = 1e-4  # max |flax - torch| <= LOGIT_RTOL * max |torch logits|
STATS_RTOL = 1e-4  # running statistics, relative to the largest value of each tensor
# Gradients, per tensor: ||g_flax - g_64|| / ||g_64|| <= max(GRAD_FACTOR * same for PyTorch float32, GRAD_FLOOR)
# where g_64 is PyTorch's float64 gradient.
GRAD_FACTOR = 8.0  # measured worst ratio 4.6 (modulator spatial gate), typically 1.7
GRAD_FLOOR = 1e-4
# Eval runs one variant with each depthwise-conv form, so both are covered on the whole model.
CONV_IMPL = {"it": "slices", "ia": "grouped", "lt": "slices"}


def _random_inputs(batch: int, seed: int):
  """PyTorch-layout inputs: MFCC (B, 10, 156) on a raw-MFCC scale, BGR frames (B*15, 3, 224, 224) in [0, 1]."""
  rng = np.random.default_rng(seed)
  mfcc = rng.normal(0.0, 25.0, (batch, 10, 156)).astype(np.float32)
  mfcc[:, 0] += -400.0  # c0 of real speech is large and negative
  frames = rng.uniform(0.0, 1.0, (batch * 15, 3, 224, 224)).astype(np.float32)
  return mfcc, frames


def _flax_inputs(mfcc, frames):
  batch = mfcc.shape[0]
  return (jnp.asarray(mfcc.transpose(0, 2, 1)),
          jnp.asarray(frames.reshape(batch, 15, 3, 224, 224).transpose(0, 1, 3, 4, 2)))


def _torch_logits(model, mfcc, frames):
  with torch.no_grad():
    return model(torch.from_numpy(mfcc), torch.from_numpy(np.ascontiguousarray(frames))).numpy()


@functools.lru_cache(maxsize=None)
def _torch_model(fusion: str):
  torch.manual_seed({"it": 0, "ia": 1, "lt": 2}[fusion])
  model = torch_avtca.MultiModalCNN(fusion=fusion)
  calibration = tuple(torch.from_numpy(x) for x in _random_inputs(1, seed=100))
  return torch_avtca.randomize_(model, seed=3, calibration_inputs=calibration).eval()


@functools.lru_cache(maxsize=None)
def _eval_fn(fusion: str):
  model = AVTCA(fusion=fusion, conv_impl=CONV_IMPL[fusion])
  return jax.jit(lambda variables, mfcc, frames: model.apply(variables, mfcc, frames, train=False))


def _max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize("fusion", ["it", "ia", "lt"])
def test_eval_logits_match_pytorch(fusion):
  torch_model = _torch_model(fusion)
  variables, _ = convert.convert_avtca(torch_model.state_dict(), fusion)
  mfcc, frames = _random_inputs(1, seed=1)
  expected = _torch_logits(torch_model, mfcc, frames)
  got = np.asarray(_eval_fn(fusion)(variables, *_flax_inputs(mfcc, frames)))
  tolerance = LOGIT_RTOL * np.max(np.abs(expected))
  print(f"\n{fusion} ({CONV_IMPL[fusion]}): max |logit diff| {_max_diff(got, expected):.3g}, "
        f"max |logit| {np.max(np.abs(expected)):.3g}")
  assert _max_diff(got, expected) <= tolerance

  # Control: the running statistics reach the logits (one early BatchNorm mean shifted by 0.5 std).
  stats = copy.deepcopy(variables["batch_stats"])
  bn = stats["visual_backbone"]["stage2_1"]["branch2_4"]
  bn["mean"] = bn["mean"] + 0.5 * np.sqrt(bn["var"])
  shifted = np.asarray(_eval_fn(fusion)({"params": variables["params"], "batch_stats": stats},
                                        *_flax_inputs(mfcc, frames)))
  assert _max_diff(shifted, expected) > 10 * tolerance


def _torch_train_step(model, mfcc, frames, labels, dtype):
  """Train-mode forward and cross-entropy backward; returns logits and the state dict / grads, Flax layout."""
  model.train()
  logits = model(torch.from_numpy(mfcc).to(dtype), torch.from_numpy(frames).to(dtype))
  torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)).backward()
  state = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
  grads = dict(state)
  for name, param in model.named_parameters():  # converted like weights, so they land in the Flax layout
    grads[name] = (param.grad if param.grad is not None else torch.zeros_like(param)).float()
  return (logits.detach().float().numpy(), convert.convert_avtca(state, "it")[0]["batch_stats"],
          convert.convert_avtca(grads, "it")[0]["params"])


@pytest.fixture(scope="module")
def train_step():
  """One train-mode forward/backward of 'it' on 2 clips: Flax, PyTorch float32 and PyTorch float64."""
  torch_model = copy.deepcopy(_torch_model("it"))
  before, _ = convert.convert_avtca(torch_model.state_dict(), "it")
  torch_model_64 = copy.deepcopy(torch_model).double()
  mfcc, frames = _random_inputs(2, seed=2)
  labels = np.array([3, 6])
  torch_logits, torch_stats, torch_grads = _torch_train_step(torch_model, mfcc, frames, labels, torch.float32)
  _, _, torch_grads_64 = _torch_train_step(torch_model_64, mfcc, frames, labels, torch.float64)

  model = AVTCA(fusion="it", conv_impl=CONV_IMPL["it"])

  def loss_fn(params, batch_stats, mfcc, frames):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, mfcc, frames, train=True,
                                  mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(labels)).mean()
    return loss, (logits, updates["batch_stats"])

  step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  (_, (flax_logits, flax_stats)), flax_grads = step(before["params"], before["batch_stats"],
                                                    *_flax_inputs(mfcc, frames))
  return dict(before=before, torch_logits=torch_logits, torch_stats=torch_stats, torch_grads=torch_grads,
              torch_grads_64=torch_grads_64, flax_logits=np.asarray(flax_logits),
              flax_stats=jax.device_get(flax_stats), flax_grads=jax.device_get(flax_grads))


def _leaves(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_train_mode_logits_match(train_step):
  expected, got = train_step["torch_logits"], train_step["flax_logits"]
  print(f"\ntrain-mode logits: max |diff| {_max_diff(got, expected):.3g}, max |logit| {np.max(np.abs(expected)):.3g}")
  assert _max_diff(got, expected) <= LOGIT_RTOL * np.max(np.abs(expected))


def test_train_mode_running_statistics_match(train_step):
  """PyTorch's update: running_var moves towards the *unbiased* batch variance."""
  before = _leaves(train_step["before"]["batch_stats"])
  expected, got = _leaves(train_step["torch_stats"]), _leaves(train_step["flax_stats"])
  assert expected.keys() == got.keys() == before.keys()
  worst = max((_max_diff(got[k], expected[k]) / np.max(np.abs(expected[k])), k) for k in expected)
  print(f"\nrunning statistics: worst relative diff {worst[0]:.3g} ({worst[1]})")
  # The temporal BNs see 30 samples: the biased variance would be off by a factor 29/30, i.e. ~3e-3 after
  # momentum 0.1, far above STATS_RTOL.
  assert worst[0] <= STATS_RTOL
  assert all(_max_diff(expected[k], before[k]) > 0 for k in expected), "a BatchNorm did not update"


# One parameter per kind of layer, each checked explicitly on top of the all-tensor check.
GRADIENT_PROBES = (
    "visual_backbone/conv1_0/kernel",  # stem conv
    "visual_backbone/conv1_1/scale",  # BN scale
    "visual_backbone/stage2_0/branch1_0/kernel",  # depthwise stride 2
    "visual_backbone/stage3_3/branch2_3/kernel",  # depthwise stride 1
    "visual_backbone/local/conv2_1/kernel",  # grouped, channel multiplier 4
    "visual_backbone/stage4_1/branch2_5/kernel",  # 1x1 conv
    "visual_backbone/conv5_1/bias",  # BN bias
    "visual_backbone/modulator/gate_c_fc_0/kernel",  # modulator dense
    "visual_backbone/modulator/gate_s_conv_di_1/kernel",  # dilated conv
    "visual_backbone/modulator/gate_s_conv_final/bias",
    "audio_conv1d_0/conv/kernel",  # valid conv1d
    "visual_conv1d_2/conv/kernel",  # same conv1d
    "av1/attn/q/kernel", "va1/attn/kv/kernel", "av1/attn/proj/kernel",  # cross attention
    "va1/norm1_k/scale", "av1/norm2/bias",  # layer norm
    "av1/mlp/fc1/kernel",
    "final_attention/in_proj_kernel", "final_attention/in_proj_bias", "final_attention/out_proj/kernel",  # MHA
    "classifier/kernel",
)


def test_gradients_match(train_step):
  """Per tensor, the Flax gradient is about as close to PyTorch float64 as PyTorch float32 is.

  Train-mode gradients into the backbone are ill-conditioned with 2 clips (the BatchNorm backward over
  2 x 15 nearly identical time-step gradients cancels): PyTorch float32 itself is ~1% off float64 there, while
  the fusion layers agree to ~1e-5. So the bound is relative to PyTorch float32's own error.
  """
  flax, torch32, torch64 = (_leaves(train_step[k]) for k in ("flax_grads", "torch_grads", "torch_grads_64"))
  assert flax.keys() == torch32.keys() == torch64.keys()
  typical = np.median([np.linalg.norm(g) for g in torch64.values()])
  errors, structurally_zero = {}, []
  for name, exact in torch64.items():
    norm = np.linalg.norm(exact)
    # A bias whose per-channel shift a later train-mode BatchNorm removes (conv bias before BN, BN bias
    # before a 1x1 conv and BN, av1's fc2 bias before the audio stage-2 BN) has an exactly zero gradient.
    if norm <= 1e-10 * typical:
      structurally_zero.append(name)
      assert np.linalg.norm(flax[name]) <= 1e-5 * typical, name
      continue
    errors[name] = (np.linalg.norm(flax[name] - exact) / norm, np.linalg.norm(torch32[name] - exact) / norm,
                    np.linalg.norm(flax[name].astype(np.float64) - torch32[name]) / norm)
  print("\ngradients, relative error (flax vs torch64, torch32 vs torch64, flax vs torch32):")
  for name in GRADIENT_PROBES:
    print(f"  {name}: " + ", ".join(f"{e:.2g}" for e in errors[name]))
  worst = max(errors, key=lambda n: errors[n][2])
  print(f"  worst flax vs torch32: {errors[worst][2]:.2g} ({worst}); median "
        f"{np.median([e[2] for e in errors.values()]):.2g}")
  assert set(GRADIENT_PROBES) <= errors.keys()
  assert len(structurally_zero) == 32, structurally_zero  # 8 conv1d + 4 modulator + 19 backbone BN + fc2 biases
  too_far = {n: e for n, e in errors.items() if e[0] > max(GRAD_FACTOR * e[1], GRAD_FLOOR)}
  assert not too_far, too_far


@pytest.mark.parametrize("in_features,out_features,stride,size", [
    (29, 116, 2, 28),  # LocalFeatureExtractor conv{k}_1: groups 29, multiplier 4
    (58, 58, 1, 28),  # ShuffleNet depthwise, stride 1
    (116, 116, 2, 14),  # ShuffleNet depthwise, stride 2
])
def test_depthwise_conv_forms_agree(in_features, out_features, stride, size):
  """'slices' and 'grouped' give the same outputs and gradients, and both match torch's grouped conv2d."""
  rng = np.random.default_rng(in_features + stride)
  x = rng.normal(size=(2, size, size, in_features)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 1, out_features)).astype(np.float32)
  cotangent = rng.normal(size=(2, size // stride, size // stride, out_features)).astype(np.float32)

  def run(impl):
    layer = DepthwiseConv(out_features, strides=stride, impl=impl)
    out, vjp = jax.vjp(lambda k, x: layer.apply({"params": {"kernel": k}}, x), kernel, x)
    return (out,) + vjp(cotangent)

  slices, grouped = run("slices"), run("grouped")
  for a, b in zip(slices, grouped):
    assert _max_diff(a, b) <= 1e-5 * np.max(np.abs(b))
  expected = torch.nn.functional.conv2d(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                                        torch.from_numpy(kernel.transpose(3, 2, 0, 1)), stride=stride, padding=1,
                                        groups=in_features).numpy().transpose(0, 2, 3, 1)
  assert _max_diff(slices[0], expected) <= 1e-5 * np.max(np.abs(expected))
  assert _max_diff(grouped[0], expected) <= 1e-5 * np.max(np.abs(expected))


def _raw_mfcc(path: Path) -> np.ndarray:
  """The original's features (docs/original.md#audio-window, #mfccs): 3.6 s centre crop or zero pad, librosa MFCC with reflect padding."""
  librosa = pytest.importorskip("librosa")
  y, _ = librosa.load(path, sr=22050)
  length = int(22050 * 3.6)
  if len(y) >= length:
    start = (len(y) - length) // 2
    y = y[start:start + length]
  else:
    y = np.pad(y, (0, length - len(y)))
  return librosa.feature.mfcc(y=y, sr=22050, n_mfcc=10, n_fft=2048, hop_length=512, center=True,
                              pad_mode="reflect").astype(np.float32)


def _uint8_rgb_frames() -> np.ndarray:
  """15 deterministic, face-free RGB frames (15, 224, 224, 3) whose three channels differ."""
  t, y, x = np.meshgrid(np.arange(15), np.arange(224), np.arange(224), indexing="ij")
  red = (x + 9 * t) % 256
  green = (2 * y + 5 * t) % 256
  blue = 60 + 140 * (((x // 28) + (y // 28)) % 2) + 3 * t
  return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def test_input_contract_raw_mfcc_and_bgr_frames():
  """PyTorch on (B, 10, 156) raw MFCC + BGR NCHW in [0, 1] == Flax on (B, 156, 10) + frames_from_uint8(rgb, 'bgr')."""
  audio = RAVDESS / "audio_speech_22k/Actor_01/03-01-01-01-01-01-01.flac"
  if not audio.exists():
    pytest.skip(f"RAVDESS audio not found at {audio} (the shared data folder is absent)")
  mfcc = _raw_mfcc(audio)
  assert mfcc.shape == (10, 156)
  rgb = _uint8_rgb_frames()

  torch_frames = (rgb[..., [2, 1, 0]].astype(np.float32) / 255.0).transpose(0, 3, 1, 2)  # BGR, NCHW
  expected = _torch_logits(_torch_model("it"), mfcc[None], torch_frames)

  variables, _ = convert.convert_avtca(_torch_model("it").state_dict(), "it")
  flax_mfcc = jnp.asarray(mfcc.T[None])  # (1, 156, 10)
  got = np.asarray(_eval_fn("it")(variables, flax_mfcc, frames_from_uint8(jnp.asarray(rgb[None]), "bgr")))
  tolerance = LOGIT_RTOL * np.max(np.abs(expected))
  print(f"\nreal MFCC + uint8 frames: max |logit diff| {_max_diff(got, expected):.3g}, "
        f"max |logit| {np.max(np.abs(expected)):.3g}")
  assert _max_diff(got, expected) <= tolerance

  # Control: the channel order reaches the logits.
  wrong_order = np.asarray(_eval_fn("it")(variables, flax_mfcc, frames_from_uint8(jnp.asarray(rgb[None]), "rgb")))
  assert _max_diff(wrong_order, expected) > 10 * tolerance
