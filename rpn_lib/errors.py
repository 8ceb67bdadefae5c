"""Project exceptions.

Every error the library raises on bad user input is a :class:`RpnLibError`, whose message
names the file (when there is one) and the problem. The command line prints that message on
one line and exits with code 2.
"""

from __future__ import annotations

from pathlib import Path


class RpnLibError(Exception):
    """Base class of every error raised on bad input, with the offending path if any."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.problem = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


class DataError(RpnLibError):
    """A volume, landmark file or dataset folder that cannot be used as it is."""


class ModelError(RpnLibError):
    """A model file that is missing, unreadable, or does not fit the input."""


class DeviceError(RpnLibError):
    """A device name that is not known, or a device this machine or this PyTorch build lacks."""
