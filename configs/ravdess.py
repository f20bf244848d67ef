"""Training configs for AVT-CA on RAVDESS: `--config=configs/ravdess.py[:VARIANT]`.

`get_config` builds the base (the embedded default) and applies the variant's few overrides. Each variant's
command and what to expect is in the docstring of the function that defines it: `_default` (the base
itself), `_smoke`, `_real_data` (fold1 .. fold5), `_original`, `_paper_split`, `_tpu`, `_audio_only`,
`_audio_original`. Timings and the results of runs are in benchmarks/RESULTS.md and docs/.

Variants combine with overrides: `--config=configs/ravdess.py:fold2 --config.batch_size=16`.
"""

import os

import ml_collections

from avtca_jax import datasets
from avtca_jax.preprocessing.config import NUM_FRAMES

# The folder that holds the RAVDESS speech audio as audio_speech_22k/Actor_XX/*.flac. Read when the config
# is built; unset, data.path stays empty and the data source's error says what to set.
RAVDESS_DIR_VARIABLE = "AVTCA_RAVDESS_DIR"

VARIANTS = ("default", "smoke", "fold1", "fold2", "fold3", "fold4", "fold5", "original", "paper_split",
            "audio_only", "audio_original", "tpu")


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"unknown config variant {variant!r}; expected one of {VARIANTS}")
  config = ml_collections.ConfigDict()
  config.variant = variant
  _default(config)
  if variant == "smoke":
    _smoke(config)
  elif variant.startswith("fold"):
    _real_data(config, protocol=variant)
  elif variant == "original":
    _original(config)
  elif variant == "paper_split":
    _paper_split(config)
  elif variant == "tpu":
    _tpu(config)
  elif variant == "audio_only":
    _audio_only(config)
  elif variant == "audio_original":
    _audio_original(config)
  return config


