"""Exceptions with messages that name the offending file or config key.

Every error a user can cause (bad data, bad config, a damaged cached artifact) is one of
these, so that a Snakemake log ends with one precise line instead of a deep traceback.
"""

from __future__ import annotations

from pathlib import Path


class AnogenError(Exception):
    """Base class: an error the user can act on."""


class ConfigError(AnogenError):
    """A config value is wrong. The message starts with the dotted key."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"config key '{key}': {problem}")


class DataError(AnogenError):
    """An input file is missing, unreadable or inconsistent. The message names the file."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class IntegrityError(AnogenError):
    """A cached artifact no longer matches the sha256 its manifest recorded."""

    def __init__(self, path: str | Path, problem: str, rebuild_hint: str | None = None):
        self.path = str(path)
        self.problem = problem
        msg = f"{self.path}: {problem}"
        if rebuild_hint:
            msg += f"\nTo rebuild it: {rebuild_hint}"
        super().__init__(msg)
