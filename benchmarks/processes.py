"""Benchmark subprocesses: run one, and when it dies say how (signal, exit code, peak memory).

A worker killed by the kernel's out-of-memory killer gets SIGKILL and writes nothing to stderr, so its exit
status alone says little. `run` waits for the child with `os.wait4`, which returns
the child's own resource usage (peak RSS) even when it was killed, and `WorkerFailed` carries a one-line
account such as "killed by SIGKILL (signal 9; likely out of memory: peak RSS N GB before death)".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass
class Finished:
  returncode: int
  stdout: str
  stderr: str
  peak_rss_mb: Optional[float]  # the child's own peak resident memory (None where the OS does not say)
  wall_s: float
  timed_out: bool = False  # we killed it at the timeout


class WorkerFailed(subprocess.CalledProcessError):
  """A benchmark subprocess that did not exit 0; `message` says how it ended."""

  def __init__(self, cmd, finished: Finished):
    super().__init__(finished.returncode, cmd, finished.stdout, finished.stderr)
    self.finished = finished
    self.message = describe_ending(finished.returncode, finished.stderr, finished.peak_rss_mb,
                                   finished.wall_s if finished.timed_out else None)

  def __str__(self):
    return self.message

  def as_dict(self):
    return {"error": self.message, "returncode": self.returncode, "peak_rss_mb": self.finished.peak_rss_mb,
            "wall_s": self.finished.wall_s, "stderr_tail": (self.stderr or "")[-2000:]}


def _last_line(text: str) -> str:
  lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
  return lines[-1][:300] if lines else ""


def describe_ending(returncode: int, stderr: str = "", peak_rss_mb: Optional[float] = None,
                    timed_out_after_s: Optional[float] = None) -> str:
  """How a process ended, in one line. A shell reports death by signal N as exit code 128 + N."""
  if returncode == 0:
    return "exit code 0"
  if timed_out_after_s is not None:
    return f"killed by the benchmark's timeout after {timed_out_after_s:.0f} s"
  signum = -returncode if returncode < 0 else (returncode - 128 if 128 < returncode < 128 + 65 else None)
  peak = f"peak RSS {peak_rss_mb / 1024:.1f} GB before death" if peak_rss_mb else "peak RSS unknown"
  last = _last_line(stderr)
  if signum is not None:
    try:
      name = signal.Signals(signum).name
    except ValueError:
      name = f"signal {signum}"
    number = f"exit code {returncode} = signal {signum}" if returncode > 0 else f"signal {signum}"
    cause = "likely out of memory: " if signum == signal.SIGKILL else ""  # the OOM killer's signal
    return f"killed by {name} ({number}; {cause}{peak})" + (f": {last}" if last else "")
  return f"exit code {returncode}: {last}" if last else f"exit code {returncode} (no error output)"


def _wait(proc: subprocess.Popen, timeout: Optional[float]):
  """Reaps the child; returns (returncode, peak RSS in MB or None, timed out)."""
  if not hasattr(os, "wait4"):  # not a Unix: no per-child resource usage
    try:
      return proc.wait(timeout), None, False
    except subprocess.TimeoutExpired:
      proc.kill()
      return proc.wait(), None, True
  deadline = None if timeout is None else time.monotonic() + timeout
  timed_out = False
  while True:
    pid, status, usage = os.wait4(proc.pid, 0 if deadline is None else os.WNOHANG)
    if pid == proc.pid:
      break
    if time.monotonic() > deadline:
      proc.kill()
      pid, status, usage = os.wait4(proc.pid, 0)
      timed_out = True
      break
    time.sleep(0.1)
  proc.returncode = os.waitstatus_to_exitcode(status)
  # ru_maxrss: kilobytes on Linux, bytes on macOS.
  peak_mb = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
  return proc.returncode, peak_mb, timed_out


def run(cmd: Sequence[str], cwd=None, env=None, timeout: Optional[float] = None, check: bool = True,
        capture: bool = True) -> Finished:
  """Runs `cmd` to completion with its stdout and stderr captured (through files: no pipe can fill up), or
  shown on ours with `capture=False`. Raises WorkerFailed if it did not exit 0 and `check`."""
  with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    start = time.perf_counter()
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=out if capture else None,
                            stderr=err if capture else None, text=True)
    try:
      returncode, peak_mb, timed_out = _wait(proc, timeout)
    except BaseException:  # Ctrl-C in the suite: do not leave a worker running
      proc.kill()
      proc.wait()
      raise
    wall_s = time.perf_counter() - start
    out.seek(0)
    err.seek(0)
    finished = Finished(returncode, out.read(), err.read(), peak_mb, wall_s, timed_out)
  if check and returncode != 0:
    raise WorkerFailed(list(cmd), finished)
  return finished
