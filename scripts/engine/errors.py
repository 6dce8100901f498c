"""
Refusals read as one clear message instead of a chained traceback.

MONAI evaluates every config expression inside ``try: ... except Exception as e: raise RuntimeError("Failed to
evaluate ...") from e``, so a refusal raised in ``initialize``, ``run`` or ``finalize`` (a wrong config value, a
missing input folder, a checkpoint for another network) reaches the user as a 40-60 line traceback whose last
line is MONAI's wrapper and whose real message sits in the middle. Configs install :class:`ErrorHandler` as their
first ``initialize`` expression::

    "debug": false,
    "initialize": ["$scripts.engine.errors.install_error_handler(@debug)", ...]

Then, for an uncaught exception, the handler looks through MONAI's wrappers (:func:`find_user_error`):

- a user-facing error (:func:`is_user_error`: our refusals such as ``CheckpointError``, a missing, existing or
  unwritable path, a full disk, a ``raise`` of ours) is printed to stderr as ``error: <message>`` and a line
  saying how to get the traceback, and the process exits with :data:`EXIT_USER_ERROR`;
- anything else is a bug or an unforeseen failure: it keeps Python's full traceback (exit status 1), so a real
  bug is never hidden behind a short message.

Log records of a user-facing error keep their message and lose their traceback (MONAI's ``StatsHandler`` logs
one when an engine run fails). ``--debug True`` on the command line leaves Python's behaviour unchanged.
``SystemExit`` (e.g. the inference summary's status 1) never reaches an excepthook and passes through untouched.
Under ``torchrun`` every rank installs its own handler, prints ``error (rank N): ...`` and exits with
:data:`EXIT_USER_ERROR` on its own error; torchrun stops the other ranks and reports the failure.
"""

from __future__ import annotations

import errno
import linecache
import logging
import os
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

__all__ = [
    "EXIT_USER_ERROR",
    "DEBUG_HINT",
    "ErrorHandler",
    "find_user_error",
    "install_error_handler",
    "is_user_error",
    "user_message",
]

#: exit status of a run refused for a user-facing error (1 stays Python's status for a crash)
EXIT_USER_ERROR = 2
#: the last line printed after the message
DEBUG_HINT = "(run with --debug True for the full traceback)"

#: a path that is missing, in the way or not writable: the message names it, whoever raised it
PATH_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    NotADirectoryError,
    IsADirectoryError,
)
#: ``OSError.errno`` values of a full or read-only storage
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
#: raised by a ``raise`` statement in our own package, these carry a message written for the user
RAISED_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, KeyError, RuntimeError)

Excepthook = Callable[[type[BaseException], BaseException, TracebackType | None], Any]

_PACKAGE = __name__.split(".")[0]
# the package that wraps errors in RuntimeError(...) from error: its config evaluation ("Failed to evaluate"),
# instantiation ("Failed to instantiate") and transforms ("applying transform")
_WRAPPING_PACKAGE = "monai"


def _origin(error: BaseException) -> tuple[str, str]:
    """Module name and source line of the frame that raised ``error`` (empty strings when unknown)."""
    tb = error.__traceback__
    if tb is None:
        return "", ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "")
    return module, linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno).strip()


def _in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def is_user_error(error: BaseException) -> bool:
    """
    Whether ``error`` is meant for the user rather than a bug:

    - an instance of an error class of the ``scripts`` package (``scripts.engine.config_check.ConfigValueError``,
      ``scripts.engine.checkpoint.CheckpointError``, ``scripts.data.checks.DataValidationError``,
      ``scripts.engine.infer_folder.InputError``, ...), wherever raised;
    - one of :data:`PATH_ERRORS`, or an ``OSError`` of a full or read-only storage (:data:`STORAGE_ERRNOS`);
    - one of :data:`RAISED_ERRORS` raised by a ``raise`` statement in a module of the ``scripts`` package. The
      ``raise`` tells a deliberate refusal (``raise ValueError("...")``) from our code failing (``int("ten")``
      or ``d[key]`` inside a function of ours), which is a bug and keeps its traceback.
    """
    if _in_package(type(error).__module__, _PACKAGE) or isinstance(error, PATH_ERRORS):
        return True
    if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
        return True
    if isinstance(error, RAISED_ERRORS):
        module, line = _origin(error)
        return _in_package(module, _PACKAGE) and line.startswith("raise")
    return False


def _is_wrapper(error: BaseException) -> bool:
    """MONAI's ``RuntimeError("Failed to evaluate ...") from e`` and the like: only a pointer to the real error."""
    return (
        type(error) is RuntimeError
        and error.__cause__ is not None
        and _in_package(_origin(error)[0], _WRAPPING_PACKAGE)
    )


