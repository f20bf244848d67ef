"""Augmentation: flip/rotation geometry, one transform per clip, softhard and noise modality dropout."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from avtca_jax import augment


def _clip(batch=2, frames=3, height=24, width=20, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, size=(batch, frames, height, width, 3), dtype=np.uint8)


def _smooth_image(height=40, width=32):
  yy, xx = np.mgrid[0:height, 0:width]
  img = np.stack([(xx * 7) % 256, (yy * 5) % 256, ((xx + 2 * yy) * 3) % 256], -1).astype(np.uint8)
  img[5:12, 4:10] = 255
  return img


def test_flip_is_a_horizontal_flip_and_angle_zero_is_identity():
  frames = _clip()
  flipped = augment.flip_and_rotate(jnp.asarray(frames), jnp.array([True, False]), jnp.array([0, 0]))
  np.testing.assert_array_equal(np.asarray(flipped)[0], frames[0, :, :, ::-1])
  np.testing.assert_array_equal(np.asarray(flipped)[1], frames[1])
  assert flipped.dtype == jnp.uint8 and flipped.shape == frames.shape


def test_rotation_direction_matches_pil_counter_clockwise():
  img = _smooth_image(32, 32)
  out = augment.flip_and_rotate(jnp.asarray(img)[None, None], jnp.array([False]), jnp.array([90]))
  np.testing.assert_array_equal(np.asarray(out)[0, 0], np.rot90(img, 1))  # PIL rotate(90) = np.rot90(k=1)


@pytest.mark.parametrize("flip,angle", [(False, 7), (True, -10), (True, 3)])
def test_rotation_matches_pil_bilinear_black_fill(flip, angle):
  from PIL import Image
  img = _smooth_image()
  out = np.asarray(augment.flip_and_rotate(jnp.asarray(img)[None, None], jnp.array([flip]), jnp.array([angle])))
  pil = Image.fromarray(img)
  if flip:
    pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
  reference = np.asarray(pil.rotate(angle, resample=Image.BILINEAR))
  diff = np.abs(out[0, 0].astype(int) - reference.astype(int))
  assert diff.max() <= 1, diff.max()  # rounding only; corners are black in both
  assert (out[0, 0][0, 0] == 0).all() and (reference[0, 0] == 0).all()


def test_one_flip_and_angle_per_clip_shared_by_its_frames():
  frames = _clip(batch=4, frames=5, seed=1)
  key = jax.random.key(3)
  out = np.asarray(jax.jit(augment.random_flip_and_rotate)(key, jnp.asarray(frames)))
  flip, angle = augment.sample_flip_and_angle(key, 4)
  for b in range(4):
    for t in range(5):  # each frame alone, with its clip's parameters, gives the same frame
      single = augment.flip_and_rotate(jnp.asarray(frames[b, t])[None, None], flip[b:b + 1], angle[b:b + 1])
      np.testing.assert_array_equal(out[b, t], np.asarray(single)[0, 0])


def test_random_parameters_range_and_determinism():
  flip, angle = augment.sample_flip_and_angle(jax.random.key(0), 2000)
  angle = np.asarray(angle)
  assert angle.min() == -10 and angle.max() == 10 and angle.dtype == np.int32
  assert len(np.unique(angle)) == 21
  assert 0.45 < float(np.mean(np.asarray(flip))) < 0.55
  again = augment.sample_flip_and_angle(jax.random.key(0), 2000)
  np.testing.assert_array_equal(angle, np.asarray(again[1]))


def test_tf_version_matches_jax_inside_the_image():
  tf = pytest.importorskip("tensorflow")
  img = np.stack([_smooth_image(), _smooth_image()[::-1]])  # (T=2, H, W, 3)
  for flip, angle in [(False, 0), (True, 0), (True, 8), (False, -10)]:
    jax_out = np.asarray(augment.flip_and_rotate(jnp.asarray(img)[None], jnp.array([flip]), jnp.array([angle])))[0]
    tf_out = augment.tf_flip_and_rotate(tf.constant(img), flip, angle).numpy()
    diff = np.abs(jax_out.astype(int) - tf_out.astype(int))[:, 3:-3, 3:-3]  # TF blends the border with black
    assert diff.max() <= 1, (flip, angle, diff.max())
    if angle == 0:
      np.testing.assert_array_equal(jax_out, tf_out)


def _unpermute(x, permutation):
  out = np.empty_like(x)
  out[np.asarray(permutation)] = x
  return out


def test_softhard_blocks_coefficients_and_labels():
  rng = np.random.default_rng(0)
  b = 3
  mfcc = jnp.asarray(rng.normal(size=(b, 156, 10)).astype(np.float32) + 5.0)
  frames = jnp.asarray(rng.uniform(0.1, 1.0, size=(b, 15, 8, 8, 3)).astype(np.float32))
  labels = jnp.array([4, 0, 7], jnp.int32)
  m, f, y, perm = augment.softhard(jax.random.key(1), mfcc, frames, labels)
  assert m.shape == (4 * b, 156, 10) and f.shape == (4 * b, 15, 8, 8, 3) and y.shape == (4 * b,)
  assert sorted(np.asarray(perm).tolist()) == list(range(4 * b))
  assert not np.array_equal(np.asarray(perm), np.arange(4 * b))  # actually permuted
  m, f, y = (_unpermute(np.asarray(a), perm) for a in (m, f, y))
  np.testing.assert_array_equal(y, np.tile(np.asarray(labels), 4))
  mfcc, frames = np.asarray(mfcc), np.asarray(frames)
  np.testing.assert_array_equal(m[:b], mfcc)
  np.testing.assert_array_equal(f[:b], frames)
  c = m[b:2 * b] / mfcc  # audio * c, video * (1 - c), one c per clip in {0.00, ..., 0.99}
  for i in range(b):
    ci = float(np.median(c[i]))
    np.testing.assert_allclose(c[i], ci, rtol=1e-5, atol=1e-6)
    assert 0.0 <= ci <= 0.99 and abs(ci * 100 - round(ci * 100)) < 1e-4
    np.testing.assert_allclose(f[b + i], frames[i] * (1 - ci), rtol=1e-5, atol=1e-6)
  assert np.all(m[2 * b:3 * b] == 0) and np.array_equal(f[2 * b:3 * b], frames)
  assert np.array_equal(m[3 * b:], mfcc) and np.all(f[3 * b:] == 0)


def test_softhard_explicit_coefficients_and_jit():
  mfcc = jnp.ones((2, 156, 10))
  frames = jnp.ones((2, 15, 4, 4, 3))
  fn = jax.jit(lambda k, m, f, y, c: augment.softhard(k, m, f, y, c))
  m, f, y, perm = fn(jax.random.key(0), mfcc, frames, jnp.array([1, 2]), jnp.array([0.0, 0.99]))
  m, f = _unpermute(np.asarray(m), perm), _unpermute(np.asarray(f), perm)
  np.testing.assert_allclose(m[2:4, 0, 0], [0.0, 0.99], rtol=1e-6)
  np.testing.assert_allclose(f[2:4, 0, 0, 0, 0], [1.0, 0.01], rtol=1e-5)


def test_noise_blocks():
  rng = np.random.default_rng(0)
  b = 4
  mfcc = jnp.asarray(rng.normal(size=(b, 156, 10)).astype(np.float32) * 100 - 300)
  frames = jnp.asarray(rng.uniform(size=(b, 15, 16, 16, 3)).astype(np.float32))
  labels = jnp.arange(b, dtype=jnp.int32)
  m, f, y, perm = augment.noise(jax.random.key(2), mfcc, frames, labels)
  assert m.shape[0] == f.shape[0] == y.shape[0] == 3 * b
  m, f, y = (_unpermute(np.asarray(a), perm) for a in (m, f, y))
  np.testing.assert_array_equal(y, np.tile(np.arange(b), 3))
  np.testing.assert_array_equal(m[:b], np.asarray(mfcc))
  np.testing.assert_array_equal(f[:b], np.asarray(frames))
  np.testing.assert_array_equal(f[b:2 * b], np.asarray(frames))  # audio replaced, video kept
  np.testing.assert_array_equal(m[2 * b:], np.asarray(mfcc))  # video replaced, audio kept
  for noisy in (m[b:2 * b], f[2 * b:]):
    assert abs(noisy.mean()) < 0.05 and abs(noisy.std() - 1.0) < 0.05


def test_modality_dropout_dispatch_and_uint8_refused():
  mfcc, frames, labels = jnp.zeros((2, 156, 10)), jnp.zeros((2, 15, 4, 4, 3)), jnp.zeros((2,), jnp.int32)
  assert augment.modality_dropout(jax.random.key(0), None, mfcc, frames, labels)[0].shape[0] == 2
  assert augment.modality_dropout(jax.random.key(0), "softhard", mfcc, frames, labels)[0].shape[0] == 8
  assert augment.modality_dropout(jax.random.key(0), "noise", mfcc, frames, labels)[2].shape[0] == 6
  with pytest.raises(ValueError, match="unknown modality dropout"):
    augment.modality_dropout(jax.random.key(0), "zeros", mfcc, frames, labels)
  with pytest.raises(TypeError, match="float"):
    augment.softhard(jax.random.key(0), mfcc, frames.astype(jnp.uint8), labels)


def test_unpermuted_dropout_is_the_permuted_one_in_block_order():
  rng = np.random.default_rng(2)
  mfcc = jnp.asarray(rng.normal(size=(3, 156, 10)).astype(np.float32))
  frames = jnp.asarray(rng.uniform(size=(3, 15, 4, 4, 3)).astype(np.float32))
  labels = jnp.array([1, 5, 2])
  for fn in (augment.softhard, augment.noise):
    *permuted, perm = fn(jax.random.key(3), mfcc, frames, labels)
    *blocks, identity = fn(jax.random.key(3), mfcc, frames, labels, permute=False)
    np.testing.assert_array_equal(identity, np.arange(len(identity)))
    for p, b in zip(permuted, blocks):
      np.testing.assert_array_equal(_unpermute(np.asarray(p), perm), np.asarray(b))


def _smoke_model_and_batch(b: int):
  """The smoke config's model on CPU, its variables, and b random clips: (model, variables, mfcc, frames,
  labels, rng), the generator after those draws."""
  from avtca_jax import steps
  from avtca_jax.config_validation import default_config
  config = default_config("ravdess:smoke")
  model = steps.create_model(config, "cpu")
  rng = np.random.default_rng(4)
  mfcc = jnp.asarray(rng.normal(size=(b, 156, 10)).astype(np.float32))
  frames = jnp.asarray(rng.uniform(size=(b, config.num_frames, config.image_size, config.image_size, 3))
                       .astype(np.float32))
  labels = jnp.asarray(rng.integers(0, 8, size=b))
  variables = model.init(jax.random.key(0), mfcc[:1], frames[:1], train=False)
  return model, variables, mfcc, frames, labels, rng


def test_the_train_loss_and_gradients_do_not_depend_on_the_order_of_samples():
  """Why the train step may skip the original's shuffle of the grown batch: batch norm's statistics and the
  mean loss are order-free, so a permuted batch gives the same loss and gradients up to float32 rounding
  (amplified through the network's batch norms: about 3e-3 of the gradients' norm here), where a batch that
  is not a permutation (one sample repeated) changes them by about their own size."""
  import optax
  b = 8
  model, variables, mfcc, frames, labels, rng = _smoke_model_and_batch(b)

  def loss(params, m, f, y):
    logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, m, f, train=True,
                            mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  grad = jax.jit(jax.value_and_grad(loss))

  def relative_difference(order):
    value, grads = grad(variables["params"], mfcc[order], frames[order], labels[order])
    squares = lambda tree: sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(tree))
    return float(value), (squares(jax.tree.map(jnp.subtract, grads, reference)) / squares(reference)) ** 0.5

  reference_value, reference = grad(variables["params"], mfcc, frames, labels)
  perm = rng.permutation(b)
  value, difference = relative_difference(perm)
  np.testing.assert_allclose(value, reference_value, rtol=1e-6)
  assert difference < 0.02
  repeated = perm.copy()
  repeated[0] = repeated[1]
  value, difference = relative_difference(repeated)
  assert abs(value - float(reference_value)) > 1e-4 and difference > 0.2


def test_distinct_frames_give_the_train_loss_gradients_and_statistics_of_the_repeated_batch():
  """The train step runs EfficientFace once per distinct clip of modality dropout's grown batch
  (`distinct_frames=True`, the model's `sample_frames`): the same loss, gradients and batch statistics as
  the repeated batch, to float32 rounding (about 1e-4 of the gradients' norm, as much as reordering the
  samples changes them; test above; asserted below 2e-3), with the hand-written and with autodiff's
  batch-norm backward."""
  import optax
  from avtca_jax.models import layers
  b = 4
  model, variables, mfcc, frames, labels, _ = _smoke_model_and_batch(b)
  softhard = {}
  for mode, distinct in (("softhard", 2 * b + 1), ("noise", 2 * b)):
    m, repeated, y, none = augment.modality_dropout(jax.random.key(5), mode, mfcc, frames, labels, permute=False)
    m2, rows, y2, sample_frames = augment.modality_dropout(jax.random.key(5), mode, mfcc, frames, labels,
                                                           permute=False, distinct_frames=True)
    assert none is None and rows.shape[0] == distinct
    np.testing.assert_array_equal(np.asarray(rows)[np.asarray(sample_frames)], np.asarray(repeated))
    np.testing.assert_array_equal(m2, m)
    np.testing.assert_array_equal(y2, y)
    if mode == "softhard":
      softhard = dict(m=m, repeated=repeated, y=y, rows=rows, sample_frames=sample_frames)
  with pytest.raises(ValueError, match="permute=False"):
    augment.softhard(jax.random.key(0), mfcc, frames, labels, distinct_frames=True)

  def loss(params, f, sample_frames):
    logits, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, m, f, train=True,
                                  sample_frames=sample_frames, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates["batch_stats"]

  squares = lambda tree: sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(tree))
  relative = lambda a, b: (squares(jax.tree.map(jnp.subtract, a, b)) / squares(b)) ** 0.5
  m, repeated, y, rows, sample_frames = (softhard[k] for k in ("m", "repeated", "y", "rows", "sample_frames"))
  for hand_written in (True, False):
    with layers.hand_written_backward(hand_written):
      grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
      (want, want_stats), want_grads = grad(variables["params"], repeated, None)
      (got, got_stats), got_grads = grad(variables["params"], rows, sample_frames)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert relative(got_stats, want_stats) < 1e-5 and relative(got_grads, want_grads) < 2e-3
