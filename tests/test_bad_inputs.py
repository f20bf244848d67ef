"""Bad inputs to every command-line tool: each ends with exit status 1 and one line `error: ...` that names
the file (or flag) and the fix, never a Python traceback.

The table below is the contract. argparse tools (predict, convert, preprocess, export) run in this process
through their `main(argv)`; absl tools (train, evaluate, cross_validation) and the tfds build run as real
subprocesses, since their flag parsing is part of what is checked. Expected fragments are checked in the
single `error:` line.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

import pytest

from test_preprocessing import _write_flat_video, _write_tone

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "ravdess"
REAL_CLIP = SHARED / "video_actor05" / "01-01-03-01-01-02-05.mp4"
REAL_AUDIO = SHARED / "audio_speech_48k_actor05" / "03-01-03-01-01-02-05.flac"
pytestmark = pytest.mark.skipif(not REAL_CLIP.exists(), reason=f"real RAVDESS clips not found at {SHARED}")


@dataclasses.dataclass
class Case:
  tool: str  # module run with `python -m`
  argv: Callable[["Materials"], Sequence[str]]
  expected: Callable[["Materials"], Sequence[str]]  # fragments of the error line
  env: dict = dataclasses.field(default_factory=dict)  # subprocess only; None deletes the variable
  # Run as a real process even for an argparse tool, and check that stderr holds no Python warning (in this
  # process pytest would record the warnings, hiding them from stderr).
  no_warnings: bool = False

  @property
  def in_process(self) -> bool:
    return not self.no_warnings and self.tool.split(".")[-1] in ("predict", "convert", "preprocess", "export")


class Materials:
  """Bad files, made once per module under one temp folder, on first use."""

  def __init__(self, root: Path, workdir: Path, base: Path):
    self.root, self.workdir, self._base = root, workdir, base

  def _made(self, name: str, make) -> Path:
    path = self.root / name
    if not path.exists():
      make(path)
    return path

  @property
  def truncated_mp4(self):
    return self._made("cut.mp4", lambda p: p.write_bytes(REAL_CLIP.read_bytes()[:1_000_000]))

  @property
  def renamed_mp4(self):  # an audio file renamed to .mp4
    return self._made("renamed.mp4", lambda p: shutil.copyfile(REAL_AUDIO, p))

  @property
  def empty_wav(self):
    return self._made("empty.wav", lambda p: p.write_bytes(b""))

  @property
  def silent_mp4(self):
    return self._made("silent.mp4", lambda p: _write_flat_video(p, frames=30))

  @property
  def tone_wav(self):
    return self._made("tone.wav", _write_tone)

  @property
  def no_face_mp4(self):
    return self._made("no_face.mp4", _write_flat_video)

  @property
  def video_only_folder(self):  # a 02 (video-only) clip whose take has no audio file
    def make(p):
      (p / "Actor_05").mkdir(parents=True)
      (p / "Actor_05" / "02-01-03-01-01-02-05.mp4").symlink_to(REAL_CLIP)
    return self._made("video_only", make)

  @property
  def pth_ia(self):
    def make(p):
      import torch
      from avtca_jax.reference import torch_avtca
      torch.save({"state_dict": torch_avtca.MultiModalCNN(fusion="ia").state_dict()}, p)
    return self._made("model_ia.pth", make)

  @property
  def truncated_pth(self):
    return self._made("cut.pth", lambda p: p.write_bytes(self.pth_ia.read_bytes()[:200_000]))

  @property
  def efficientface_converted(self):
    def make(p):
      import torch
      from avtca_jax import convert
      from avtca_jax.reference import torch_avtca
      source = self.root / "ef.pth.tar"
      torch.save(torch_avtca.efficientface_checkpoint(torch_avtca.EfficientFace()), source)
      assert convert.main(["--checkpoint", str(source), "--kind", "efficientface", "--output", str(p)]) == 0
    return self._made("ef_converted", make)

  @property
  def incomplete_workdir(self):  # a checkpoint step whose state/ is gone
    def make(p):
      shutil.copytree(self.workdir, p)
      shutil.rmtree(p / "checkpoints" / "0" / "state")
    return self._made("incomplete_workdir", make)

  @property
  def copied_workdir(self):
    return self._made("copied_workdir", lambda p: shutil.copytree(self.workdir, p))

  @property
  def read_only_workdir(self):
    if os.geteuid() == 0:  # root writes through permission bits; sysfs refuses new entries even to root
      return Path("/sys/fs/avtca_workdir")
    def make(p):
      p.mkdir()
      p.chmod(0o555)
    return self._made("read_only", make)

  @property
  def corrupt_tfds(self):
    """The tiny generated tfds dataset with every TFRecord shard's bytes damaged in the middle."""
    def make(p):
      import ravdess_test_data
      builder = ravdess_test_data.build_generated(self._base)
      shutil.copytree(builder.data_path, p)
      for shard in p.glob("*.tfrecord*"):
        data = bytearray(shard.read_bytes())
        data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
        shard.write_bytes(bytes(data))
    return self._made("corrupt_tfds", make)

  @property
  def existing_file(self):
    return self._made("a_file.txt", lambda p: p.write_text("x"))

  @property
  def truncated_wav(self):  # a wav cut inside its header: soundfile fails, then librosa's audioread fallback
    # Not cut.wav: predict pairs cut.mp4 with an audio file of its name beside it, as a folder does.
    return self._made("cut_header.wav", lambda p: p.write_bytes(self.tone_wav.read_bytes()[:30]))


