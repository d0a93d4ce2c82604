"""Errors a user can act on. The CLIs print their message alone, without a traceback."""

import errno
import sys
from contextlib import contextmanager
from typing import Iterator


class DyLoRAError(Exception):
    """Base class: the message says what was wrong and how to fix it."""


class ConfigError(DyLoRAError, ValueError):
    """A configuration value is invalid."""


class DataError(DyLoRAError):
    """Input data is missing or malformed."""


class RecordError(DyLoRAError):
    """A run record or checkpoint is missing, incomplete or corrupted."""


class TrainingError(DyLoRAError):
    """Training cannot continue (for example the loss became NaN)."""


# what to do about an OSError, by errno: the file system's failures a user can fix
_FIXES = {
    errno.ENOSPC: "free some space and run the same command again: finished runs are skipped and an unfinished "
                  "one resumes from its last checkpoint",
    errno.EDQUOT: "free some space (disk quota) and run the same command again: an unfinished run resumes from "
                  "its last checkpoint",
    errno.EROFS: "that file system is read-only: point out_dir= (dylora-report: results_dir=) to a writable folder",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another out_dir= (dylora-report: "
                   "results_dir=)",
    errno.EACCES: "no permission to write there: choose a folder you own",
    errno.EPERM: "no permission to write there: choose a folder you own",
}


def os_error_message(e: OSError) -> str:
    """One line for a failure of the environment (disk full, read-only, a path through a file): what
    failed, on which path, and the fix."""
    where = f" at {e.filename}" if e.filename else ""
    fix = _FIXES.get(e.errno, "check that path, then run the same command again")
    return f"file system error{where}: {e.strerror or e}; {fix}"


@contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """A command's failures that the user can act on, as one line on stderr and exit status 1: dylora's own
    errors, the environment's (``os_error_message``) and Hydra's override errors; anything else is a bug and
    keeps its traceback."""
    try:
        yield
    except DyLoRAError as e:
        _exit(prog, str(e))
    except OSError as e:
        _exit(prog, os_error_message(e))
    except Exception as e:
        if type(e).__module__.startswith(("hydra", "omegaconf")):
            _exit(prog, str(e))
        raise


def _exit(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(1)


def check_folder_name(option: str, value: object) -> str:
    """``value`` as a folder name, or a ConfigError naming ``option``: a name that becomes a folder of a run
    record or a results folder must be one plain path component, so that it can never point outside the
    folder it is written under (no ``/``, ``\\``, ``..``, leading ``.``, NUL; not empty). Every command that
    turns a user's name into a folder calls this (dylora-run, dylora-report, dylora-adapter-curve,
    dylora-allocate)."""
    text = "" if value is None else str(value)
    if text and not any(bad in text for bad in ("/", "\\", "\0", "..")) and not text.startswith("."):
        return text
    example = "".join(c if c.isalnum() or c in "-_" else "_" for c in text).strip("_") or "my_name"
    shown = text if text.isprintable() else repr(text)
    raise ConfigError(f"{option}={shown} is not a plain name: it names a folder, so it must be one path component "
                      f"(not empty; no '/', '\\', '..', leading '.' or NUL), e.g. {option}={example}")
