"""Errors a user can cause. The CLI prints them as one line; the app shows them inline."""


class KDError(Exception):
    """Base class for every error caused by user input (bad config, missing data, bad checkpoint)."""


class ConfigError(KDError, ValueError):
    """An invalid configuration value; the message names the field and what is allowed."""


class DatasetError(KDError):
    """A dataset that cannot be found or read; the message says where its files should go."""


class ModelError(KDError, ValueError):
    """An unknown architecture, or one that does not fit the dataset."""


class CheckpointError(KDError):
    """A checkpoint that is missing, corrupt, or does not match the configured model."""


class DivergedError(KDError):
    """The loss became NaN or infinite."""


class StoreError(KDError):
    """The run store cannot be opened or used (unwritable folder, corrupt or newer database)."""


class ExecutorError(KDError):
    """The executor cannot start runs (an unreachable Ray cluster, a local Ray head that fails to start)."""


class RunNotFound(KDError, LookupError):
    """An unknown or malformed run id."""


class Cancelled(Exception):
    """Raised inside the trainer when the run was asked to stop (SIGTERM or cancel)."""