def find_user_error(error: BaseException) -> BaseException | None:
    """
    The user-facing error (:func:`is_user_error`) that ``error`` is or wraps, or None.

    Only MONAI's wrappers are looked through (along ``__cause__``): an error of another kind on the way is an
    unforeseen failure, and an error raised while handling a user-facing one (``__context__``) is a bug, so
    both give None and keep their traceback.
    """
    seen: set[int] = set()  # a cause chain can loop; Python's traceback printing guards against it too
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if is_user_error(current):
            return current
        if not _is_wrapper(current):
            return None
        seen.add(id(current))
        current = current.__cause__
    return None


def user_message(error: BaseException) -> str:
    """The message of ``error`` as the user should read it (a ``KeyError`` without the quotes of its repr)."""
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        text = error.args[0]
    else:
        text = str(error)
    return text.strip() or type(error).__name__


def _prefix() -> str:
    # torchrun sets RANK and WORLD_SIZE; the process group may not exist yet when the error happens
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"error (rank {os.environ.get('RANK', '?')}): "
    return "error: "


class ErrorHandler:
    """
    A ``sys.excepthook``: a user-facing error (:func:`find_user_error`) is printed as ``error: <message>`` and
    :data:`DEBUG_HINT` to stderr and the process exits with :data:`EXIT_USER_ERROR`; anything else goes to
    ``previous`` (Python's hook prints the full traceback).

    Args:
        previous: the hook to call for every other exception.
        stream: where the message goes; default ``sys.stderr`` as it is now. Kept because
            ``torch.distributed.init_process_group`` wraps the excepthook in one that swaps ``sys.stderr`` for a
            buffer it writes out only when the hook returns, which :data:`EXIT_USER_ERROR`'s ``SystemExit`` skips.
    """

    def __init__(self, previous: Excepthook = sys.__excepthook__, stream: TextIO | None = None) -> None:
        self.previous = previous
        self.stream = sys.stderr if stream is None else stream

    def __call__(self, exc_type: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        found = find_user_error(error)
        if found is None:
            self.previous(exc_type, error, tb)
            return
        sys.stdout.flush()  # the log (stdout) first, then the message at the bottom of the terminal
        print(f"{_prefix()}{user_message(found)}\n{DEBUG_HINT}", file=self.stream, flush=True)
        # an exception raised by the excepthook is handled as if raised by the program: SystemExit sets the
        # exit status and the interpreter still shuts down normally (atexit handlers, flushing)
        raise SystemExit(EXIT_USER_ERROR)


class _UserErrorRecords:
    """
    A log record factory (``logging.setLogRecordFactory``) that keeps records of user-facing errors to their
    message: MONAI's ``StatsHandler`` logs the traceback of an exception in an engine run, through a logger of
    its own created when the engine is built, before ignite re-raises it to :class:`ErrorHandler`.

    Args:
        previous: the factory that creates the records.
    """

    def __init__(self, previous: Callable[..., logging.LogRecord]) -> None:
        self.previous = previous

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        if record.exc_info and record.exc_info[1] is not None and find_user_error(record.exc_info[1]) is not None:
            record.exc_info = None
        return record


def _as_bool(value: bool | int | str) -> bool:
    # the CLI reads Python literals: --debug true arrives as the string "true"
    return value.strip().lower() in ("true", "1", "yes") if isinstance(value, str) else bool(value)


def install_error_handler(debug: bool | int | str = False) -> None:
    """
    Install :class:`ErrorHandler` as ``sys.excepthook`` (config id ``debug`` False), or leave, and restore,
    Python's own behaviour (``debug`` True). Also drops the tracebacks of user-facing errors from log records
    (MONAI's ``StatsHandler`` logs one when an engine run fails; the message stays). Run it first in
    ``initialize``: errors before it (reading the config files) keep their traceback.

    Calling it again replaces the earlier installation.

    Examples::

        "initialize": ["$scripts.engine.errors.install_error_handler(@debug)", ...]
    """
    enabled = not _as_bool(debug)
    hook = sys.excepthook
    if isinstance(hook, ErrorHandler):
        hook = hook.previous
    sys.excepthook = ErrorHandler(hook) if enabled else hook
    factory = logging.getLogRecordFactory()
    if isinstance(factory, _UserErrorRecords):
        factory = factory.previous
    logging.setLogRecordFactory(_UserErrorRecords(factory) if enabled else factory)
