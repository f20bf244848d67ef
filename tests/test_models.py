"""Model structure: parameter counts equal the original's, shape errors, dtypes, layer pieces."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avtca_jax.models import avtca as avtca_lib
from avtca_jax.models import efficientface
from avtca_jax.models.efficientface import channel_shuffle
from avtca_jax.models.layers import BatchNorm
from avtca_jax.models.summary import ORIGINAL_USED_PARAMS


def _shapes_only(model):
  mfcc = jax.ShapeDtypeStruct((1,) + avtca_lib.MFCC_SHAPE, jnp.float32)
  frames = jax.ShapeDtypeStruct((1, 15, 224, 224, 3), jnp.float32)
  return jax.eval_shape(lambda a, f: model.init(jax.random.PRNGKey(0), a, f, train=False), mfcc, frames)


@pytest.mark.parametrize("fusion", ["it", "ia", "lt"])
def test_used_parameter_count_equals_original(fusion):
  variables = _shapes_only(avtca_lib.AVTCA(fusion=fusion))
  assert avtca_lib.count_params(variables["params"]) == ORIGINAL_USED_PARAMS[fusion]
  # 76 BatchNorm layers in the original; ours keeps mean and var (num_batches_tracked is not needed).
  assert avtca_lib.count_params(variables["batch_stats"]) == 20_108 - 76


SMALL = dict(image_size=32, conv_impl="grouped")  # small crops and the quicker-to-compile conv form


@pytest.fixture(scope="module")
def small_model_outputs():
  model = avtca_lib.AVTCA(**SMALL)
  variables = avtca_lib.init_variables(model, jax.random.PRNGKey(1))
  rng = np.random.default_rng(0)
  mfcc = jnp.asarray(rng.normal(0, 1, (2,) + avtca_lib.MFCC_SHAPE), jnp.float32)
  frames = jnp.asarray(rng.uniform(0, 1, (2, 15, 32, 32, 3)), jnp.float32)
  logits = jax.jit(model.apply)(variables, mfcc, frames)
  return variables, mfcc, frames, logits


def test_head_count_is_a_real_setting(small_model_outputs):
  variables, mfcc, frames, logits8 = small_model_outputs
  # Same parameters as 8 heads, different function.
  logits4 = jax.jit(avtca_lib.AVTCA(num_heads=4, **SMALL).apply)(variables, mfcc, frames)
  assert not np.allclose(logits4, logits8)
  with pytest.raises(ValueError, match="not divisible by num_heads"):
    jax.eval_shape(avtca_lib.AVTCA(num_heads=3, **SMALL).apply, variables, mfcc, frames)


@pytest.mark.parametrize(
    "mfcc_shape, frames_shape, message",
    [
        ((2, 10, 156), (2, 15, 224, 224, 3), r"mfcc: expected shape \(batch, 156, 10\).*got \(2, 10, 156\)"),
        ((2, 156, 10), (2, 16, 224, 224, 3), r"frames: expected shape \(batch, 15, 224, 224, 3\).*got \(2, 16, "),
        ((2, 156, 10), (2, 15, 112, 112, 3), r"got \(2, 15, 112, 112, 3\)"),
        ((2, 156, 10), (3, 15, 224, 224, 3), r"batch mismatch: mfcc has 2 clips, frames has 3"),
    ],
)
def test_wrong_input_shapes_name_expected_and_given(mfcc_shape, frames_shape, message):
  model = avtca_lib.AVTCA()
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(mfcc_shape), jnp.zeros(frames_shape)))


def test_bfloat16_compute_keeps_float32_params_and_is_close(small_model_outputs):
  variables, mfcc, frames, out32 = small_model_outputs
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables))
  out16 = jax.jit(avtca_lib.AVTCA(dtype=jnp.bfloat16, **SMALL).apply)(variables, mfcc, frames)
  assert out16.dtype == jnp.float32
  scale = float(jnp.max(jnp.abs(out32)))
  assert float(jnp.max(jnp.abs(out32 - out16))) < 0.1 * scale + 1e-3


def test_channel_shuffle_interleaves_halves():
  x = jnp.arange(6.0).reshape(1, 1, 1, 6)  # halves a = [0,1,2], b = [3,4,5]
  np.testing.assert_array_equal(channel_shuffle(x)[0, 0, 0], [0, 3, 1, 4, 2, 5])


def test_batchnorm_updates_running_var_with_unbiased_variance():
  x = jnp.asarray(np.random.default_rng(0).normal(2.0, 3.0, (5, 4)), jnp.float32)
  bn = BatchNorm(use_running_average=False)
  variables = bn.init(jax.random.PRNGKey(0), x)
  y, state = bn.apply(variables, x, mutable=["batch_stats"])
  np.testing.assert_allclose(state["batch_stats"]["mean"], 0.1 * np.mean(x, 0), rtol=1e-5)
  np.testing.assert_allclose(state["batch_stats"]["var"], 0.9 + 0.1 * np.var(x, 0, ddof=1), rtol=1e-5)
  np.testing.assert_allclose(y, (x - np.mean(x, 0)) / np.sqrt(np.var(x, 0) + 1e-5), atol=1e-5)


def test_audio_classifier_shares_audio_branch_names():
  audio = avtca_lib.init_variables(avtca_lib.create_model("audio"), jax.random.PRNGKey(0))
  full = _shapes_only(avtca_lib.AVTCA())
  for name, tree in audio["params"].items():
    if name.startswith("audio_"):
      assert jax.tree_util.tree_map(jnp.shape, tree) == jax.tree_util.tree_map(lambda s: s.shape, full["params"][name])


def test_frames_from_uint8_bgr_contract():
  rgb = jnp.asarray([[[[10, 20, 255]]]], jnp.uint8)
  np.testing.assert_allclose(avtca_lib.frames_from_uint8(rgb, "bgr")[0, 0, 0], [1.0, 20 / 255, 10 / 255])
  np.testing.assert_allclose(avtca_lib.frames_from_uint8(rgb, "rgb")[0, 0, 0], [10 / 255, 20 / 255, 1.0])


def test_remat_changes_memory_not_the_function():
  """`remat=True` keeps the variable names and shapes (converted checkpoints load unchanged), really keeps
  fewer activations (XLA's temporaries), and gives the same loss, gradients and batch-norm updates as the
  plain model. Input: 2 clips of 4 frames at 64 px; with fewer samples train-mode batch norm is so
  ill-conditioned that float32 rounding alone moves some gradients by 100%, remat or not (in float64 the
  two agree to 1e-15)."""
  import optax

  kw = dict(num_frames=4, image_size=64, conv_impl="grouped")
  plain, remat = avtca_lib.AVTCA(**kw), avtca_lib.AVTCA(remat=True, **kw)
  variables = avtca_lib.init_variables(plain, jax.random.PRNGKey(2))
  remat_shapes = jax.eval_shape(lambda: avtca_lib.init_variables(remat, jax.random.PRNGKey(2)))
  assert jax.tree.structure(remat_shapes) == jax.tree.structure(variables)
  assert jax.tree.leaves(jax.tree.map(jnp.shape, remat_shapes)) == jax.tree.leaves(jax.tree.map(jnp.shape, variables))
  rng = np.random.default_rng(3)
  mfcc = jnp.asarray(rng.normal(-20, 60, (2,) + avtca_lib.MFCC_SHAPE), jnp.float32)
  frames = jnp.asarray(rng.uniform(0, 1, (2, 4, 64, 64, 3)), jnp.float32)
  labels = jnp.asarray([3, 5])

  def loss_and_grads(model, compiler_options=None):
    def loss_fn(params):
      logits, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, mfcc, frames,
                                    train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates["batch_stats"]

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    compiled = jax.jit(grad_fn, compiler_options=compiler_options).lower(variables["params"]).compile()
    temp_bytes = compiled.memory_analysis().temp_size_in_bytes
    return compiled(variables["params"]), str(jax.make_jaxpr(grad_fn)(variables["params"])), temp_bytes

  ((loss, stats), grads), plain_jaxpr, plain_temp = loss_and_grads(plain)
  ((remat_loss, remat_stats), remat_grads), remat_jaxpr, remat_temp = loss_and_grads(
      remat, efficientface.remat_compiler_options() or None)
  # Remat keeps each block's inputs instead of all its activations, so the backward's temporaries shrink
  # well below the plain program's (without the compiler options XLA:CPU undoes remat: the same bytes).
  assert remat_temp < 0.6 * plain_temp, (plain_temp, remat_temp)
  # Rematerialisation is really on: jax.checkpoint's primitive (`remat2` in jax 0.10) in the differentiated program.
  remat_primitive = re.compile(r"= (remat\w*|checkpoint)\[")
  assert remat_primitive.search(remat_jaxpr) and not remat_primitive.search(plain_jaxpr)
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
  for name, want, got in [("grads", grads, remat_grads), ("batch_stats", stats, remat_stats)]:
    scale = max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want))  # some leaves are 0 up to rounding
    for (path, w), g in zip(jax.tree.leaves_with_path(want), jax.tree.leaves(got)):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * scale, err_msg=f"{name} {jax.tree_util.keystr(path)}")


def test_channel_shuffle_as_a_permutation_matrix_is_exact():
  """The GPU/TPU form (a product with a 0/1 permutation matrix) gives the reshape form's values bit for bit,
  in float32 and bfloat16, and so does its gradient; the backend decides which form a model uses."""
  rng = np.random.default_rng(0)
  for dtype in (jnp.float32, jnp.bfloat16):
    x = jnp.asarray(rng.normal(0, 100, (3, 5, 5, 116)), dtype)
    np.testing.assert_array_equal(channel_shuffle(x, 2, "matmul"), channel_shuffle(x, 2, "reshape"))
    g = jnp.asarray(rng.normal(size=x.shape), dtype)
    vjp = lambda impl: jax.vjp(lambda v: channel_shuffle(v, 2, impl), x)[1](g)[0]
    np.testing.assert_array_equal(vjp("matmul"), vjp("reshape"))
  assert efficientface.shuffle_impl_for("cpu") == "reshape"
  assert efficientface.shuffle_impl_for("tpu") == efficientface.shuffle_impl_for("gpu") == "matmul"
  with pytest.raises(ValueError, match="channel shuffle impl"):
    channel_shuffle(x, 2, "gather")


def test_the_model_is_the_same_function_with_either_shuffle():
  kw = dict(num_frames=2, image_size=32, conv_impl="grouped")
  reshape, matmul = avtca_lib.AVTCA(**kw), avtca_lib.AVTCA(shuffle_impl="matmul", **kw)
  variables = avtca_lib.init_variables(reshape, jax.random.PRNGKey(1))
  rng = np.random.default_rng(1)
  mfcc = jnp.asarray(rng.normal(-20, 60, (4,) + avtca_lib.MFCC_SHAPE), jnp.float32)
  frames = jnp.asarray(rng.uniform(0, 1, (4, 2, 32, 32, 3)), jnp.float32)

  def loss(model, params):
    logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, mfcc, frames, train=True,
                            mutable=["batch_stats"])
    return jnp.sum(logits * jnp.arange(logits.shape[-1]))

  value, grads = jax.jit(jax.value_and_grad(lambda p: loss(reshape, p)))(variables["params"])
  value_m, grads_m = jax.jit(jax.value_and_grad(lambda p: loss(matmul, p)))(variables["params"])
  np.testing.assert_allclose(value_m, value, rtol=1e-6)
  # The shuffle itself is exact; XLA fuses the two programs differently, so float32 sums round differently,
  # which train-mode batch norm on 8 frames amplifies (structurally zero gradients show pure noise).
  squares = lambda tree: sum(float(jnp.sum(jnp.square(x))) for x in jax.tree.leaves(tree))
  difference = (squares(jax.tree.map(jnp.subtract, grads_m, grads)) / squares(grads)) ** 0.5
  print("relative gradient difference", difference)
  assert difference < 1e-4


@pytest.mark.parametrize("hand_written", [True, False])
def test_weighted_batch_norm_is_batch_norm_of_the_repeated_rows(hand_written):
  """Rows counted `weights` times give the outputs, running statistics and gradients (summed over a row's
  copies) of the batch with each row repeated; counting each row once does not."""
  from avtca_jax.models import layers
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(1.5, 2.0, size=(4, 5, 5, 6)).astype(np.float32))
  weights = np.array([2, 1, 3, 1])
  repeat = np.repeat(np.arange(4), weights)
  cotangent = jnp.asarray(rng.normal(size=(len(repeat), 5, 5, 6)).astype(np.float32))
  bn = BatchNorm(use_running_average=False)
  variables = bn.init(jax.random.key(0), x)
  params = {"scale": jnp.asarray(rng.uniform(0.5, 1.5, 6), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=6), jnp.float32)}

  def run(params, x, w, rows):
    y, updates = bn.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, w,
                          mutable=["batch_stats"])
    return jnp.sum(y[rows] * cotangent), (y[rows], updates["batch_stats"])

  with layers.hand_written_backward(hand_written):
    grad = jax.jit(jax.grad(run, argnums=(0, 1), has_aux=True))
    (want_params, want_x), (want_y, want_stats) = grad(params, x[repeat], None, np.arange(len(repeat)))
    (got_params, got_x), (got_y, got_stats) = grad(params, x, jnp.asarray(weights, jnp.float32), repeat)
    (_, _), (_, once_stats) = grad(params, x, jnp.ones(4, jnp.float32), repeat)
  np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=1e-5)
  for key in ("mean", "var"):
    np.testing.assert_allclose(got_stats[key], want_stats[key], rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(once_stats[key] - want_stats[key])) > 1e-3
  for key in ("scale", "bias"):
    np.testing.assert_allclose(got_params[key], want_params[key], rtol=1e-4, atol=1e-4)
  summed = np.zeros_like(np.asarray(x))
  np.add.at(summed, repeat, np.asarray(want_x))
  np.testing.assert_allclose(got_x, summed, rtol=1e-4, atol=1e-5)


def test_weighted_global_batch_norm_is_that_of_the_repeated_rows():
  """With `axis_name` (statistics over devices), the weighted rows of each device give the repeated batch's."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 3, 4, 4, 5)).astype(np.float32))  # (devices, rows, h, w, c)
  weights = jnp.asarray([[2.0, 1.0, 1.0], [1.0, 1.0, 2.0]])  # each device: 4 rows once repeated
  bn = BatchNorm(use_running_average=False, axis_name="data")
  variables = BatchNorm(use_running_average=False).init(jax.random.key(0), x[0])  # same variables

  def run(x, w):
    return bn.apply(variables, x, w, mutable=["batch_stats"])

  repeated = jnp.stack([jnp.repeat(x[d], np.asarray(weights[d], int), axis=0) for d in range(2)])
  want_y, want_stats = jax.vmap(lambda x: run(x, None), axis_name="data")(repeated)
  got_y, got_stats = jax.vmap(run, axis_name="data")(x, weights)
  for d in range(2):
    np.testing.assert_allclose(jnp.repeat(got_y[d], np.asarray(weights[d], int), axis=0), want_y[d],
                               rtol=1e-5, atol=1e-5)
  for key in ("mean", "var"):
    np.testing.assert_allclose(got_stats["batch_stats"][key], want_stats["batch_stats"][key], rtol=1e-5, atol=1e-6)