def _default(config):
  """The embedded default: no RAVDESS download needed.

  A small generated dataset (tfds `ravdess/generated`, built on first use: 384 clips of 24 synthetic actors,
  64 px drawn faces whose tint, brows and mouth motion, and a tone whose pitch, depend on the emotion;
  avtca_jax/synthetic.py) goes through the same builder, tf.data pipeline, augmentation and model as real
  data, at 32 px model input. The recipe is sized for a CPU: the original's SGD at a higher rate (the
  generated classes are easy), no decay inside the 8 epochs, and no modality dropout (which quadruples the
  batch).

      python -m avtca_jax.train --config=configs/ravdess.py --workdir=runs/default

  Expected: 8 epochs of 32 steps of 8 clips; validation accuracy rises from chance (12.5%) in the first
  epoch to well above it by the last (docs/training.md has the curves). Writes checkpoints, metrics.jsonl,
  TensorBoard events, a best-by-validation checkpoint and test_metrics.json.
  """
  # Model.
  config.model = "avtca"  # 'avtca' or 'audio' (the audio branch alone)
  config.fusion = "it"
  config.num_heads = 8
  config.num_classes = datasets.RAVDESS.num_classes  # the dataset's class count (checked against the data)
  config.num_frames = NUM_FRAMES
  config.image_size = 32  # model input; stored crops are resized down on the device (generated: 64 px)
  config.dtype = "float32"  # compute dtype; 'bfloat16' for mixed precision (params stay float32)
  config.conv_impl = "auto"  # depthwise convs: 'slices' on CPU, 'grouped' elsewhere
  # Recompute EfficientFace's activations in the backward pass instead of keeping them (jax.checkpoint per
  # block): less memory for more compute, same parameters and results. For batches that do not fit otherwise.
  config.remat = False
  # Precision of float32 matrix products and convolutions (jax default_matmul_precision): 'highest' keeps
  # them float32 on every backend (no TPU bfloat16 pass, no GPU TF32), as the parity tests need.
  config.matmul_precision = "highest"
  # Batch-norm and max-pool backward passes written for XLA:CPU ('auto': on CPU only; autodiff's elsewhere,
  # where the compiled step is smaller without them). 'on' / 'off' force it.
  config.hand_written_backward = "auto"
  config.channel_order = "rgb"  # 'bgr' reproduces the original's input contract (and its checkpoints)
  # Batch-norm statistics over each device's batch ('per_device': pmap semantics; with 8 clips per device
  # it is the original single-GPU batch) or over the global batch ('global': one all-reduce per BN layer,
  # results independent of the device count, at the cost of that communication in every step).
  # 'global' suits a small per-device batch (fewer than about 8 clips); docs/training.md compares the two.
  config.batch_norm = "per_device"
  config.init_checkpoint = ""  # converted EfficientFace or AVT-CA checkpoint (python -m avtca_jax.convert)

  # Data.
  config.data = ml_collections.ConfigDict()
  config.data.source = "tfds"  # 'tfds' (builder + tf.data pipeline), 'audio_folder', 'synthetic'
  config.data.name = "ravdess"  # tfds builder name, or a builder directory
  config.data.builder_config = "generated"
  config.data.data_dir = ""  # tfds data_dir ('' = tfds default, ~/tensorflow_datasets)
  config.data.path = ""  # folder for 'audio_folder'
  config.data.protocol = "fold1"  # split protocol (avtca_jax.splits)
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.test_split = "test"
  # Train on the validation split too (the 4 validation actors: 20 training actors, test actors unseen).
  # Nothing is then evaluated per epoch and the final parameters are tested (no best-validation pick).
  config.data.train_on_validation = False
  config.data.num_examples = 0  # 'synthetic' only: clips per split (0 = its default)
  # 'audio_folder' only: MFCC normalisation (avtca_jax.audio_data.NORMALIZATIONS): 'none' (raw, as the
  # original), 'train' (per-coefficient mean/std of the train actors), 'clip' (each clip over its frames).
  config.data.normalize = "none"
  config.data.cache = False  # hold the decoded dataset in host memory (tfds)
  # Hold the decoded training split on every device and gather batches there (data_sources.DeviceCache):
  # no host decoding or transfer per step. Needs the split's bytes per device (RAVDESS fold 1 at 224 px:
  # 1,920 clips, 4.3 GB). Evaluation still reads through the host pipeline.
  config.data.device_cache = False
  config.data.prefetch = 2  # batches on the devices ahead of the step (2: batch n+1 copied during step n)

  # Augmentation (inside the jitted step).
  config.flip_rotate = True
  config.modality_dropout = "none"  # 'softhard', 'noise' or 'none'

  # Optimisation.
  config.seed = 0
  config.batch_size = 8  # global, over all devices of all hosts
  config.num_epochs = 8
  config.num_train_steps = -1  # > 0 overrides num_epochs
  config.optimizer = "sgd"  # 'sgd' (the original: momentum + dampening), 'adam' (the paper) or 'adamw'
  config.label_smoothing = 0.0
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.dampening = 0.9
  config.weight_decay = 1e-3
  config.schedule = "multistep"  # 'multistep', 'cosine' or 'constant'
  # x0.1 from each of these epochs on, counted from 1 (docs/original.md#optimizer).
  config.lr_boundaries_epochs = (40, 55, 65, 70, 200, 250)
  config.lr_decay = 0.1
  config.warmup_epochs = 0.0

  # Loop, logging, checkpoints.
  config.log_every_steps = 8
  config.eval_every_epochs = 1
  config.checkpoint_every_steps = 0  # 0: at the end of every epoch
  config.keep_checkpoints = 2
  config.eval_batch_size = 0  # 0: same as batch_size
  # JAX's persistent compilation cache ('' = $AVTCA_COMPILATION_CACHE or ~/.cache/avtca_jax/jax; 'none'
  # switches it off): a rerun, the next fold or seed loads the compiled steps instead of compiling them.
  config.compilation_cache_dir = ""
  config.progress_bar = True  # only when stderr is a terminal
  config.evaluate_test = True  # test split of the best-validation checkpoint at the end

  # Multi-host: jax.distributed.initialize when coordinator_address is set (or 'auto' on TPU pods).
  config.distributed = ml_collections.ConfigDict()
  config.distributed.coordinator_address = ""
  config.distributed.num_processes = 1
  config.distributed.process_id = 0


def _smoke(config):
  """Two steps of the default at batch 4: checks the whole loop, not learning.

      python -m avtca_jax.train --config=configs/ravdess.py:smoke --workdir=runs/smoke

  Expected: a finite loss after the two steps; most of the run is compilation.
  """
  config.batch_size = 4
  config.num_train_steps = 2
  config.log_every_steps = 1


def _real_data(config, protocol, *, builder_config="av", learning_rate=0.06, num_epochs=100):
  """fold1 .. fold5: the actor-independent protocol (test 4 actors, validation the next 4, train 16;
  docs/original.md#splits) on the real RAVDESS tfds dataset (`ravdess/av`, built from your download,
  docs/data.md), with the original's recipe (docs/original.md#recipe): SGD lr 0.06, 224 px, softhard
  modality dropout, 100 epochs, EfficientFace initialisation when `init_checkpoint` is set.

      python -m avtca_jax.train --config=configs/ravdess.py:fold3 --workdir=runs/fold3 \\
          --config.init_checkpoint=runs/ef_converted
      python -m avtca_jax.cross_validation --config=configs/ravdess.py:fold1 --workdir=runs/cv   # all five

  Expected: actor-independent accuracy, for comparison with Chumachenko et al.'s 81.6% (their IA fusion,
  one actor split), not with the AVT-CA paper's 96% on a leaky random split
  (docs/original.md#reported-numbers). Needs a GPU or TPU: training at 224 px is impractical on a CPU.

  The other real-data variants (`_original`, `_paper_split`, `_tpu`) start from this one.
  """
  config.data.builder_config = builder_config
  config.data.protocol = protocol
  config.image_size = 224
  config.modality_dropout = "softhard"
  config.learning_rate = learning_rate
  config.num_epochs = num_epochs
  config.log_every_steps = 50


