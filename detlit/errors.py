"""Errors a user can cause. Each message is one sentence naming the file or setting and the fix.

Entry points catch :class:`DetlitError`, print the message and exit with status 2, so a bad
input never ends in a traceback.
"""

from __future__ import annotations


class DetlitError(Exception):
    """Base class of errors caused by user input (data, config, files)."""


class DataError(DetlitError, ValueError):
    """A problem with the user's dataset (json, image files, categories)."""


class ConfigError(DetlitError, ValueError):
    """A setting that cannot work (unknown name, wrong type, impossible combination)."""


class WeightsError(DetlitError, RuntimeError):
    """Pretrained weights or a checkpoint could not be loaded."""
