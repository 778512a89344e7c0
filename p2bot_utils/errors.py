"""The project's exceptions for problems a user can fix (imports nothing of the project).

Every ``UserError`` message names what to fix: a file and line, a profile key, a folder or a checkpoint file.
The command line (``cli``) prints such an error (and the ``USER_ERRORS`` of Python itself) as one line on
stderr with ``report`` and exits with code 2; any other exception is a bug and keeps its traceback. ``UserError`` is a ``ValueError``, so code that catches
``ValueError`` keeps working.
"""
from __future__ import annotations

import argparse
import sys

import yaml


class UserError(ValueError):
    """A problem the user can fix; the message names the file, line, key or folder."""


class ConfigError(UserError):
    """A profile (``configs/*.yaml``) or a setting has a wrong key, type or value; the message names the key."""


class CheckpointError(UserError):
    """A checkpoint or saved model folder is missing, incomplete or corrupt; the message names the file."""


class RunLockedError(UserError):
    """Another run is using the same output folder."""


# What the command line reports in one line (exit code 2) instead of a traceback: ours, and the standard ones
# a user causes (a missing or unreadable file, a bad value, a YAML syntax error).
USER_ERRORS = (ValueError, OSError, yaml.YAMLError)
USER_ERROR_NAMES = {"UserError", "ConfigError", "CheckpointError", "RunLockedError", "DataFormatError",
                    "ChecksumError", "FileNotFoundError", "NotADirectoryError", "IsADirectoryError", "PermissionError"}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is ONE line on stderr (exit code 2), like every other user error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def report(command: str, error: BaseException) -> int:
    """Print ``error`` as one line on stderr (its message names the file, line, key or folder to fix) and
    return the exit code: 2, or 130 for an interrupt."""
    if isinstance(error, KeyboardInterrupt):
        text = "interrupted (a checkpointed run resumes where it stopped)"
    else:
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    print(f"{command}: {text}", file=sys.stderr)
    return 130 if isinstance(error, KeyboardInterrupt) else 2