def _smoke(*flags):
  return ["--config=configs/ravdess.py:smoke", "--config.data.source=synthetic", *flags]


CASES = {
    # predict: video and audio files
    "truncated_mp4": Case("avtca_jax.predict", lambda m: [str(m.workdir), str(m.truncated_mp4)],
                          lambda m: [str(m.truncated_mp4), "truncated"]),
    "renamed_audio_as_mp4": Case("avtca_jax.predict", lambda m: [str(m.workdir), str(m.renamed_mp4)],
                                 lambda m: [str(m.renamed_mp4), "cannot open the video", "not a video file"]),
    "truncated_audio": Case("avtca_jax.predict", lambda m: [str(m.workdir), str(REAL_CLIP), str(m.truncated_wav)],
                            lambda m: [str(m.truncated_wav), "could not decode the audio"], no_warnings=True),
    "zero_length_audio": Case("avtca_jax.predict", lambda m: [str(m.workdir), str(REAL_CLIP), str(m.empty_wav)],
                              lambda m: [str(m.empty_wav), "zero-length"]),
    "silent_video": Case("avtca_jax.predict", lambda m: [str(m.workdir), str(m.silent_mp4)],
                         lambda m: [str(m.silent_mp4), "no soundtrack", "give its audio file as the second argument"]),
    "no_face": Case("avtca_jax.predict", lambda m: [str(m.workdir), str(m.no_face_mp4), str(m.tone_wav)],
                    lambda m: [str(m.no_face_mp4), "no face found"]),
    "audio_file_for_a_video_model": Case("avtca_jax.predict", lambda m: [str(m.workdir), str(REAL_AUDIO)],
                                         lambda m: [str(REAL_AUDIO), "needs the video too"]),
    # predict: checkpoints
    "missing_checkpoint_step": Case("avtca_jax.predict",
                                    lambda m: [str(m.workdir / "checkpoints" / "999"), str(REAL_CLIP)],
                                    lambda m: [str(m.workdir / "checkpoints" / "999"), "holds steps [0]"]),
    "incomplete_checkpoint_step": Case("avtca_jax.predict", lambda m: [str(m.incomplete_workdir), str(REAL_CLIP)],
                                       lambda m: ["checkpoints/0", "incomplete", "use another step"]),
    "not_a_checkpoint": Case("avtca_jax.predict", lambda m: [str(m.root), str(REAL_CLIP)],
                             lambda m: [str(m.root), "neither a training workdir"]),
    "efficientface_backbone_to_predict": Case("avtca_jax.predict",
                                              lambda m: [str(m.efficientface_converted), str(REAL_CLIP)],
                                              lambda m: [str(m.efficientface_converted), "not a whole AVT-CA model",
                                                         "--config.init_checkpoint"]),
    "bad_output_suffix": Case("avtca_jax.predict", lambda m: [str(m.workdir), str(REAL_CLIP), "--output", "p.xlsx"],
                              lambda m: ["p.xlsx", ".csv or .json"]),
    # convert
    "wrong_fusion": Case("avtca_jax.convert", lambda m: ["--checkpoint", str(m.pth_ia), "--kind", "avtca",
                                                         "--fusion", "it", "--output", str(m.root / "conv_it")],
                         lambda m: [str(m.pth_ia), "fusion 'ia'", "--fusion ia"]),
    "truncated_pth": Case("avtca_jax.convert", lambda m: ["--checkpoint", str(m.truncated_pth), "--kind", "avtca",
                                                          "--output", str(m.root / "conv_cut")],
                          lambda m: [str(m.truncated_pth), "truncated or corrupt", "copy or download"]),
    # preprocess
    "missing_audio_partner": Case("avtca_jax.preprocess",
                                  lambda m: ["--input", str(m.video_only_folder), "--output", str(m.root / "pp_out")],
                                  lambda m: [str(m.video_only_folder), "no usable RAVDESS clip",
                                             "missing audio partner 03-01-03-01-01-02-05"]),
    "preprocess_missing_input": Case("avtca_jax.preprocess",
                                     lambda m: ["--input", str(m.root / "nowhere"), "--output", str(m.root / "pp2")],
                                     lambda m: [str(m.root / "nowhere"), "not found"]),
    "preprocess_output_is_a_file": Case("avtca_jax.preprocess",
                                        lambda m: ["--input", str(SHARED / "video_actor05"), "--output",
                                                   str(m.existing_file)],
                                        lambda m: [str(m.existing_file), "not a folder"]),
    # export
    "export_into_a_non_empty_folder": Case("avtca_jax.export", lambda m: [str(m.workdir), "--output", str(m.root)],
                                           lambda m: [str(m.root), "not empty"]),
    "export_output_is_a_file": Case("avtca_jax.export", lambda m: [str(m.workdir), "--output", str(m.existing_file)],
                                    lambda m: [str(m.existing_file), "is a file", "choose a new folder"]),
    # train, evaluate, build: real processes
    "unknown_config_key": Case("avtca_jax.train", lambda m: _smoke("--config.lerning_rate=0.1",
                                                                    f"--workdir={m.root / 'w1'}"),
                               lambda m: ["--config.lerning_rate", "unknown config key"]),
    "unknown_config_variant": Case("avtca_jax.train", lambda m: ["--config=configs/ravdess.py:fold9",
                                                                 f"--workdir={m.root / 'w2'}"],
                                   lambda m: ["unknown config variant 'fold9'", "expected one of"]),
    "workdir_of_another_model": Case("avtca_jax.train", lambda m: _smoke("--config.model=audio",
                                                                         f"--workdir={m.copied_workdir}"),
                                     lambda m: [str(m.copied_workdir), "another config",
                                                "model: workdir 'avtca' vs config 'audio'", "new --workdir"]),
    "read_only_workdir": Case("avtca_jax.train", lambda m: _smoke(f"--workdir={m.read_only_workdir}"),
                              lambda m: [str(m.read_only_workdir), "not writable", "choose a folder"]),
    "ravdess_dir_unset": Case("avtca_jax.train", lambda m: ["--config=configs/ravdess.py:audio_only",
                                                            f"--workdir={m.root / 'w3'}"],
                              lambda m: ["AVTCA_RAVDESS_DIR", "audio_speech_22k"], env={"AVTCA_RAVDESS_DIR": None}),
    "corrupt_tfrecord_shard": Case("avtca_jax.evaluate",
                                   lambda m: [f"--checkpoint={m.workdir}", "--config=configs/ravdess.py:smoke",
                                              f"--config.data.name={m.corrupt_tfds}",
                                              f"--output_dir={m.root / 'eval_out'}"],
                                   lambda m: ["DataLossError", "corrupted record"]),
    "converted_checkpoint_without_dataset": Case("avtca_jax.evaluate", lambda m: [f"--checkpoint={m.pth_ia}"],
                                                 lambda m: [str(m.pth_ia), "--config=configs/ravdess.py:foldK"]),
    "build_without_manual_dir": Case("data.ravdess.build", lambda m: ["--config", "av", "--manual_dir",
                                                                      str(m.root / "no_ravdess"), "--data_dir",
                                                                      str(m.root / "tfds_out")],
                                     lambda m: [str(m.root / "no_ravdess"), "Actor_XX", "docs/data.md"]),
}


