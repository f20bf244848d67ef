"""What the command-line tools print: our own lines, libraries' errors only, and one-line user errors.

Every CLI (train, evaluate, cross_validation, predict, export, preprocess, convert, the tfds build) calls
`configure_logging(verbose)` first and turns user errors into one line with `user_error_line`:

- Log records from files outside this project (orbax writes several INFO lines per checkpoint and a
  WARNING about missing metadata on every restore; absl, jax and tensorflow add more) are dropped below
  ERROR; `--verbose` keeps everything. Records are routed through Python's `logging` module by absl, so one
  filter on the handlers covers absl and plain `logging` users alike. absl's `logging.WARNING` is absl's
  verbosity constant (-1), not a record level; the filter compares against Python's levels.
- A user error (bad file, bad flag, bad config; `ValueError`/`OSError` and their subclasses, and
  TensorFlow's data errors for a corrupt TFRecord shard) becomes `error: <first line>`; the full message and
  the traceback follow only with `--verbose`. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
import warnings

PROJECT_DIRS = tuple(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), name) + os.sep
                     for name in ("avtca_jax", "configs", "data"))
# TensorFlow's own error classes (tf.errors.*) are not ValueError/OSError; matched by name so that this
# module never imports TensorFlow.
_TENSORFLOW_DATA_ERRORS = ("DataLossError", "NotFoundError", "InvalidArgumentError", "PermissionDeniedError",
                           "FailedPreconditionError", "OutOfRangeError")


def _is_project_file(path: str) -> bool:
  return bool(path) and os.path.abspath(path).startswith(PROJECT_DIRS)


class _ProjectRecordsOnly(logging.Filter):
  """Keeps our own records at every level, other libraries' from ERROR up."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or _is_project_file(record.pathname)


_FILTER = _ProjectRecordsOnly()


_VERBOSE = False


def is_verbose() -> bool:
  """What the running command's --verbose said (library progress bars follow it too)."""
  return _VERBOSE


def configure_logging(verbose: bool = False) -> None:
  """Quiet libraries (default) or everything (`verbose`). Safe to call more than once."""
  global _VERBOSE
  _VERBOSE = verbose
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "3")
  from absl import logging as absl_logging
  # The handlers present now, and the 'absl' logger itself, which catches absl-logged library records even
  # when a library adds its own handler later (tfds calls logging.basicConfig).
  handlers = [absl_logging.get_absl_handler(), logging.lastResort, *logging.getLogger().handlers,
              logging.getLogger("absl")]
  for handler in handlers:
    if handler is None:
      continue
    if verbose:
      handler.removeFilter(_FILTER)
    elif _FILTER not in handler.filters:
      handler.addFilter(_FILTER)
  if verbose:
    absl_logging.set_verbosity(absl_logging.INFO)
    warnings.resetwarnings()
  else:
    # Python warnings (DeprecationWarning and friends) from libraries are noise for a user; ours stay.
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"avtca_jax(\.|$)")


def is_user_error(error: BaseException) -> bool:
  """Bad input rather than a bug: a ValueError or OSError (our own errors subclass them), or a TensorFlow
  data error (a corrupt or missing TFRecord shard)."""
  if isinstance(error, (ValueError, OSError, EOFError)):
    return True
  return type(error).__name__ in _TENSORFLOW_DATA_ERRORS and type(error).__module__.startswith("tensorflow")


def user_error_line(error: BaseException, verbose: bool = False) -> str:
  """`error: <first line of the message>`; with `verbose`, the whole message and the traceback before it."""
  text = str(error).strip() or type(error).__name__
  if type(error).__module__.startswith("tensorflow"):  # "{{function_node ...}} path; Data loss: ..."
    text = f"{type(error).__name__}: {text}"
  first, _, rest = text.partition("\n")
  if verbose:
    return "".join(traceback.format_exception(error)) + f"error: {text}"
  return f"error: {first}" + (" (details: rerun with --verbose)" if rest.strip() else "")


def check_writable_folder(path: str, what: str = "--workdir") -> None:
  """Write and delete a probe file in `path`, or, when it does not exist yet, in its nearest existing parent
  (nothing is created): a read-only or unwritable location fails here, in one line, instead of inside a
  checkpoint save after compilation. Local paths and gs:// alike."""
  from etils import epath
  folder = epath.Path(path)
  while not folder.exists() and folder.parent != folder:
    folder = folder.parent
  try:
    probe = folder / f".avtca_write_test_{os.getpid()}"
    probe.write_text("")
    probe.unlink()
  except OSError as error:
    raise PermissionError(f"{what} {path} is not writable ({error.strerror or type(error).__name__} in "
                          f"{folder}): choose a folder you can write to, or fix its permissions") from error


def exit_on_user_error(error: BaseException, verbose: bool = False) -> None:
  """Exit 1 with the one-line message for a user error; re-raise anything else (a bug keeps its traceback)."""
  if not is_user_error(error):
    raise error
  print(user_error_line(error, verbose), file=sys.stderr)
  sys.exit(1)


def parse_flags(argv):
  """absl flag parsing for `app.run(main, flags_parser=console.parse_flags)` with one-line errors.

  ml_collections' config flags raise from inside the config file (an unknown variant) with the traceback
  folded into the message, and an override of a key the config lacks (`--config.not_a_key=1`) escapes
  absl's handler as a bare AttributeError; both become `error: <what and which flag>`."""
  from absl import flags
  verbose = any(a.lower() in ("--verbose", "--verbose=true", "--verbose=1") for a in argv)
  try:
    return flags.FLAGS(argv)
  except Exception as error:
    if verbose:
      raise
    if isinstance(error, flags.Error):
      lines = [line.strip() for line in str(error).splitlines() if line.strip()]
      message = lines[0] if len(lines) == 1 else f"{lines[0].split(': ')[0]}: {lines[-1]}"
    elif isinstance(error, (AttributeError, KeyError)):  # an override of a key the config does not have
      text = str(error)
      key = (re.findall(r"'([A-Za-z0-9_]+)", text) or ["?"])[0]
      close = re.findall(r'Did you mean "([^"]+)"', text)
      flag = next((a.split("=")[0] for a in argv[1:] if a.startswith("--config.") and
                   a.split("=")[0].endswith("." + key)), f"--config.{key}")
      message = (f"{flag}: unknown config key '{key}'" + (f" (did you mean {close[0]}?)" if close else "") +
                 "; configs/ravdess.py lists every key")
    else:
      raise
    print(f"error: {message} (--helpshort lists the flags)", file=sys.stderr)
    sys.exit(1)


def add_common_arguments(parser) -> None:
  """--verbose and --compilation_cache, for the argparse CLIs (predict, export)."""
  parser.add_argument("--verbose", action="store_true", help="library log messages and full error tracebacks")
  parser.add_argument("--compilation_cache", default="",
                      help="JAX's persistent compilation cache folder (default $AVTCA_COMPILATION_CACHE or "
                      "~/.cache/avtca_jax/jax; none: off)")


def start(args) -> None:
  """What every argparse CLI does first: quiet logging (unless --verbose) and the compilation cache."""
  from avtca_jax import compilation_cache
  configure_logging(args.verbose)
  compilation_cache.enable(args.compilation_cache)
