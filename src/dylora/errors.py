"""Errors a user can act on. The CLIs print their message alone, without a traceback."""


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
