"""One error family: every failure a user can fix is an ``FsarError`` with the fix in its message.

The CLI boundary (:func:`fsar_cli.cli.console.cli_errors`) turns these into one red line and exit
code 1;
``FSAR_DEBUG=1`` (or ``fsar --debug``) shows the full traceback instead.
"""

from __future__ import annotations

__all__ = [
    "FsarError",
    "RecipeError",
    "DataError",
    "CacheError",
    "EncoderError",
    "EpisodeError",
    "CheckpointError",
    "TrainError",
    "OutputError",
]


class FsarError(Exception):
    """Base class: a problem the user can fix. The message names the file, the value and the fix."""


class RecipeError(FsarError):
    """A recipe key is unknown, has the wrong type, or an override is malformed."""


class DataError(FsarError):
    """Split files, videos or frame folders are missing, malformed or undecodable."""


class CacheError(FsarError):
    """A feature cache is missing, incomplete, or was made with different settings."""


class EncoderError(FsarError):
    """A CLIP encoder cannot be loaded (unknown name, missing weights, no network)."""


class EpisodeError(FsarError):
    """An episode cannot be sampled (too few classes or videos for the requested way/shot/query)."""


class CheckpointError(FsarError):
    """A checkpoint is missing, unsafe to unpickle, or does not match the head."""


class TrainError(FsarError):
    """Training cannot start or resume (bad run folder, incompatible resume)."""


class OutputError(FsarError):
    """An output path holds something fsar did not write (refused), is in use, or is unwritable."""
