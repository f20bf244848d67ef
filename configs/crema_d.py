"""Training configs for AVT-CA on CREMA-D (6 classes): `--config=configs/crema_d.py[:VARIANT]`.

The base is configs/ravdess.py's (the same keys and recipe) with the dataset set to CREMA-D
(`avtca_jax.datasets.CREMA_D`: anger, disgust, fear, happy, neutral, sad; 91 actors in five actor-independent
folds balanced by sex). Each variant's command and what to expect is in the docstring of the function that
defines it: `_default`, `_smoke`, `_real_data` (fold1 .. fold5), `_perceived`, `_finetune`.

The data: `python -m data.crema_d.build --config av --manual_dir <CREMA-D download>` (docs/data.md) for the
real variants; the generated clips (`crema_d/generated`) are built on first use.
"""

from avtca_jax import bundled, datasets

DATASET = datasets.CREMA_D
VARIANTS = ("default", "smoke", "fold1", "fold2", "fold3", "fold4", "fold5", "perceived", "finetune")


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"unknown config variant {variant!r}; expected one of {VARIANTS}")
  config = bundled.ravdess_config().get_config("default")
  config.variant = f"crema_d:{variant}"  # config_validation.default_config reads it back
  _default(config)
  if variant == "smoke":
    _smoke(config)
  elif variant.startswith("fold"):
    _real_data(config, protocol=variant)
  elif variant == "perceived":
    _perceived(config)
  elif variant == "finetune":
    _finetune(config)
  return config


def _default(config):
  """The embedded default on CREMA-D: generated CREMA-D-named clips (tfds `crema_d/generated`, built on first
  use: 2 actors of each fold x 6 classes x 2 clips, 64 px, avtca_jax/synthetic.py) through the same builder,
  pipeline and model as the real data, at 32 px, with configs/ravdess.py's CPU recipe.

      python -m avtca_jax.train --config=configs/crema_d.py --workdir=runs/crema_d_default

  Expected: 8 epochs of 9 steps of 8 clips; validation accuracy above chance (16.7%) by the last epochs.
  """
  config.num_classes = DATASET.num_classes
  config.data.name = DATASET.name
  config.data.builder_config = "generated"
  config.data.protocol = "fold1"


def _smoke(config):
  """Two steps on the generated clips at batch 4, then validation and test: checks the whole loop offline.

      python -m avtca_jax.train --config=configs/crema_d.py:smoke --workdir=runs/crema_d_smoke

  Expected: a finite loss after the two steps and test_metrics.json; most of the run is compilation.
  """
  config.batch_size = 4
  config.num_train_steps = 2
  config.log_every_steps = 1


def _real_data(config, protocol, *, builder_config="av"):
  """fold1 .. fold5: the actor-independent folds of CREMA-D (test one fold of 18-19 actors, validation the
  next, train the other three; `avtca_jax.datasets.CREMA_D_FOLDS`) on the real dataset (`crema_d/av`, built
  from your download), labelled with the intended emotion of the file names, with the original's recipe
  for 6 classes (docs/original.md#recipe): SGD lr 0.06, 224 px, softhard modality dropout, 100 epochs,
  EfficientFace initialisation when `init_checkpoint` is set.

      python -m avtca_jax.train --config=configs/crema_d.py:fold1 --workdir=runs/crema_d_fold1 \\
          --config.init_checkpoint=runs/ef_converted
      python -m avtca_jax.cross_validation --config=configs/crema_d.py:fold1 --workdir=runs/crema_d_cv

  Expected: actor-independent accuracy on the intended labels (a number to report with "intended labels";
  `:perceived` gives the crowd-label number). Needs a GPU or TPU.
  """
  config.data.builder_config = builder_config
  config.data.protocol = protocol
  config.image_size = 224
  config.modality_dropout = "softhard"
  config.learning_rate = 0.06
  config.num_epochs = 100
  config.log_every_steps = 50


def _perceived(config):
  """perceived: fold1 labelled with the crowd's audio-visual vote (MultiModalVote of
  processedResults/summaryTable.csv; clips with a tied vote left out), the label many papers report.

      python -m data.crema_d.build --config av_perceived --manual_dir <CREMA-D download>
      python -m avtca_jax.train --config=configs/crema_d.py:perceived --workdir=runs/crema_d_perceived

  Expected: numbers comparable with papers that use the perceived labels, not with the intended ones.
  """
  _real_data(config, protocol="fold1", builder_config="av_perceived")


def _finetune(config):
  """finetune: fold1 from a RAVDESS model. `init_checkpoint` is a RAVDESS training workdir (its
  best-validation checkpoint, else the latest), a step `WORKDIR/checkpoints/STEP` or a converted AVT-CA
  checkpoint: every parameter but the classifier (8 RAVDESS classes, 6 here) is loaded, and the log names what
  was left out. A tenth of the learning rate, 30 epochs.

      python -m avtca_jax.train --config=configs/crema_d.py:finetune --workdir=runs/crema_d_ft \\
          --config.init_checkpoint=runs/fold1

  Expected: the log names the classifier (8 RAVDESS classes against 6) as the only part left out.
  `python -m benchmarks.finetune_steps` compares its first steps with the same steps from scratch
  (benchmarks/RESULTS.md); whether it ends above a from-scratch run on CREMA-D is not measured here.
  """
  _real_data(config, protocol="fold1")
  config.learning_rate = 0.006
  config.num_epochs = 30