@pytest.fixture(scope="module")
def materials(small_avtca_workdir, tmp_path_factory):
  return Materials(tmp_path_factory.mktemp("bad_inputs"), small_avtca_workdir, tmp_path_factory.getbasetemp())


def _run(case: Case, argv: Sequence[str], capsys) -> tuple[int, str]:
  if case.in_process:
    import importlib
    module = importlib.import_module(case.tool)
    capsys.readouterr()
    try:
      code = module.main(list(argv))
    except SystemExit as exit_:
      code = exit_.code
    return code, capsys.readouterr().err
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  for key, value in case.env.items():
    env.pop(key, None) if value is None else env.__setitem__(key, value)
  result = subprocess.run([sys.executable, "-m", case.tool, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
  return result.returncode, result.stderr


def test_the_table_has_every_kind_the_issue_lists():
  assert len(CASES) >= 15
  for kind in ("truncated_mp4", "renamed_audio_as_mp4", "zero_length_audio", "silent_video", "no_face",
               "missing_audio_partner", "unknown_config_key", "wrong_fusion", "truncated_pth",
               "workdir_of_another_model", "corrupt_tfrecord_shard", "missing_checkpoint_step", "read_only_workdir"):
    assert kind in CASES
  assert {c.tool.split(".")[-1] for c in CASES.values()} >= {"predict", "convert", "preprocess", "export", "train",
                                                             "evaluate", "build"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_line_error(name, materials, capsys):
  case = CASES[name]
  code, stderr = _run(case, case.argv(materials), capsys)
  assert "Traceback" not in stderr, stderr[-3000:]
  errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
  assert code == 1 and len(errors) == 1, (code, stderr[-3000:])
  for fragment in case.expected(materials):
    assert fragment in errors[0], (fragment, errors[0])
  if case.no_warnings:
    assert not [line for line in stderr.splitlines() if "Warning" in line], stderr[-3000:]
  if name in ("missing_audio_partner", "preprocess_missing_input"):
    assert not Path(case.argv(materials)[3]).exists()  # no empty output folder left behind
