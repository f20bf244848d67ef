"""A damaged checkpoint costs one checkpoint, not the run.

A run saves steps 6 and 8; then every large file of step 8 is cut short, as a full disk or a half-copied
workdir leaves them. Resuming says in one line which step failed and why, sets it aside (never deletes it),
resumes from step 6, and saves step 8 again; evaluate on the damaged step is a one-line error; a workdir
where no checkpoint restores stops with one line and moves nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from test_train import AUDIO, ROOT, _env, assert_trees_equal, checkpoint_steps, final_state, train

RUN = AUDIO + ["--config.batch_size=4", "--config.num_train_steps=8", "--config.checkpoint_every_steps=2",
               "--config.keep_checkpoints=2", "--config.data.num_examples=40"]
TRUNCATED_SIZE = 1000


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache_damaged"))


def damage(step_dir):
  """Cuts every file above 64 KiB (the arrays' data) to TRUNCATED_SIZE bytes; returns how many."""
  damaged = 0
  for root, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 64 * 1024:
        os.truncate(path, TRUNCATED_SIZE)
        damaged += 1
  assert damaged, f"no data file in {step_dir}"
  return damaged


def error_lines(stderr):
  return [line for line in stderr.splitlines() if line.strip()]


def test_resume_skips_a_damaged_latest_checkpoint(tmp_path, compile_cache):
  workdir = tmp_path / "run"
  train(workdir, *RUN, cache=compile_cache)
  assert checkpoint_steps(workdir) == [6, 8]
  reference = final_state(workdir)
  damage(workdir / "checkpoints" / "8")
  unrestorable = tmp_path / "unrestorable"
  shutil.copytree(workdir, unrestorable)

  # evaluate and predict on the damaged step (the workdir's latest): one line.
  for command in (["avtca_jax.evaluate", f"--workdir={workdir}", "--split=validation"],
                  ["avtca_jax.predict", str(workdir), str(tmp_path / "clip.wav")]):
    result = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, env=_env(1, compile_cache),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert len(error_lines(result.stderr)) == 1, result.stderr[-3000:]
    line = error_lines(result.stderr)[0]
    assert line.startswith("error: ") and "checkpoints/8: the checkpoint cannot be read" in line, line
    assert "is not valid for value of size" in line  # tensorstore's reason, not orbax's wrapper

  # Resume: one line names step 8 and why, the run goes on from step 6 and saves step 8 again.
  result = train(workdir, *RUN, cache=compile_cache)
  warnings = [line for line in result.stderr.splitlines() if "does not restore" in line]
  assert len(warnings) == 1, result.stderr[-3000:]
  assert "checkpoint step 8 does not restore (" in warnings[0] and "resuming from step 6" in warnings[0]
  assert "is not valid for value of size" in warnings[0]
  assert "resumed from step 6" in result.stderr
  assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr
  assert checkpoint_steps(workdir) == [6, 8]
  assert_trees_equal(final_state(workdir), reference, exact=True)  # resuming from 6 reproduces step 8
  kept = workdir / "checkpoints" / "8.damaged"  # the damaged files, as they were
  sizes = [os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(kept) for name in names]
  assert sizes and TRUNCATED_SIZE in sizes

  # No checkpoint restores: one line naming each step, and nothing is moved.
  damage(unrestorable / "checkpoints" / "6")
  result = train(unrestorable, *RUN, cache=compile_cache, check=False)
  assert result.returncode == 1
  lines = error_lines(result.stderr)
  assert len(lines) == 1 and lines[0].startswith("error: no checkpoint in "), result.stderr[-3000:]
  assert "step 8: " in lines[0] and "step 6: " in lines[0]
  assert checkpoint_steps(unrestorable) == [6, 8]
  assert not list((unrestorable / "checkpoints").glob("*.damaged*"))


def test_reads_left_pending_by_a_failed_restore_print_nothing(caplog):
  """Which of orbax's concurrent reads are still pending when a restore fails varies from run to run; their
  futures are collected later and asyncio would log each with a traceback. Only those are dropped."""
  import asyncio
  import gc

  from avtca_jax import checkpointing

  checkpointing.quiet_failed_reads()
  read_error = ('OUT_OF_RANGE: Error reading "params.audio_conv1d_0.conv.kernel/0.0.0" in OCDBT database at '
                'local file "run/checkpoints/8/state/": Requested byte range [3849, 369203) is not valid for '
                'value of size 1000')

  def collect_unretrieved(error):
    loop = asyncio.new_event_loop()
    try:
      future = loop.create_future()
      future.set_exception(error)
      del future
      gc.collect()
    finally:
      loop.close()

  with caplog.at_level("ERROR", logger="asyncio"):
    collect_unretrieved(ValueError(read_error))
    collect_unretrieved(RuntimeError("Event loop is closed"))
    assert not caplog.records, [record.getMessage() for record in caplog.records]
    collect_unretrieved(ValueError("something else went wrong"))  # any other error still prints
    assert len(caplog.records) == 1 and "something else went wrong" in caplog.records[0].getMessage()