def _original(config):
  """original: the split the public code runs (test actors 1-4, validation 5-8) with the original's recipe
  exactly as coded: both stored copies of each take, 10 epochs at lr 0.06, batch 8, per-device batch norm,
  BGR frames (docs/original.md#recipe).

      python -m avtca_jax.train --config=configs/ravdess.py:original --workdir=runs/original

  Expected: comparable to the public code's own results on the same split (it publishes none;
  docs/original.md#reported-numbers).
  """
  # The original kept the audio-video and the video-only copy of each take (docs/original.md#files-and-labels).
  _real_data(config, protocol="original", builder_config="av_with_video_only", num_epochs=10)
  config.channel_order = "bgr"


def _paper_split(config):
  """paper_split: the paper's stated recipe (Adam lr 0.01, wd 1e-3, batch 8, 128 epochs) on its random
  80/20 clip split, which puts clips of the same actors, and the same utterances, in train and test
  (docs/original.md#splits): numbers from it compare only with the paper's 96%, not with
  actor-independent results.

      python -m avtca_jax.train --config=configs/ravdess.py:paper_split --workdir=runs/paper_split

  Expected: high (leaky) accuracy, far above the actor-independent folds.
  """
  # The paper states no validation set: a fixed schedule, and the last epoch's parameters are tested
  # (the split's empty 'validation' part means no per-epoch evaluation and no best-epoch pick).
  _real_data(config, protocol="paper_random", learning_rate=0.01, num_epochs=128)
  config.optimizer = "adam"
  config.schedule = "constant"


def _tpu(config):
  """tpu: fold1 at full size for an 8-chip TPU or GPU host: bfloat16 compute, global batch 64 (8 per chip,
  so per-device batch norm normalises over the original's batch of 8), learning rate scaled linearly from
  batch 8, with a warm-up.

      python -m avtca_jax.train --config=configs/ravdess.py:tpu --workdir=runs/tpu_fold1

  Expected: like fold1, with 8 times the clips per step.
  """
  _real_data(config, protocol="fold1", learning_rate=0.06 * 8)
  config.dtype = "bfloat16"
  config.batch_size = 64
  config.conv_impl = "grouped"
  config.warmup_epochs = 2.0


def _audio(config):
  """The audio branch alone on the 1440 real speech files ($AVTCA_RAVDESS_DIR/audio_speech_22k, where
  AVTCA_RAVDESS_DIR is the folder that holds audio_speech_22k/), held in memory as MFCCs and on the devices
  (960 training clips of MFCCs are a few MB), with the original's SGD (lr 0.06, momentum 0.9, dampening 0.9,
  L2 1e-3) at batch 8; the best-validation epoch of each fold is tested. Shared by `_audio_only` and
  `_audio_original`; one fold with `--config.data.protocol=foldK`.
  """
  config.model = "audio"
  config.data.source = "audio_folder"
  config.data.path = ravdess_path("audio_speech_22k")
  config.data.device_cache = True
  config.flip_rotate = False
  config.learning_rate = 0.06
  config.log_every_steps = 60
  config.keep_checkpoints = 1


def _audio_only(config):
  """audio_only: the fast audio recipe (docs/audio_only.md): MFCCs standardised per coefficient with the
  training actors' statistics, 24 epochs, x0.1 from the 15th, 20th and 23rd epoch.

      python -m avtca_jax.train --config=configs/ravdess.py:audio_only --workdir=runs/audio
      python -m avtca_jax.cross_validation --config=configs/ravdess.py:audio_only --workdir=runs/audio_cv \\
          --seeds=0,1,2 --remove=

  (`--fold_set=all24` adds fold 6, so that actors 21-24 are tested too.)
  Expected: test accuracy a little below the PyTorch original's loop on the same folds and seeds
  (docs/audio_only.md has the table).
  """
  _audio(config)
  config.data.normalize = "train"
  config.num_epochs = 24
  config.lr_boundaries_epochs = (15, 20, 23)


def _audio_original(config):
  """audio_original: the original's recipe (docs/original.md#recipe) on its audio branch, same data and
  trainer: raw MFCCs, 100 epochs, x0.1 from epochs 40, 55, 65 and 70, best-validation epoch. The same
  commands as `_audio_only`, with `:audio_original`.

  Expected: test accuracy within seed noise of the PyTorch original's loop (docs/audio_only.md).
  """
  _audio(config)
  config.num_epochs = 100
  config.lr_boundaries_epochs = (40, 55, 65, 70)


def ravdess_path(folder: str) -> str:
  """`$AVTCA_RAVDESS_DIR/<folder>`, or '' when the variable is unset."""
  root = os.environ.get(RAVDESS_DIR_VARIABLE, "")
  return os.path.join(root, folder) if root else ""
