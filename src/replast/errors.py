"""Typed errors. The CLI turns any ReplastError into one line on stderr and exit code 2.

Messages name the bad value and say what to do instead; they never need a traceback.
"""

from __future__ import annotations

import re

# ANSI escape sequences (torch styles some of its messages) and other control characters.
_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|[\x00-\x1f\x7f]")


def plain(text: str) -> str:
    """`text` as one line of plain text: control characters and ANSI styling removed, whitespace collapsed."""
    return " ".join(_CONTROL.sub(" ", text).split())


def quote(error: BaseException, limit: int = 160) -> str:
    """The first line of another library's error as plain text (its type name when empty), for a message."""
    return plain(str(error).strip().partition("\n")[0])[:limit] or type(error).__name__


class ReplastError(Exception):
    """Base class for every error a user can fix by changing their input."""


class ConfigError(ReplastError, ValueError):
    """A configuration value is out of range, unknown or inconsistent."""


class UnknownNameError(ConfigError, KeyError):
    """A name that is not in a registry; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelError(ReplastError):
    """Weights are missing, unreadable or belong to another architecture."""


class DataError(ReplastError):
    """A dataset is missing, empty, malformed or has too many unreadable images."""


class CheckpointError(ReplastError):
    """A checkpoint is missing, truncated, unsafe or of another model."""


class OutputError(ReplastError):
    """An output directory cannot be written or already holds a finished run."""


class NonFiniteError(ReplastError):
    """Loss or gradients became NaN/Inf during training."""
