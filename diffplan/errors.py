"""Exception types shared across diffplan: catch `DiffplanError` to handle any of them."""

from __future__ import annotations


class DiffplanError(Exception):
    """Base class of every error diffplan raises on purpose."""


class DatasetError(DiffplanError, ValueError):
    """A dataset is missing, unreadable or malformed (the message names what and where)."""


class ConfigError(DiffplanError, ValueError):
    """A configuration value or option is invalid (the message names the key)."""


class CheckpointError(DiffplanError):
    """A checkpoint file is missing, corrupt or incompatible."""


class TrainingDiverged(DiffplanError):
    """The loss or the weights became NaN/inf; training stopped before saving them."""


class DiffplanWarning(UserWarning):
    """Something works but is probably not what the user wants (the message says why)."""
